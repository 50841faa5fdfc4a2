"""A mixin for objects that are closed with ``close()`` and used in ``with`` blocks.

This module is a leaf: it imports nothing of ours, so every zone may use it (see
``docs/decisions/0001-layout-and-trust-zones.md``).
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["ClosingContext"]


class ClosingContext:
    """``with obj:`` gives ``obj`` itself and calls ``obj.close()`` when the block ends,
    whether or not it raised (exceptions are never swallowed).

    Subclasses define ``close()``; it must be idempotent and callable with no argument
    (extra parameters need defaults). Adds no instance attributes (empty ``__slots__``),
    so classes with ``__slots__`` stay dict-free.
    """

    __slots__ = ()

    def close(self) -> object:
        """Release what the object holds; subclasses override this."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
