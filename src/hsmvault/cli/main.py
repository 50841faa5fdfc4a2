"""Entry point of the ``hsmvault`` command (placeholder until the CLI issue)."""

from __future__ import annotations

import argparse
import sys

from hsmvault import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hsmvault", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hsmvault {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
