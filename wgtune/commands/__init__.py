"""One module per `wgtune` subcommand."""
