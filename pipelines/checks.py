"""The checks a ``prepare`` run makes at its end, before it writes the manifest: every record read is
written or rejected, the reject rate, and that the shards hold what was counted before they were written
(for a resumed run: what the interrupted run counted, so another source or other options are refused)."""

from __future__ import annotations

from collections import defaultdict

from lcrypt.format import ERRORS_NAME, ShardEntry
from lcrypt.storage import join


class RejectRateExceeded(RuntimeError):
    """More records were rejected than ``--max-reject-rate`` allows."""


class ResumeMismatch(RuntimeError):
    """A resumed run met other records than the interrupted run counted (another source, other options)."""


def run_stats(read: dict, entries: list[ShardEntry], rejected: list[dict]) -> list[dict]:
    """Per (split, owner) of this run: records read, samples written, records rejected, shard bytes;
    a RuntimeError when read != written + rejected anywhere (a record lost)."""
    stats: dict = defaultdict(lambda: {"read": 0, "written": 0, "rejected": 0, "bytes": 0})
    for (split, owner), n in read.items():
        stats[(split, owner)]["read"] += n
    for e in entries:
        stats[(e.split, e.owner)]["written"] += e.count
        stats[(e.split, e.owner)]["bytes"] += e.bytes
    for r in rejected:
        stats[(r["split"], r["owner"])]["rejected"] += 1
    rows = [{"split": s, "owner": o, **v} for (s, o), v in sorted(stats.items())]
    for row in rows:
        if row["read"] != row["written"] + row["rejected"]:
            raise RuntimeError(f"accounting error for split {row['split']} owner {row['owner']}: read "
                               f"{row['read']} != written {row['written']} + rejected {row['rejected']}")
    return rows


def check_reject_rate(n_rejected: int, n_read: int, rate: float, out: str) -> None:
    """A new dataset: its errors.jsonl is written already and names each record."""
    if n_read and n_rejected / n_read > rate:
        raise RejectRateExceeded(
            f"{n_rejected} of {n_read} records rejected ({n_rejected / n_read:.1%}), over --max-reject-rate "
            f"{rate:.1%}; see {join(out, ERRORS_NAME)} for each record and reason, fix the source or use "
            "--size / raise --max-reject-rate")


def check_new_reject_rate(rejected: list[dict], n_read: int, rate: float) -> None:
    """Records added to a dataset: the dataset stays as it was, so the line counts the reasons."""
    if n_read and len(rejected) / n_read > rate:
        reasons: dict = defaultdict(int)
        for r in rejected:
            reasons[r["reason"].split(":")[0]] += 1
        by = ", ".join(f"{k} {n}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        first = rejected[0]
        raise RejectRateExceeded(
            f"{len(rejected)} of the {n_read} new records rejected ({len(rejected) / n_read:.1%}; {by}; e.g. "
            f"{first['source']}: {first['detail'][:80]}), over --max-reject-rate {rate:.1%}; the dataset is "
            "unchanged: fix the source, or raise --max-reject-rate to add the others and list these in "
            "errors.jsonl")


def check_counts(counted: dict, read_then: dict, entries: list[ShardEntry], read: dict) -> None:
    """The shards hold the samples counted per (split, owner) before any was written, and the records
    read are those counted then (a resumed run: by the interrupted run, in totals.json)."""
    held: dict = defaultdict(int)
    for e in entries:
        held[(e.split, e.owner)] += e.count
    for group in sorted(set(counted) | set(held)):
        if counted.get(group, 0) != held.get(group, 0):
            _mismatch(group, "samples", counted.get(group, 0), held.get(group, 0))
    for group in sorted(set(read_then) | set(read)):
        if read_then.get(group, 0) != read.get(group, 0):
            _mismatch(group, "records", read_then.get(group, 0), read.get(group, 0))


def _mismatch(group: tuple[str, str], what: str, then: int, now: int) -> None:
    raise ResumeMismatch(f"split {group[0]} owner {group[1]}: {then} {what} were counted before the shards "
                         f"were written, {now} now: the source or the options are not the interrupted "
                         "run's; run the same command again, or start over with --overwrite")
