"""A fault-injecting TCP proxy mesh between fleet nodes' Raft ports (test-only).

Each node dials each peer through its own :class:`LinkProxy` (node ``i`` → proxy
``(i, j)`` → node ``j``'s Raft port), so a test can cut, slow down or corrupt exactly the
links it names, from the test process (threads; no root, no iptables):

* **partition** — :meth:`ProxyMesh.partition` closes every open connection between two
  groups and refuses new ones until :meth:`ProxyMesh.heal`;
* **delay** — each forwarded chunk waits ``delay`` seconds;
* **duplication** — a chunk is forwarded twice with probability ``duplicate``;
* **reordering** — a chunk is held back and forwarded after the next one with
  probability ``reorder`` (flushed in order if nothing follows within 50 ms).

The proxy works on TCP chunks, not on frames: a duplicated or swapped chunk shows up as a
replayed, reordered or garbled record on the encrypted link, which the link must detect
(close, handshake again) without ever applying anything twice. :attr:`LinkProxy.stats`
counts what was injected so a test can check that faults really happened.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
_CHUNK = 64 * 1024
_REORDER_WINDOW = 0.05


@dataclass
class Faults:
    """What the proxies currently do to the bytes they forward."""

    delay: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0


class LinkProxy:
    """Listens on a loopback port and forwards every connection to ``target``."""

    def __init__(self, name: str, target: tuple[str, int], faults: Faults, seed: int) -> None:
        self.name = name
        self.target = target
        self.faults = faults
        self.blocked = False
        self.stats: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._listener = socket.create_server((LOOPBACK, 0), backlog=16)
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, name=f"proxy-{name}", daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def set_blocked(self, blocked: bool) -> None:
        """Refuse (and cut) connections while ``blocked``."""
        self.blocked = blocked
        if blocked:
            self._cut_all()

    def _chance(self, p: float) -> bool:
        if p <= 0:
            return False
        with self._rng_lock:
            return self._rng.random() < p

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._sockets.update(socks)

    def _cut_all(self) -> None:
        with self._lock:
            socks, self._sockets = self._sockets, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            if self.blocked:
                self.stats["refused"] += 1
                downstream.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=1.0)
                upstream.settimeout(None)
            except OSError:
                downstream.close()
                continue
            self.stats["connections"] += 1
            self._track(downstream, upstream)
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        held: bytes | None = None
        try:
            while True:
                src.settimeout(_REORDER_WINDOW if held is not None else None)
                try:
                    chunk = src.recv(_CHUNK)
                except TimeoutError:
                    assert held is not None
                    dst.sendall(held)  # nothing followed: flush in order
                    held = None
                    continue
                if not chunk or self.blocked:
                    break
                faults = self.faults
                if faults.delay > 0:
                    threading.Event().wait(faults.delay)
                if held is not None:
                    dst.sendall(chunk)
                    dst.sendall(held)
                    held = None
                    self.stats["reordered"] += 1
                    continue
                if self._chance(faults.reorder):
                    held = chunk
                    continue
                dst.sendall(chunk)
                if self._chance(faults.duplicate):
                    dst.sendall(chunk)
                    self.stats["duplicated"] += 1
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self._cut_all()


class ProxyMesh:
    """One :class:`LinkProxy` per ordered pair of nodes. ``targets[j]`` is node ``j``'s
    real Raft address; :meth:`address_for` is where node ``i`` should dial node ``j``."""

    def __init__(self, targets: list[tuple[str, int]], seed: int = 1) -> None:
        self.faults = Faults()
        self.proxies: dict[tuple[int, int], LinkProxy] = {}
        n = len(targets)
        for i in range(n):
            for j in range(n):
                if i != j:
                    self.proxies[(i, j)] = LinkProxy(
                        f"{i}->{j}", targets[j], self.faults, seed * 1000 + i * n + j
                    )

    def address_for(self, dialer: int, target: int) -> tuple[str, int]:
        return self.proxies[(dialer, target)].address

    def _pairs(self, a: Iterable[int], b: Iterable[int]) -> list[LinkProxy]:
        group_a, group_b = set(a), set(b)
        return [
            p
            for (i, j), p in self.proxies.items()
            if (i in group_a and j in group_b) or (i in group_b and j in group_a)
        ]

    def partition(self, a: Iterable[int], b: Iterable[int]) -> None:
        """Cut every link between group ``a`` and group ``b`` (both directions)."""
        for proxy in self._pairs(a, b):
            proxy.set_blocked(True)

    def heal(self) -> None:
        """Undo every partition."""
        for proxy in self.proxies.values():
            proxy.set_blocked(False)

    def set_faults(
        self, *, delay: float = 0.0, duplicate: float = 0.0, reorder: float = 0.0
    ) -> None:
        """Apply these faults to every link from now on (0 switches a fault off)."""
        self.faults.delay = delay
        self.faults.duplicate = duplicate
        self.faults.reorder = reorder

    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for proxy in self.proxies.values():
            total.update(proxy.stats)
        return total

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()
