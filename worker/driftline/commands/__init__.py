"""One module per ``driftline`` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args)``."""
