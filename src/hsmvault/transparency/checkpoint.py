"""C2SP tlog checkpoint bodies (c2sp.org/tlog-checkpoint), the text of a signed note.

Layout, every line ending in ``\\n``::

    <origin>
    <tree size, decimal, no leading zeros>
    <base64 of the 32-byte root hash>
    [<extension line>]...

Parsing is strict and raises only :class:`DecodeError`; building a checkpoint from bad
values raises :class:`InvalidParameter`. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from hsmvault.errors import DecodeError, InvalidParameter

__all__ = ["Checkpoint", "parse_checkpoint"]

_MAX_TREE_SIZE = (1 << 64) - 1


def _line_ok(line: str) -> bool:
    return line != "" and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in line)


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _line_ok(self.origin):
            raise InvalidParameter("origin must be a non-empty line without controls")
        if not 0 <= self.tree_size <= _MAX_TREE_SIZE:
            raise InvalidParameter("tree size must fit in 64 bits")
        if len(self.root_hash) != 32:
            raise InvalidParameter("root hash must be 32 bytes")
        if not all(_line_ok(e) for e in self.extensions):
            raise InvalidParameter("extension lines must be non-empty, without controls")

    def encode(self) -> str:
        """The checkpoint body (note text)."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        lines = [self.origin, str(self.tree_size), root, *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str, *, origin: str | None = None) -> Checkpoint:
    """Parse a checkpoint body; if ``origin`` is given the origin line must equal it."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise DecodeError("malformed checkpoint: must end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(_line_ok(line) for line in lines):
        raise DecodeError("malformed checkpoint: lines")
    origin_line, size_line, root_line, *extensions = lines
    if origin is not None and origin_line != origin:
        raise DecodeError("checkpoint is for another origin")
    if not (size_line.isascii() and size_line.isdigit()) or (
        len(size_line) > 1 and size_line[0] == "0"
    ):
        raise DecodeError("malformed checkpoint: tree size")
    if len(size_line) > 20 or int(size_line) > _MAX_TREE_SIZE:
        raise DecodeError("malformed checkpoint: tree size too large")
    if not root_line.isascii():
        raise DecodeError("malformed checkpoint: root hash")
    try:
        root = base64.b64decode(root_line, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("malformed checkpoint: root hash") from None
    if len(root) != 32 or base64.b64encode(root).decode("ascii") != root_line:
        raise DecodeError("malformed checkpoint: root hash")
    return Checkpoint(origin_line, int(size_line), root, tuple(extensions))
