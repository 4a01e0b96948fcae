"""The ``pardo`` command's subcommands, one module each (``main(argv) -> int``)."""
