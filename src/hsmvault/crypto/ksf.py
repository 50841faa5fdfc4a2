"""Key-stretching functions (KSF) for OPAQUE (RFC 9807 §2.3 ``Stretch``, §10.8).

OPAQUE's client runs ``Stretch(oprf_output)`` before deriving its ``randomized_password``
(RFC 9807 §5.2.3, §6.3.2.3). The KSF is what makes an offline dictionary attack on a
stolen registration record expensive, so it is pluggable and its parameters are data:

* :class:`KsfParams` — algorithm and cost parameters with a strict, versioned byte
  encoding. A vault record stores the parameters it was registered with, so the costs
  can be raised later for new registrations without breaking old records.
* :class:`Argon2idKsf` — Argon2id (RFC 9106, version 0x13) computed by
  ``cryptography`` (OpenSSL). We never implement Argon2 ourselves.
* :class:`UnsafeIdentityKsf` — ``Stretch(msg) = msg``. **For test vectors only**: the
  RFC 9807 Appendix C vectors use it. It offers no protection at all.

Salt. Stretch uses a fixed all-zero 16-byte salt, as RFC 9807 §7 recommends
(``Argon2id(S = zeroes(16), ...)``). A salt exists to make equal passwords hash
differently and to defeat precomputation; here the input is the OPRF output, which is
already unique per user and per password because it is keyed by the server's per-user
OPRF key (RFC 9807 §10.11: "the OPRF key acts as the secret salt value"). A random salt
would add nothing and would have to be stored and sent.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from hsmvault.errors import DecodeError, InvalidParameter

__all__ = [
    "ARGON2ID_SALT",
    "DEFAULT_KSF_PARAMS",
    "KSF_OUTPUT_LEN",
    "OPAQUE_KE_ARGON2_DEFAULT_PARAMS",
    "Argon2idKsf",
    "Ksf",
    "KsfAlgorithm",
    "KsfParams",
    "UnsafeIdentityKsf",
    "argon2id",
    "ksf_from_params",
]

#: Output length of :meth:`Argon2idKsf.stretch`: ``Nh`` = 64 bytes for the SHA-512 suites
#: (RFC 9807 §7 recommends ``T = Nh``).
KSF_OUTPUT_LEN: Final = 64
#: The fixed salt of :class:`Argon2idKsf` (RFC 9807 §7: ``S = zeroes(16)``); see the
#: module docstring for why a fixed salt is sound here.
ARGON2ID_SALT: Final = bytes(16)

#: Version byte of the :class:`KsfParams` encoding.
KSF_PARAMS_VERSION: Final = 1
_ENCODING = struct.Struct(">BBIII")  # version, algorithm, memory_kib, iterations, parallelism
#: Encoded length of :class:`KsfParams`.
KSF_PARAMS_LEN: Final = _ENCODING.size

#: Upper limits accepted for Argon2id. They bound what a stored (or server-supplied)
#: parameter set can make a client spend: 4 GiB of memory, 1024 passes, 255 lanes. The
#: lower limits are RFC 9106 §3.1's (t >= 1, p >= 1, m >= 8p KiB).
MAX_MEMORY_KIB: Final = 4 * 1024 * 1024
MAX_ITERATIONS: Final = 1024
MAX_PARALLELISM: Final = 255


class KsfAlgorithm(enum.IntEnum):
    """Algorithm identifiers in the :class:`KsfParams` encoding."""

    #: ``Stretch(msg) = msg`` — RFC 9807 Appendix C test vectors only.
    UNSAFE_IDENTITY = 0
    #: Argon2id, RFC 9106, version 0x13.
    ARGON2ID = 1


@dataclass(frozen=True, slots=True)
class KsfParams:
    """Which KSF and at which cost. Invalid combinations raise :class:`InvalidParameter`.

    ``memory_kib``, ``iterations`` (passes, Argon2's t) and ``parallelism`` (lanes, p)
    must all be 0 for :attr:`KsfAlgorithm.UNSAFE_IDENTITY`; for Argon2id they must satisfy
    ``1 <= t <= MAX_ITERATIONS``, ``1 <= p <= MAX_PARALLELISM`` and
    ``8p <= m <= MAX_MEMORY_KIB``.

    Encoding (:meth:`to_bytes`, 14 bytes, big-endian)::

        uint8  version = 1
        uint8  algorithm      (KsfAlgorithm)
        uint32 memory_kib
        uint32 iterations
        uint32 parallelism
    """

    algorithm: KsfAlgorithm
    memory_kib: int = 0
    iterations: int = 0
    parallelism: int = 0

    def __post_init__(self) -> None:
        problem = _params_problem(self)
        if problem is not None:
            raise InvalidParameter(problem)

    def to_bytes(self) -> bytes:
        """The canonical 14-byte encoding (see the class docstring)."""
        return _ENCODING.pack(
            KSF_PARAMS_VERSION,
            self.algorithm,
            self.memory_kib,
            self.iterations,
            self.parallelism,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KsfParams:
        """Parse :meth:`to_bytes` output strictly.

        Raises :class:`DecodeError` for a wrong length (including trailing bytes), an
        unknown version or algorithm, and out-of-range or inconsistent parameters.
        """
        data = bytes(data)
        if len(data) != KSF_PARAMS_LEN:
            raise DecodeError(f"KSF parameters must be {KSF_PARAMS_LEN} bytes")
        version, algorithm, memory_kib, iterations, parallelism = _ENCODING.unpack(data)
        if version != KSF_PARAMS_VERSION:
            raise DecodeError("unknown KSF parameters version")
        try:
            alg = KsfAlgorithm(algorithm)
        except ValueError:
            raise DecodeError("unknown KSF algorithm") from None
        try:
            return cls(alg, memory_kib, iterations, parallelism)
        except InvalidParameter as exc:
            raise DecodeError(str(exc)) from None


def _params_problem(p: KsfParams) -> str | None:
    """Why ``p`` is invalid, or ``None``."""
    costs = (p.memory_kib, p.iterations, p.parallelism)
    if not isinstance(p.algorithm, KsfAlgorithm):
        return "unknown KSF algorithm"
    if any(not isinstance(v, int) or isinstance(v, bool) for v in costs):
        return "KSF parameters must be integers"
    if p.algorithm is KsfAlgorithm.UNSAFE_IDENTITY:
        return None if costs == (0, 0, 0) else "the identity KSF takes no cost parameters"
    checks = [
        (1 <= p.iterations <= MAX_ITERATIONS, f"iterations must be in 1..{MAX_ITERATIONS}"),
        (1 <= p.parallelism <= MAX_PARALLELISM, f"parallelism must be in 1..{MAX_PARALLELISM}"),
        (
            8 * p.parallelism <= p.memory_kib <= MAX_MEMORY_KIB,
            f"memory must be in 8*parallelism..{MAX_MEMORY_KIB} KiB",
        ),
    ]
    return next((f"Argon2id {why}" for ok, why in checks if not ok), None)


#: The default: RFC 9106 §4, second recommended option ("if much less memory is
#: available"): Argon2id, t = 3 passes, p = 4 lanes, m = 64 MiB. About 0.4 s on one core
#: of the 2-core development machine (OpenSSL computes the lanes sequentially).
DEFAULT_KSF_PARAMS: Final = KsfParams(
    KsfAlgorithm.ARGON2ID, memory_kib=64 * 1024, iterations=3, parallelism=4
)
#: Interoperability profile: the Rust ``argon2`` crate's ``Argon2::default()`` (Argon2id
#: v0x13, m = 19456 KiB, t = 2, p = 1), which opaque-ke uses with a 16-byte zero salt and
#: an ``Nh``-byte output. Checked by ``tests/crypto/test_opaque_interop.py``.
OPAQUE_KE_ARGON2_DEFAULT_PARAMS: Final = KsfParams(
    KsfAlgorithm.ARGON2ID, memory_kib=19456, iterations=2, parallelism=1
)


class Ksf(Protocol):
    """A key-stretching function (RFC 9807 §2.3): ``Stretch(msg)``.

    Implementations are deterministic and collision resistant, and expose the
    :class:`KsfParams` that identify them so records can store them.
    """

    @property
    def params(self) -> KsfParams:
        """The algorithm and costs of this KSF."""
        ...

    def stretch(self, msg: bytes) -> bytes:
        """``Stretch(msg)``."""
        ...


def argon2id(
    password: bytes,
    *,
    salt: bytes,
    params: KsfParams,
    length: int,
    secret: bytes | None = None,
    ad: bytes | None = None,
) -> bytes:
    """Raw Argon2id (RFC 9106 §3, version 0x13) through ``cryptography``.

    This is the machinery under :class:`Argon2idKsf`, exposed with every RFC 9106 input so
    it can be checked against the RFC 9106 §5.3 vector. ``params.algorithm`` must be
    Argon2id.
    """
    if params.algorithm is not KsfAlgorithm.ARGON2ID:
        raise InvalidParameter("argon2id() needs Argon2id parameters")
    kdf = Argon2id(
        salt=salt,
        length=length,
        iterations=params.iterations,
        lanes=params.parallelism,
        memory_cost=params.memory_kib,
        ad=ad,
        secret=secret,
    )
    return kdf.derive(password)


@dataclass(frozen=True, slots=True)
class Argon2idKsf:
    """``Stretch(msg) = Argon2id(msg, S = zeroes(16), T = 64, K = nil, X = nil)`` with the
    given costs (RFC 9807 §7 shape; defaults to :data:`DEFAULT_KSF_PARAMS`)."""

    params: KsfParams = DEFAULT_KSF_PARAMS

    def __post_init__(self) -> None:
        if self.params.algorithm is not KsfAlgorithm.ARGON2ID:
            raise InvalidParameter("Argon2idKsf needs Argon2id parameters")

    def stretch(self, msg: bytes) -> bytes:
        """Argon2id of ``msg`` under the fixed zero salt, 64 bytes out."""
        return argon2id(msg, salt=ARGON2ID_SALT, params=self.params, length=KSF_OUTPUT_LEN)


_IDENTITY_PARAMS: Final = KsfParams(KsfAlgorithm.UNSAFE_IDENTITY)


@dataclass(frozen=True, slots=True)
class UnsafeIdentityKsf:
    """``Stretch(msg) = msg``. **Unsafe: for RFC 9807 Appendix C test vectors only.**

    With it, a stolen registration record can be attacked offline at the speed of a few
    hashes per guess. Never use it for a real record.
    """

    @property
    def params(self) -> KsfParams:
        """:attr:`KsfAlgorithm.UNSAFE_IDENTITY` with no costs."""
        return _IDENTITY_PARAMS

    def stretch(self, msg: bytes) -> bytes:
        """Returns ``msg`` unchanged."""
        return bytes(msg)


def ksf_from_params(params: KsfParams, *, allow_unsafe: bool = False) -> Ksf:
    """The KSF that ``params`` names (e.g. parameters stored with a record).

    The identity KSF is refused with :class:`InvalidParameter` unless ``allow_unsafe``.
    """
    if params.algorithm is KsfAlgorithm.ARGON2ID:
        return Argon2idKsf(params)
    if not allow_unsafe:
        raise InvalidParameter("the identity KSF is for test vectors only")
    return UnsafeIdentityKsf()
