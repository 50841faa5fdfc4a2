"""``expand_message_xmd`` (RFC 9380 §5.3.1) and hash-to-group for ristretto255.

``hash_to_ristretto255`` is the ``hash_to_ristretto255`` of RFC 9380 Appendix B / RFC 9496
§4.3.4: ``expand_message_xmd`` with SHA-512 to 64 uniform bytes, then the element
derivation function (libsodium's ``crypto_core_ristretto255_from_hash``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from hsmvault.crypto.ristretto255 import Element, element_from_uniform_bytes
from hsmvault.errors import InvalidParameter

HashFactory = Callable[[], "hashlib._Hash"]

_MAX_DST_LEN = 255


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


def expand_message_xmd(
    msg: bytes, dst: bytes, len_in_bytes: int, hash_name: str = "sha512"
) -> bytes:
    """RFC 9380 §5.3.1 ``expand_message_xmd`` with the named Merkle-Damgård hash.

    ``hash_name`` is a :mod:`hashlib` name (``"sha256"``, ``"sha512"``). A DST longer
    than 255 bytes is first hashed as RFC 9380 §5.3.3 requires.

    Raises :class:`InvalidParameter` when ``len_in_bytes`` is out of the range the RFC
    allows (``ell > 255`` or ``len_in_bytes > 65535``).
    """
    h = hashlib.new(hash_name)
    b_in_bytes = h.digest_size
    s_in_bytes = h.block_size
    if len(dst) > _MAX_DST_LEN:
        dst = hashlib.new(hash_name, b"H2C-OVERSIZE-DST-" + dst).digest()
    ell = -(-len_in_bytes // b_in_bytes)
    if ell > 255 or len_in_bytes > 65535 or len_in_bytes < 0:
        raise InvalidParameter("expand_message_xmd: requested length out of range")
    dst_prime = dst + _i2osp(len(dst), 1)
    z_pad = bytes(s_in_bytes)
    l_i_b_str = _i2osp(len_in_bytes, 2)
    b_0 = hashlib.new(hash_name, z_pad + msg + l_i_b_str + b"\x00" + dst_prime).digest()
    b_i = hashlib.new(hash_name, b_0 + b"\x01" + dst_prime).digest()
    out = [b_i]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b_0, b_i, strict=True))
        b_i = hashlib.new(hash_name, mixed + _i2osp(i, 1) + dst_prime).digest()
        out.append(b_i)
    return b"".join(out)[:len_in_bytes]


def hash_to_ristretto255(msg: bytes, dst: bytes) -> Element:
    """Hash ``msg`` to a ristretto255 element.

    This is RFC 9380 suite ``ristretto255_XMD:SHA-512_R255MAP_RO_``.
    """
    return element_from_uniform_bytes(expand_message_xmd(msg, dst, 64, "sha512"))


def hash_to_scalar_bytes(msg: bytes, dst: bytes) -> bytes:
    """64 uniform bytes for ``HashToScalar`` (RFC 9497 §4.1): reduce them mod L to get a scalar."""
    return expand_message_xmd(msg, dst, 64, "sha512")
