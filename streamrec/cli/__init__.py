"""The command line: ``streamrec demo | generate | evaluate | replay | train | serve``."""

from streamrec.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
