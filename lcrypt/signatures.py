"""A release's checksums and signatures: what an owner signs, and how `lcrypt verify` checks it.

A release folder (written by :mod:`lcrypt.release`, file names in :mod:`lcrypt.format.folder`) carries

* ``SHA256SUMS``: ``<sha256>  <path>`` for every file except itself and ``signatures/`` (``sha256sum
  -c SHA256SUMS`` reads it);
* ``release.json``: name, version, license, changelog and ``signers``, the owners who signed;
* ``keys.pub.json``: per signing owner its Ed25519 public key (base64) and key id, which is the
  fingerprint of that key (:func:`lcrypt.keys.key_id_of`); ``legacy_key_id`` too when the manifest
  records the owner's legacy id;
* ``signatures/{owner}.sig``: ``{"format", "owner", "key_id", "public_key", "signature"}``, the owner's
  Ed25519 signature of the statement.

The statement (:func:`statement`) is canonical JSON (sorted keys, no whitespace) of ``{"format":
"lcrypt-release/1", "name", "version", "manifest_sha256", "files": {path: sha256}}`` over every file of
the release except ``signatures/``, so a signature covers every byte published, the card and
SHA256SUMS included. A signature proves that the holder of the owner's key published exactly these
files (origin and integrity); it says nothing about confidentiality, which is the scheme's business.

A signature is only as good as the public key it is checked against: someone who edits the files,
replaces keys.pub.json with their own key and re-signs produces a release that is consistent with
itself. :func:`check_release` therefore also compares keys.pub.json with the keys the verifier trusts
(``--public-keys FILE``, a keys.pub.json the owner published elsewhere, or ``--key-id OWNER=ID``, e.g.
the id ``lcrypt keygen`` printed); without either it says that only integrity was checked. A legacy key
id (16 hex digits) cannot be trusted this way: it is not a fingerprint of the public key.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import posixpath
import re
from typing import Any, Iterable, Mapping

from lcrypt.format.folder import (ERRORS_NAME, MANIFEST_NAME, PUBLIC_KEYS_NAME, RELEASE_INFO_NAME,
                                  SIGNATURES_DIR, SUMS_NAME)
from lcrypt.keys import KEY_ID_HEX_DIGITS, Key, key_id_of, verify_signature
from lcrypt.storage import Storage, join

STATEMENT_FORMAT = "lcrypt-release/1"
PUBLIC_KEYS_FORMAT = "lcrypt-public-keys/1"
SIGNATURE_FORMAT = "lcrypt-signature/1"
RELEASE_INFO_FORMAT = "lcrypt-release-info/1"
SIG_EXT = ".sig"
SEMVER_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def parse_version(text: str) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; ValueError for anything but MAJOR.MINOR.PATCH."""
    m = SEMVER_RE.match(str(text))
    if not m:
        raise ValueError(f"version {text!r} is not semver MAJOR.MINOR.PATCH (e.g. 1.0.0)")
    return int(m[1]), int(m[2]), int(m[3])


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per value, so a signature is reproducible."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def statement(name: str, version: str, files: Mapping[str, str]) -> bytes:
    """What each owner signs: the release's name, version and the sha256 of every file but signatures/."""
    return canonical_json({"format": STATEMENT_FORMAT, "name": name, "version": version,
                           "manifest_sha256": files.get(MANIFEST_NAME, ""), "files": dict(files)})


def sha256sums(files: Mapping[str, str]) -> bytes:
    """SHA256SUMS as ``sha256sum`` writes it (two spaces: text mode), sorted by path."""
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(files.items())).encode("utf-8")


def parse_sha256sums(data: bytes) -> dict[str, str]:
    """``{path: sha256}`` of a SHA256SUMS file; ValueError naming the first malformed line."""
    out = {}
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        m = _SUMS_LINE.match(line)
        if not m:
            raise ValueError(f"{SUMS_NAME} line {n} is not '<sha256>  <path>': {line[:80]!r}")
        out[m[2]] = m[1]
    return out


