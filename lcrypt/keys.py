"""Owner keys: 256-bit secrets, their key files, and HKDF sub-keys for every random choice.

A data owner holds one :class:`Key`. Its secret never leaves the key file and this object: ``repr``,
``str``, exceptions and logs carry only the public ``key_id``, which is what manifests record.

The key id names who can sign: it is the fingerprint of the owner's Ed25519 public signing key
(:func:`key_id_of`: 32 hex digits of SHA-256 over a tag and the raw public key). The signing key is
itself an HKDF sub-key of the secret with its own purpose (:data:`SIGNING_INFO`), so one key file both
encrypts an owner's data and signs its releases, and anyone holding the public key can check that a
recorded key id is that owner's. Files written before key ids were public-key fingerprints recorded the
legacy id (16 hex digits of SHA-256 over a tag and the secret); a key exposes both
(:attr:`Key.key_ids`, :meth:`Key.has_id`) and a key file recording either still loads, so old datasets,
key files and checkpoints keep working. Only the new id can be checked against a public key.

Every scheme draws its permutations, masks and chaotic-map parameters from
:meth:`Key.stream`, i.e. from an HKDF-SHA256 (RFC 5869) sub-key bound to the scheme name, its
parameters, the purpose of the draw and the image shape, expanded with SHAKE-256. Nothing depends on
numpy's random generators (whose streams may change between releases), so the same key and
parameters give bit-identical ciphertexts on any machine, process and numpy version.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_FORMAT = "lcrypt-key/1"
SECRET_BYTES = 32
_HKDF_SALT = b"lcrypt/hkdf-salt/v1"
_LEGACY_KEY_ID_TAG = b"lcrypt/key-id/v1\x00"
_KEY_ID_TAG = b"lcrypt/key-id/v2/ed25519\x00"
SIGNING_INFO = "lcrypt/signing-key/ed25519/v1"  # the HKDF purpose of an owner's signing key
PUBLIC_KEY_BYTES = 32
KEY_ID_HEX_DIGITS = 32  # 128 bits: finding another public key with a given id is out of reach
LEGACY_KEY_ID_HEX_DIGITS = 16


class KeyFileError(ValueError):
    """A key file is missing, malformed, unsafe or belongs to someone else (never shows the secret)."""


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32, salt: bytes = _HKDF_SALT) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt``, expand to ``length`` bytes bound to ``info``."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _legacy_fingerprint(secret: bytes) -> str:
    return hashlib.sha256(_LEGACY_KEY_ID_TAG + secret).hexdigest()[:LEGACY_KEY_ID_HEX_DIGITS]


def key_id_of(public_key: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key: what manifests, cards and summaries show."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, not {len(public_key)}")
    return hashlib.sha256(_KEY_ID_TAG + bytes(public_key)).hexdigest()[:KEY_ID_HEX_DIGITS]


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is an Ed25519 signature of ``message`` under the raw ``public_key``."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


class Key:
    """A data owner's secret key. Create with :meth:`generate`, persist with :meth:`save`/:meth:`load`."""

    __slots__ = ("_secret", "owner", "created", "key_id", "legacy_key_id", "public_key")

    def __init__(self, secret: bytes, owner: str, created: str | None = None):
        if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_BYTES:
            raise KeyFileError(f"a key secret must be {SECRET_BYTES} bytes")
        if not owner or not isinstance(owner, str):
            raise KeyFileError("a key needs a non-empty owner name")
        self._secret = bytes(secret)
        self.owner = owner
        self.created = created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.public_key = self._signing_key().public_key().public_bytes_raw()
        self.key_id = key_id_of(self.public_key)
        self.legacy_key_id = _legacy_fingerprint(self._secret)

    @property
    def key_ids(self) -> tuple[str, str]:
        """``(key_id, legacy_key_id)``: every id this key was ever recorded under."""
        return self.key_id, self.legacy_key_id

    def has_id(self, key_id: str) -> bool:
        """Whether a recorded key id (new or legacy) is this key's."""
        return key_id in self.key_ids

    # -- construction and persistence -------------------------------------------------------
    @classmethod
    def generate(cls, owner: str) -> "Key":
        """A fresh key from the operating system's CSPRNG."""
        return cls(os.urandom(SECRET_BYTES), owner)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the key file with mode 0600; refuse to overwrite an existing file."""
        path = Path(path)
        body = {
            "format": KEY_FORMAT,
            "owner": self.owner,
            "key_id": self.key_id,
            "created": self.created,
            "secret": base64.b64encode(self._secret).decode("ascii"),
        }
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{path} already exists: lcrypt never overwrites a key file; "
                               "choose another --out or move the old key away first") from None
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=2)
            f.write("\n")
        os.chmod(path, 0o600)  # umask cannot widen it, but be explicit
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, owner: str | None = None) -> "Key":
        """Read a key file, refusing files others can read and keys of another ``owner``."""
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise KeyFileError(f"key file {path} not found; create one with "
                               f"`lcrypt keygen --owner NAME --out {path}`") from None
        if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                               f"fix it with `chmod 600 {path}`")
        try:
            body = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise KeyFileError(f"key file {path} is not valid JSON (truncated or corrupt?)") from None
        if not isinstance(body, dict) or body.get("format") != KEY_FORMAT:
            raise KeyFileError(f"key file {path} is not an {KEY_FORMAT} file")
        missing = [f for f in ("owner", "key_id", "secret") if not isinstance(body.get(f), str)]
        if missing:
            raise KeyFileError(f"key file {path} lacks the field(s) {', '.join(missing)}")
        try:
            secret = base64.b64decode(body["secret"], validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"key file {path}: the secret is not valid base64 "
                               "(truncated or corrupt?)") from None
        if len(secret) != SECRET_BYTES:
            raise KeyFileError(f"key file {path}: the secret has the wrong length (truncated or corrupt?)")
        key = cls(secret, body["owner"], body.get("created"))
        if not key.has_id(body["key_id"]):
            raise KeyFileError(f"key file {path}: key_id {body['key_id']} does not match the secret "
                               "(the file was edited or corrupted)")
        if owner is not None and key.owner != owner:
            raise KeyFileError(f"key file {path} belongs to owner {key.owner!r}, not {owner!r}")
        return key

    # -- derivation -------------------------------------------------------------------------
    def derive(self, info: str, length: int = 32) -> bytes:
        """An HKDF-SHA256 sub-key bound to ``info`` (e.g. ``"etc|block_size=16|perm|32x32x3"``)."""
        return hkdf_sha256(self._secret, b"lcrypt/v1|" + info.encode("utf-8"), length)

    def stream(self, info: str, nbytes: int) -> np.ndarray:
        """``nbytes`` pseudo-random bytes: the sub-key for ``info`` expanded by SHAKE-256."""
        return np.frombuffer(hashlib.shake_256(self.derive(info)).digest(nbytes), dtype=np.uint8)

    def uint64(self, info: str, n: int) -> np.ndarray:
        """``n`` pseudo-random little-endian uint64 values for ``info``."""
        return self.stream(info, 8 * n).view("<u8").astype(np.uint64)

    def permutation(self, info: str, n: int) -> np.ndarray:
        """A uniformly random permutation of ``range(n)``: argsort of 64-bit random sort keys."""
        return np.argsort(self.uint64(info, n), kind="stable").astype(np.intp)

    def integers(self, info: str, n: int, high: int) -> np.ndarray:
        """``n`` integers in ``[0, high)``; the modulo bias is below 2^-58 for ``high`` <= 64."""
        return (self.uint64(info, n) % np.uint64(high)).astype(np.intp)

    def bits(self, info: str, n: int, p: float = 0.5) -> np.ndarray:
        """``n`` Bernoulli(p) booleans (``p`` = 0.5 in the papers' negative-positive steps)."""
        if p >= 1.0:
            return np.ones(n, dtype=bool)
        if p == 0.5:
            return np.unpackbits(self.stream(info, (n + 7) // 8))[:n].astype(bool)
        return self.unit_floats(info, n) < p

    def unit_floats(self, info: str, n: int) -> np.ndarray:
        """``n`` floats uniform in [0, 1), 53 bits each."""
        return (self.uint64(info, n) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    # -- signing ----------------------------------------------------------------------------
    def _signing_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.derive(SIGNING_INFO))

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message`` under this owner's signing key (check: verify_signature)."""
        return self._signing_key().sign(message)

    # -- never leak the secret --------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Key(owner={self.owner!r}, key_id={self.key_id!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __getstate__(self):
        # Pickling exists so Beam can ship a DoFn holding the key to its own workers; never log it.
        return {"secret": self._secret, "owner": self.owner, "created": self.created}

    def __setstate__(self, state):
        Key.__init__(self, state["secret"], state["owner"], state["created"])


def load_key_files(spec: str | os.PathLike) -> dict[str, tuple[Key, Path]]:
    """``{owner: (key, key file)}`` named by ``spec``: one key file, or an owners file as ``lcrypt prepare
    --keys`` reads it (``{"owner": {"key": "a.key", ...}}``, optionally under ``"owners"``; key paths
    relative to the owners file), each key loaded for its owner."""
    path = Path(spec)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeyFileError(f"{path} not found; create a key with `lcrypt keygen --owner NAME --out {path}`"
                           ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyFileError(f"{path} is neither a key file nor an owners JSON file") from None
    if isinstance(body, dict) and str(body.get("format", "")).startswith("lcrypt-key"):
        key = Key.load(path)
        return {key.owner: (key, path)}
    owners = body.get("owners", body) if isinstance(body, dict) else None
    if not isinstance(owners, dict) or not owners:
        raise KeyFileError(f"{path}: an owners file maps owner names to {{\"key\": KEY_FILE, ...}}")
    out = {}
    for owner, entry in owners.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise KeyFileError(f"{path}: owner {owner!r} needs \"key\" (a key file)")
        kpath = Path(entry["key"]) if Path(entry["key"]).is_absolute() else path.parent / entry["key"]
        out[owner] = (Key.load(kpath, owner=owner), kpath)
    return out
