"""CurveZMQ key helpers: write a key pair, read keys from files or URL options.

Key files are read with ``zmq.auth.load_certificate``; :func:`keygen` writes them itself
(its comment says why).

Keys are 32-byte Curve25519 keys.  On disk they use the ZeroMQ certificate format that
``zmq.auth.load_certificate`` reads (``public-key = "<z85>"``, and ``secret-key`` in the
secret file).  In URLs and allow-lists a key is either its 40-character Z85 text
(percent-encoded in a URL: Z85 uses ``&``, ``?``, ``#`` and ``%``) or 64 hex digits.
"""

from __future__ import annotations

import os
import re

import zmq
from zmq.utils import z85

__all__ = ["decode_key", "keygen", "load_keypair", "load_public_key"]

_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def keygen(path_prefix: str) -> tuple[str, str]:
    """Write a new key pair to ``<prefix>.key`` (public) and ``<prefix>.key_secret``.

    The secret file is created with mode 0600.  Returns the two paths.
    """
    # Written here rather than by zmq.auth.create_certificates: that one opens the secret
    # file with the process umask (world-readable, usually), and a chmod afterwards leaves
    # a window where the secret can be read; os.umask to narrow it is process-wide (not
    # thread-safe).  The format is the one zmq.auth.load_certificate reads (below).
    public, secret = zmq.curve_keypair()
    pub_path, sec_path = f"{path_prefix}.key", f"{path_prefix}.key_secret"
    banner = "#   ZeroMQ CURVE certificate written by vertebra keygen\n"
    with open(pub_path, "w", encoding="ascii") as f:
        f.write(f"{banner}metadata\ncurve\n    public-key = \"{public.decode()}\"\n")
    fd = os.open(sec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"{banner}metadata\ncurve\n    public-key = \"{public.decode()}\"\n"
                f"    secret-key = \"{secret.decode()}\"\n")
    return pub_path, sec_path


def load_keypair(path: str) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a secret key file written by :func:`keygen`."""
    import zmq.auth  # here: a bus without CURVE does not carry it
    public, secret = zmq.auth.load_certificate(path)  # OSError: no such file
    if not public or not secret:
        raise ValueError(f"{path} is not a CURVE secret key file")
    return decode_key(public.decode("ascii", "replace")), decode_key(secret.decode("ascii", "replace"))


def load_public_key(path: str) -> bytes:
    """The Z85 public key from a key file (public or secret)."""
    import zmq.auth
    public, _ = zmq.auth.load_certificate(path)   # ValueError: no public-key in it
    return decode_key(public.decode("ascii", "replace"))


def decode_key(text: str) -> bytes:
    """A key given as 40 Z85 characters or 64 hex digits, as Z85 bytes; ValueError otherwise."""
    text = text.strip()
    if _HEX.match(text):
        return z85.encode(bytes.fromhex(text))
    if len(text) == 40:
        try:
            z85.decode(text.encode("ascii"))
        except (ValueError, KeyError, UnicodeEncodeError):
            raise ValueError("not a Z85 key") from None
        return text.encode("ascii")
    raise ValueError("a CURVE key is 40 Z85 characters or 64 hex digits")
