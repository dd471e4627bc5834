"""wgtune: hyperparameter search for scaling studies of worst-group accuracy."""

__version__ = "0.1.0"
