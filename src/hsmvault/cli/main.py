"""The ``hsmvault`` command.

Subcommands today: ``demo`` (a guided walk through the crypto core). The fleet, gateway
and audit commands arrive with their issues; see README "Status".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from hsmvault import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hsmvault",
        description="HSM-backed backup key vault for end-to-end encrypted backups.",
    )
    parser.add_argument("--version", action="version", version=f"hsmvault {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="back up a sample chat history, protect its key with a PIN, restore it",
        description=(
            "A guided end-to-end walk: encrypt a sample chat export with the streaming"
            " backup format, protect the backup key with a PIN through OPAQUE (RFC 9807),"
            " refuse a wrong PIN, recover the key with the right one, restore and compare,"
            " and show that a tampered backup is refused. Exits 0 only if every check held."
        ),
    )
    demo.add_argument("--size-mib", type=int, default=16, help="size of the sample (default 16)")
    demo.add_argument("--pin", default="482916", help="the PIN to protect the key with")
    demo.add_argument("--workdir", type=Path, default=None, help="where to put temporary files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from hsmvault.cli.demo import DemoOptions, run_demo  # noqa: PLC0415 - keep --help fast

        if args.size_mib < 1 or args.size_mib > 4096:
            parser.error("--size-mib must be between 1 and 4096")
        options = DemoOptions(size_mib=args.size_mib, pin=args.pin, workdir=args.workdir)
        return run_demo(options, Console())
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