# -- public keys and signatures ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PublicKey:
    """An owner's public signing key as a release ships it; ``key_id`` is checked to be its fingerprint."""

    owner: str
    key_id: str
    public_key: bytes
    legacy_key_id: str | None = None

    def ids(self) -> tuple[str, ...]:
        return (self.key_id,) + ((self.legacy_key_id,) if self.legacy_key_id else ())

    def as_dict(self) -> dict[str, str]:
        d = {"algorithm": "ed25519", "key_id": self.key_id,
             "public_key": base64.b64encode(self.public_key).decode("ascii")}
        return d | ({"legacy_key_id": self.legacy_key_id} if self.legacy_key_id else {})


def public_key_of(key: Key, recorded_id: str | None = None) -> PublicKey:
    """The public half of ``key``; ``recorded_id`` (the manifest's) is kept when it is the legacy id."""
    legacy = recorded_id if recorded_id and recorded_id == key.legacy_key_id else None
    return PublicKey(key.owner, key.key_id, key.public_key, legacy)


def public_keys_json(keys: Iterable[PublicKey]) -> bytes:
    body = {"format": PUBLIC_KEYS_FORMAT, "owners": {k.owner: k.as_dict() for k in keys}}
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8")


def parse_public_keys(data: bytes, where: str = PUBLIC_KEYS_NAME) -> dict[str, PublicKey]:
    """``{owner: PublicKey}``; ValueError when malformed or when a key id is not its key's fingerprint."""
    try:
        body = json.loads(data)
        owners = body["owners"] if body.get("format") == PUBLIC_KEYS_FORMAT else None
    except (ValueError, TypeError, KeyError, AttributeError):
        owners = None
    if not isinstance(owners, dict):
        raise ValueError(f"{where} is not an {PUBLIC_KEYS_FORMAT} file")
    out = {}
    for owner, entry in owners.items():
        try:
            public = base64.b64decode(entry["public_key"], validate=True)
            fingerprint = key_id_of(public)
            key_id, legacy = entry["key_id"], entry.get("legacy_key_id")
        except (KeyError, TypeError, binascii.Error, ValueError):
            raise ValueError(f"{where}: owner {owner!r} lacks a valid public_key and key_id") from None
        if key_id != fingerprint:
            raise ValueError(f"{where}: owner {owner!r} has key_id {key_id}, but its public key's "
                             f"fingerprint is {fingerprint} (the file was edited)")
        out[owner] = PublicKey(owner, key_id, public, legacy)
    return out


def signature_json(key: Key, message: bytes) -> bytes:
    """``signatures/{owner}.sig``: the owner's signature of ``message`` and the key that checks it."""
    body = {"format": SIGNATURE_FORMAT, "owner": key.owner, "key_id": key.key_id,
            "public_key": base64.b64encode(key.public_key).decode("ascii"),
            "signature": base64.b64encode(key.sign(message)).decode("ascii")}
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _check_signature(data: bytes, rel: str, message: bytes, shipped: Mapping[str, PublicKey]
                     ) -> tuple[str | None, str]:
    """``(owner or None, problem or "")`` for one .sig file checked against keys.pub.json's key."""
    try:
        body = json.loads(data)
        owner, public = body["owner"], base64.b64decode(body["public_key"], validate=True)
        signature = base64.b64decode(body["signature"], validate=True)
        assert body["format"] == SIGNATURE_FORMAT
    except (ValueError, TypeError, KeyError, AssertionError, binascii.Error):
        return None, f"{rel}: not an {SIGNATURE_FORMAT} file"
    if rel != f"{SIGNATURES_DIR}/{owner}{SIG_EXT}":
        return None, f"{rel}: holds the signature of owner {owner!r} (renamed?)"
    if owner not in shipped:
        return None, f"{rel}: {PUBLIC_KEYS_NAME} has no public key for owner {owner!r}"
    if public != shipped[owner].public_key:
        return None, f"{rel}: signed with another key than {PUBLIC_KEYS_NAME}'s for {owner!r}"
    if not verify_signature(public, message, signature):
        return None, (f"{rel}: the signature of {owner!r} does not match the release's files (a file, "
                      "SHA256SUMS, the name or the version changed after signing)")
    return owner, ""


