"""Making a release: check the dataset, copy exactly the files it knows, write the release's own files,
sign, and make the version folder appear complete or not at all.

Everything is checked before anything is written (:func:`lcrypt.verify.publish_problems`, the version,
the license, the keys against the manifest's key ids); each shard's size and sha256 are checked against
the manifest as it is published, so every byte is read once. On the same local file system a shard is
published as a hard link to the dataset's (no second copy of the data to write and flush: a release of
a large dataset costs about one sha256 of it); lcrypt never changes a shard in place (every write is a
new file renamed into place), so the two names keep the same bytes; elsewhere it is copied. What is
hashed is the published file itself. A local ``TARGET`` gets the release in
``TARGET/.staging-X.Y.Z-<random>/``, renamed to ``TARGET/X.Y.Z`` at the end; on a remote one (an object
store has no rename) the files go straight under ``TARGET/X.Y.Z/``, manifest.json and then README.md
last, and a failure deletes what this run wrote there. A version folder that exists is never touched.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from lcrypt import __version__
from lcrypt.errors import UserError
from lcrypt.format import (CARD_NAME, CROISSANT_NAME, ERRORS_NAME, INDEX_NAME, MANIFEST_NAME, PREVIEW_NAME,
                           PUBLIC_KEYS_NAME, REJECTIONS_NAME, RELEASE_INFO_NAME, SIGNATURES_DIR, SUMS_NAME,
                           TIMM_INFO_NAME, Manifest, ManifestError, decode_samples, group_members,
                           make_sample)
from lcrypt.keys import Key
from lcrypt.preview import png_bytes, sample_grid
from lcrypt.release.card import CardFacts, card_text
from lcrypt.release.croissant import croissant_bytes
from lcrypt.release.versions import plan_version
from lcrypt.signatures import (RELEASE_INFO_FORMAT, SIG_EXT, public_key_of, public_keys_json, sha256sums,
                               signature_json, statement)
from lcrypt.storage import LocalStorage, Storage, is_remote, join, local_path, storage_for
from lcrypt.tarstream import iter_members
from lcrypt.verify import publish_problems

LICENSE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")  # an SPDX identifier, e.g. CC-BY-4.0, LicenseRef-x
PREVIEW_SAMPLES = 16
REJECTIONS_FORMAT = "lcrypt-rejections/1"


@dataclasses.dataclass
class ReleaseSpec:
    """What `lcrypt release` was asked for (besides the dataset and the target)."""

    version: str
    license: str | None
    keys: dict[str, Key] = dataclasses.field(default_factory=dict)  # owner -> key: the signers
    unsigned: bool = False
    title: str | None = None
    description: str | None = None
    creator: str | None = None
    homepage: str | None = None


@dataclasses.dataclass
class ReleaseResult:
    folder: str
    files: int
    bytes: int
    signers: list[str]
    change: str


def check_spec(spec: ReleaseSpec, m: Manifest) -> None:
    """The flags' rules, and each signing key against the key id the manifest records for its owner."""
    if not spec.license:
        raise UserError("--license is required: the SPDX id of the data's license (e.g. CC-BY-4.0); a "
                        "release without one cannot be reused by anyone")
    if not LICENSE_RE.match(spec.license):
        raise UserError(f"--license {spec.license!r} is not an SPDX identifier (e.g. CC-BY-4.0, MIT, "
                        "LicenseRef-my-terms)")
    if spec.unsigned and spec.keys:
        raise UserError("--unsigned and --keys contradict each other: sign with the keys, or pass --unsigned")
    if not spec.unsigned and not spec.keys:
        raise UserError("no signing key: give the owners' key files with --keys (each owner whose key is "
                        "given signs the release), or pass --unsigned to publish without signatures")
    recorded = {o.name: o.key_id for o in m.owners}
    for owner, key in sorted(spec.keys.items()):
        if owner not in recorded:
            raise UserError(f"--keys: owner {owner!r} holds no data in {m.name!r} (owners: "
                            f"{', '.join(recorded)}); give only the keys of its owners")
        if not key.has_id(recorded[owner]):
            raise UserError(f"--keys: {owner}'s key {key.key_id} is not the key that encrypted this dataset "
                            f"(the manifest records {recorded[owner]}); give the owner's key file")


def inside(child: str, parent: str) -> bool:
    """``child`` is ``parent`` or lies under it (local paths compared after resolving links)."""
    if is_remote(child) or is_remote(parent):
        c, p = str(child).rstrip("/"), str(parent).rstrip("/")
        return c == p or c.startswith(p + "/")
    c, p = os.path.realpath(local_path(child)), os.path.realpath(local_path(parent))
    return os.path.commonpath([c, p]) == p


