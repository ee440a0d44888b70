"""One module per study; each exposes ``add_arguments(parser)`` and ``main(args)``."""