# -- trust ---------------------------------------------------------------------------------------
def parse_key_ids(pairs: Iterable[str]) -> dict[str, str]:
    """``["alice=2b33..."]`` -> ``{"alice": "2b33..."}``; only full public-key fingerprints are trusted."""
    out = {}
    for pair in pairs:
        owner, sep, key_id = pair.partition("=")
        if not sep or not owner or not re.fullmatch(f"[0-9a-f]{{{KEY_ID_HEX_DIGITS}}}", key_id.strip()):
            raise ValueError(f"--key-id {pair!r}: write OWNER=ID with the owner's {KEY_ID_HEX_DIGITS}-digit "
                             "key id (as `lcrypt keygen` printed it; a 16-digit legacy id names no public "
                             "key)")
        out[owner.strip()] = key_id.strip()
    return out


def trusted_ids(public_keys: bytes | None, pairs: Iterable[str], where: str = "--public-keys"
                ) -> dict[str, str]:
    """``{owner: key id}`` the verifier trusts, from a published keys.pub.json and ``--key-id`` pairs."""
    trusted = {o: k.key_id for o, k in parse_public_keys(public_keys, where).items()} if public_keys else {}
    for owner, key_id in parse_key_ids(pairs).items():
        if trusted.get(owner, key_id) != key_id:
            raise ValueError(f"--key-id {owner}={key_id} contradicts {where}'s key {trusted[owner]} for "
                             f"{owner}")
        trusted[owner] = key_id
    return trusted


# -- checking a release --------------------------------------------------------------------------
@dataclasses.dataclass
class ReleaseCheck:
    """What :func:`check_release` found: ``problems`` (empty: the release is intact) and ``notes``, the
    lines that say what was checked and who signed what, against which key."""

    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    signed: dict[str, str] = dataclasses.field(default_factory=dict)  # owner -> key id of a valid signature


def read_release_info(data: bytes, where: str = RELEASE_INFO_NAME) -> dict[str, Any]:
    """release.json as a dict; ValueError when it is not one lcrypt wrote."""
    try:
        body = json.loads(data)
        assert body["format"] == RELEASE_INFO_FORMAT
        parse_version(body["version"])
        assert isinstance(body["signers"], list) and isinstance(body["changelog"], list)
    except (ValueError, TypeError, KeyError, AssertionError):
        raise ValueError(f"{where} is not an {RELEASE_INFO_FORMAT} file") from None
    return body