def rejection_counts(dataset: str, store: Storage) -> dict[str, dict]:
    """errors.jsonl reduced to counts by reason code (and by split, owner and reason): never a file name."""
    by_reason: collections.Counter = collections.Counter()
    detail: collections.Counter = collections.Counter()
    path = join(dataset, ERRORS_NAME)
    lines = store.read_bytes(path).splitlines() if store.exists(path) else []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            reason = str(row["reason"]).split(":", 1)[0].strip()
        except (ValueError, TypeError, KeyError):
            raise UserError(f"{path} line {n} is not a rejection record prepare wrote; restore the file or "
                            "re-run `lcrypt prepare`") from None
        by_reason[reason] += 1
        detail[(str(row.get("split", "")), str(row.get("owner", "")), reason)] += 1
    return {"format": REJECTIONS_FORMAT, "total": sum(by_reason.values()),
            "by_reason": dict(sorted(by_reason.items())),
            "by_split_owner": [{"split": s, "owner": o, "reason": r, "count": c}
                               for (s, o, r), c in sorted(detail.items())]}


def preview_png(m: Manifest, dataset: str, store: Storage) -> bytes:
    """A grid of the first samples of the first shard (only those are read): what anyone who holds the
    release sees."""
    entry = m.shards[0]
    with store.open(join(dataset, entry.path)) as f:
        members = itertools.islice(iter_members(f), 2 * PREVIEW_SAMPLES)
        samples = [make_sample(key, parts, entry.path) for key, parts in group_members(members, entry.path)]
    images, _ = decode_samples(samples, m.image_shape, m.num_classes)
    return png_bytes(sample_grid(images))


