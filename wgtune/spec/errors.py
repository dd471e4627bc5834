"""Errors caused by what the user gave us: printed as one message, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (a file, a flag, a folder, an address); the message says what and where."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every exception type that means bad input rather than a bug, including those of trainables.

    Imported lazily: the trainables package imports torch.
    """
    from trainables.config import ConfigError
    from trainables.datasets import DataNotFoundError
    from trainables.models import PretrainedWeightsError
    from trainables.options import OptionError
    from trainables.registry import UnknownNameError

    return (UserError, ConfigError, DataNotFoundError, PretrainedWeightsError, OptionError, UnknownNameError)