def check_release(folder: str, store: Storage, manifest, trusted: Mapping[str, str] | None = None
                  ) -> ReleaseCheck:
    """Re-hash every file against SHA256SUMS, check each signature against keys.pub.json and
    keys.pub.json against ``trusted`` ``{owner: key id}`` and the manifest's key ids."""
    out = ReleaseCheck()
    files = [f for f in store.list_files(folder) if not f.startswith(f"{SIGNATURES_DIR}/")]
    sigs = [f for f in store.list_files(folder) if f.startswith(f"{SIGNATURES_DIR}/")]
    if ERRORS_NAME in files:
        out.problems.append(f"{ERRORS_NAME}: a release never publishes it (it names source files); "
                            "delete it from the release")
    digests = {rel: hashlib.sha256(store.read_bytes(join(folder, rel))).hexdigest() for rel in files}
    try:
        listed = parse_sha256sums(store.read_bytes(join(folder, SUMS_NAME)))
        info = read_release_info(store.read_bytes(join(folder, RELEASE_INFO_NAME)))
        shipped = parse_public_keys(store.read_bytes(join(folder, PUBLIC_KEYS_NAME)))
    except FileNotFoundError as exc:
        out.problems.append(f"{posixpath.basename(str(exc.filename or exc))}: missing; every release has "
                            f"{SUMS_NAME}, {RELEASE_INFO_NAME} and {PUBLIC_KEYS_NAME}")
        return out
    except ValueError as exc:
        out.problems.append(str(exc))
        return out
    for rel in sorted((set(listed) | set(digests)) - {SUMS_NAME}):
        if rel not in digests:
            out.problems.append(f"{rel}: listed in {SUMS_NAME} but missing")
        elif rel not in listed:
            out.problems.append(f"{rel}: not listed in {SUMS_NAME} (added after the release was made?)")
        elif listed[rel] != digests[rel]:
            out.problems.append(f"{rel}: sha256 {digests[rel][:16]}… differs from {SUMS_NAME}'s "
                                f"{listed[rel][:16]}… (modified or corrupted)")
    if info.get("name") != manifest.name:
        out.problems.append(f"{RELEASE_INFO_NAME}: name {info.get('name')!r} differs from the manifest's "
                            f"{manifest.name!r}")
    for o in manifest.owners:
        if o.name in shipped and o.key_id not in shipped[o.name].ids():
            out.problems.append(f"{MANIFEST_NAME}: owner {o.name} has key id {o.key_id}, but "
                                f"{PUBLIC_KEYS_NAME} says {shipped[o.name].key_id} (an edited manifest or "
                                "keys file)")
    for owner in sorted(set(shipped) - {o.name for o in manifest.owners}):
        out.problems.append(f"{PUBLIC_KEYS_NAME}: owner {owner} holds no data in this release")
    message = statement(info["name"], info["version"], digests)
    for rel in sorted(sigs):
        owner, problem = _check_signature(store.read_bytes(join(folder, rel)), rel, message, shipped)
        if problem:
            out.problems.append(problem)
        else:
            out.signed[owner] = shipped[owner].key_id
    present = {posixpath.basename(rel).removesuffix(SIG_EXT) for rel in sigs}
    for owner in info["signers"]:
        if owner not in present:
            out.problems.append(f"{SIGNATURES_DIR}/{owner}{SIG_EXT}: missing, but {RELEASE_INFO_NAME} says "
                                f"{owner} signed")
    _check_trust(out, shipped, trusted or {}, f"{info['name']} {info['version']}")
    return out


def _check_trust(out: ReleaseCheck, shipped: Mapping[str, PublicKey], trusted: Mapping[str, str],
                 what: str) -> None:
    """Compare the keys that signed with the ones the verifier trusts; say what each signature proves."""
    for owner, key_id in sorted(trusted.items()):
        if owner not in shipped:
            out.problems.append(f"owner {owner}: the release ships no public key for it, so {owner} did not "
                                "sign it")
        elif shipped[owner].key_id != key_id:
            out.problems.append(f"owner {owner}: {PUBLIC_KEYS_NAME} holds key {shipped[owner].key_id}, not "
                                f"the trusted {key_id} (re-signed by someone else?)")
        elif owner not in out.signed:
            out.problems.append(f"owner {owner}: no valid signature under the trusted key {key_id}")
    for owner, key_id in sorted(out.signed.items()):
        how = ("the key you trust" if trusted.get(owner) == key_id
               else f"the key shipped in {PUBLIC_KEYS_NAME} only")
        out.notes.append(f"signed: {owner} signed {what} with key {key_id} ({how})")
    if not out.signed:
        out.notes.append("unsigned: SHA256SUMS shows the files are intact, but nobody vouches for who "
                         "published them")
    elif set(out.signed) - set(trusted):
        out.notes.append(f"note: checked against keys shipped in the release ({PUBLIC_KEYS_NAME}) only for "
                         f"{', '.join(sorted(set(out.signed) - set(trusted)))}: this proves integrity, not "
                         "origin; give --public-keys FILE or --key-id OWNER=ID from the owner to check "
                         "origin")