class _Out:
    """Where the release's files go: a local staging folder renamed at the end, or straight under the
    remote version folder; :meth:`abandon` removes what was written."""

    def __init__(self, target: str, version: str, store: Storage):
        self.store, self.final = store, join(target, version)
        self.local = isinstance(store, LocalStorage)
        self.root = join(target, f".staging-{version}-{secrets.token_hex(4)}") if self.local else self.final
        self.written: list[str] = []

    def link(self, rel: str, source: str) -> str | None:
        """Publish ``source`` as ``rel`` by a hard link: the sha256 of the linked file, or None when the
        target is remote or on another file system (copy it then)."""
        if not self.local or is_remote(source):
            return None
        path = local_path(join(self.root, *rel.split("/")))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.link(local_path(source), path)
        except OSError:  # another device, a file system without hard links, too many links
            return None
        self.written.append(rel)
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    def write(self, rel: str, data: bytes) -> None:
        path = join(self.root, *rel.split("/"))
        if self.local:
            os.makedirs(os.path.dirname(local_path(path)), exist_ok=True)
            with open(local_path(path), "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        else:
            self.store.write_atomic(path, data)
        self.written.append(rel)

    def commit(self) -> None:
        if self.local:
            if self.store.exists(self.final):
                raise UserError(f"{self.final} appeared while the release was being written (another run?); "
                                "nothing was published")
            os.rename(local_path(self.root), local_path(self.final))
            fd = os.open(os.path.dirname(local_path(self.final)) or ".", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def abandon(self) -> None:
        if self.local:
            shutil.rmtree(local_path(self.root), ignore_errors=True)
        elif self.written:
            self.store.delete(self.root, self.written)


def make_release(dataset: str, target: str, spec: ReleaseSpec,
                 progress: Callable[[str], None] | None = None) -> ReleaseResult:
    """Release ``dataset`` as ``TARGET/VERSION`` (see the module docstring); a UserError before anything is
    written when an input breaks a rule."""
    dataset, target = str(dataset).rstrip("/") or "/", str(target).rstrip("/") or "/"
    src, dst = storage_for(dataset), storage_for(target)
    if inside(target, dataset):
        raise UserError(f"--out {target} is inside the dataset folder {dataset}: a release goes elsewhere "
                        "(the dataset folder holds only what prepare wrote)")
    try:
        manifest_bytes = src.read_bytes(join(dataset, MANIFEST_NAME))
        m = Manifest.from_dict(json.loads(manifest_bytes))
    except FileNotFoundError:
        raise UserError(f"{dataset}: no {MANIFEST_NAME}; is this a dataset folder made by `lcrypt prepare`?"
                        ) from None
    except (ManifestError, ValueError) as exc:
        raise UserError(f"{dataset}/{MANIFEST_NAME}: {exc}") from None
    check_spec(spec, m)
    problems = publish_problems(dataset, m, src)
    if problems:
        raise UserError(f"{dataset} fails verify ({len(problems)} problem(s)): {problems[0]}; run `lcrypt "
                        "verify` on it, fix it, then release")
    changelog, change = plan_version(target, dst, spec.version, m)
    rejections = rejection_counts(dataset, src)
    out = _Out(target, spec.version, dst)
    try:
        digests, total = _copy_dataset(m, dataset, src, out, progress)
        digests[MANIFEST_NAME] = hashlib.sha256(manifest_bytes).hexdigest()
        card = _write_own_files(m, spec, out, digests, changelog, rejections, preview_png(m, dataset, src))
        out.write(MANIFEST_NAME, manifest_bytes)
        out.write(CARD_NAME, card)
        out.commit()
    except BaseException:
        out.abandon()
        raise
    return ReleaseResult(out.final, len(out.written), total + len(manifest_bytes), sorted(spec.keys), change)


def _copy_dataset(m: Manifest, dataset: str, src: Storage, out: _Out,
                  progress: Callable[[str], None] | None) -> tuple[dict[str, str], int]:
    """Publish the manifest's shards (linked or copied, each checked against its entry), index.parquet and
    _info.json, hashing each once. ``({file: sha256}, bytes)``."""

    def publish(entry) -> tuple[str, str, int]:
        source = join(dataset, entry.path)
        digest = out.link(entry.path, source)
        if digest is None:
            data = src.read_bytes(source)
            digest = hashlib.sha256(data).hexdigest()
            if digest == entry.sha256:
                out.write(entry.path, data)
        if digest != entry.sha256:  # equal digests are equal sizes
            raise UserError(f"{dataset} fails verify: {entry.path} has sha256 {digest[:16]}…, the manifest "
                            f"says {entry.sha256[:16]}… ({entry.bytes} bytes); restore the shard or re-run "
                            "`lcrypt prepare`")
        if progress:
            progress(entry.path)
        return entry.path, digest, entry.bytes

    # sha256 and file I/O release the GIL: shards are published in parallel
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        copied = list(pool.map(publish, m.shards))
    digests = {path: digest for path, digest, _ in copied}
    total = sum(n for _, _, n in copied)
    for name in (INDEX_NAME, TIMM_INFO_NAME):
        data = src.read_bytes(join(dataset, name))
        digests[name] = hashlib.sha256(data).hexdigest()
        total += len(data)
        out.write(name, data)
    return digests, total


def _write_own_files(m: Manifest, spec: ReleaseSpec, out: _Out, digests: dict[str, str], changelog: list,
                     rejections: dict, preview: bytes) -> bytes:
    """Write preview.png, rejections.json, keys.pub.json, release.json, croissant.json, SHA256SUMS and the
    signatures; return the card, which the caller writes after manifest.json (so a remote release is
    complete once it has a card)."""
    recorded = {o.name: o.key_id for o in m.owners}
    public = [public_key_of(k, recorded[o]) for o, k in sorted(spec.keys.items())]
    today = _dt.datetime.now(_dt.timezone.utc)
    title = spec.title or m.name
    total = sum(m.splits.values())
    description = spec.description or (f"{total:,} images in {m.num_classes} classes, encrypted with "
                                       f"lcrypt's {m.scheme} scheme.")
    creator = spec.creator or ", ".join(o.name for o in m.owners)
    info = {"format": RELEASE_INFO_FORMAT, "name": m.name, "version": spec.version, "title": title,
            "license": spec.license, "created": today.isoformat(timespec="seconds"),
            "lcrypt_version": __version__, "manifest_sha256": digests[MANIFEST_NAME],
            "signers": sorted(spec.keys), "changelog": changelog}
    own = {PREVIEW_NAME: preview,
           REJECTIONS_NAME: _json(rejections),
           PUBLIC_KEYS_NAME: public_keys_json(public),
           RELEASE_INFO_NAME: _json(info)}
    own[CROISSANT_NAME] = croissant_bytes(m, digests, {
        "title": title, "description": description, "license": spec.license, "creator": creator,
        "homepage": spec.homepage, "version": spec.version, "date_published": today.date().isoformat()})
    for name, data in own.items():
        digests[name] = hashlib.sha256(data).hexdigest()
    facts = CardFacts(spec.version, spec.license, title, description, creator, spec.homepage, public,
                      changelog, rejections["by_reason"],
                      {n: digests[n] for n in (MANIFEST_NAME, INDEX_NAME, PUBLIC_KEYS_NAME, CROISSANT_NAME)})
    card = card_text(m, facts).encode("utf-8")
    digests[CARD_NAME] = hashlib.sha256(card).hexdigest()
    own[SUMS_NAME] = sha256sums(digests)
    digests[SUMS_NAME] = hashlib.sha256(own[SUMS_NAME]).hexdigest()
    message = statement(m.name, spec.version, digests)
    for name, data in own.items():
        out.write(name, data)
    for owner, key in sorted(spec.keys.items()):
        out.write(f"{SIGNATURES_DIR}/{owner}{SIG_EXT}", signature_json(key, message))
    return card


def _json(body: dict) -> bytes:
    return (json.dumps(body, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
