"""Versions of a release target: which exist, whether a new one may follow them, and its changelog line.

``TARGET`` holds one folder per version (``TARGET/1.2.0/``). A new version must be greater than every
version already there, and say how the data moved since the greatest one (semantic versioning, for the
data): the same shards is a metadata-only release (any greater version); shards only added, the existing
ones byte-identical (``prepare --append`` or ``--retry-failed``), needs a new MINOR or MAJOR version, and
its changelog line names the samples added per split and owner, the owners who joined, and the runs that
added them (from the manifest's ``runs``); any shard changed or removed replaces the data, which models
trained on the old data may not survive: a new MAJOR version. The changelog carries every earlier
version's line (from its release.json) and the new one.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from lcrypt.errors import UserError
from lcrypt.format import CARD_NAME, RELEASE_INFO_NAME, Manifest
from lcrypt.signatures import parse_version, read_release_info
from lcrypt.storage import Storage, join

FIRST = "first release"
METADATA_ONLY = "metadata only"


def existing_versions(target: str, store: Storage) -> list[str]:
    """The version folders under ``target``, oldest first (anything else there is not a version)."""
    names = set()
    for rel in store.list_files(target):
        top = rel.split("/", 1)[0]
        try:
            parse_version(top)
        except ValueError:
            continue
        names.add(top)
    return sorted(names, key=parse_version)


def change_of(old: Manifest | None, new: Manifest) -> tuple[str, str]:
    """``(kind, changelog line)``: kind is "first", "metadata", "added" or "replaced"."""
    if old is None:
        return "first", FIRST
    before = {s.path: s.sha256 for s in old.shards}
    after = {s.path: s.sha256 for s in new.shards}
    if before == after:
        return "metadata", METADATA_ONLY
    if any(after.get(path) != digest for path, digest in before.items()):
        changed = sum(after.get(p) != d for p, d in before.items())
        return "replaced", (f"data replaced: {changed} of {len(before)} shard(s) changed or removed; "
                            f"{sum(new.splits.values()):,} samples (was {sum(old.splits.values()):,})")
    parts = []
    for split in new.splits:
        grown = {o.name: o.counts.get(split, 0) - _count(old, o.name, split) for o in new.owners}
        grown = {o: n for o, n in grown.items() if n}
        if grown:
            who = ", ".join(f"{o} +{n:,}" for o, n in sorted(grown.items()))
            parts.append(f"{split} +{sum(grown.values()):,} ({who})")
    joined = sorted({o.name for o in new.owners} - {o.name for o in old.owners})
    return "added", ("added " + "; ".join(parts) + (f"; new owner(s): {', '.join(joined)}" if joined else "")
                     + _runs_since(old, new))


def _runs_since(old: Manifest, new: Manifest) -> str:
    """Which runs of the dataset (manifest ``runs``: ``prepare --append`` / ``--retry-failed``) added the
    shards the previous release lacks, with the samples each wrote, so the changelog says how it grew."""
    before = {s.path for s in old.shards}
    since = [r for r in new.runs if set(r.get("shards", [])) - before]
    said = []
    for r in since:
        resolved = r.get("resolved", 0) if r["mode"] == "append" else 0
        again = f", {resolved:,} earlier rejection(s) among them" if resolved else ""
        said.append(f"prepare --{r['mode']} +{r['written']:,}{again}" if r["mode"] != "prepare"
                    else f"prepare +{r['written']:,}")
    return f"; by {'; '.join(said)}" if said else ""


def _count(m: Manifest, owner: str, split: str) -> int:
    return next((o.counts.get(split, 0) for o in m.owners if o.name == owner), 0)


def plan_version(target: str, store: Storage, version: str, manifest: Manifest
                 ) -> tuple[list[dict[str, Any]], str]:
    """``(changelog, this version's line)`` for releasing ``manifest`` as ``version`` into ``target``, or
    a UserError saying which version to choose."""
    try:
        wanted = parse_version(version)
    except ValueError as exc:
        raise UserError(f"--version: {exc}") from None
    if store.exists(join(target, version)):
        raise UserError(f"--version {version}: {join(target, version)} already exists; a release is never "
                        "overwritten: choose a greater version")
    versions = existing_versions(target, store)
    if not versions:
        return [_entry(version, FIRST)], FIRST
    last = versions[-1]
    if parse_version(last) >= wanted:
        raise UserError(f"--version {version}: {target} already holds {last}; a new release must be greater "
                        "than every version there")
    folder = join(target, last)
    try:
        where = join(folder, RELEASE_INFO_NAME)
        info = read_release_info(store.read_bytes(where), where)
        old = Manifest.load(folder, store)
    except (FileNotFoundError, ValueError) as exc:
        hint = ("" if store.exists(join(folder, CARD_NAME))
                else f" (no {CARD_NAME}: a release that did not finish?)")
        raise UserError(f"cannot read the previous release {folder}: {exc}{hint}; remove it or fix it first"
                        ) from None
    kind, line = change_of(old, manifest)
    major, minor, _ = parse_version(last)
    need = {"added": (major, minor + 1, 0), "replaced": (major + 1, 0, 0)}.get(kind)
    if need and wanted < need:
        raise UserError(f"--version {version}: since {last} the data was {kind} ({line}); that needs version "
                        f"{'.'.join(map(str, need))} or greater")
    return [*info["changelog"], _entry(version, line)], line


def _entry(version: str, line: str) -> dict[str, Any]:
    return {"version": version, "date": _dt.date.today().isoformat(), "change": line}
