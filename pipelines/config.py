"""What every worker of ``prepare`` needs to know about the run (shipped with the DoFns, so picklable)."""

from __future__ import annotations

import dataclasses
from typing import Any

from lcrypt.keys import Key

NO_OWNER = "-"
NO_SPLIT = "-"


@dataclasses.dataclass
class PrepareConfig:
    """Everything the workers need, picklable. Keys travel to the workers (as Beam ships any DoFn state)."""

    out: str
    name: str
    scheme: str
    scheme_params: dict[str, Any]
    keys: dict[str, Key]
    owner_globs: list[tuple[str, list[str]]]  # empty = one owner takes every record
    encoding: str
    jpeg_quality: int | None
    jpeg_subsampling: str
    shard_size: int
    max_shard_bytes: int
    size: tuple[int, int] | None
    expect: tuple[int, int] | None
    image_shape: list[int]
    max_reject_rate: float
    source_info: dict[str, Any]
    # declared by the source; None: gathered from the records' class names
    class_names: list[str] | None = None
    progress_dir: str | None = None
    chunk: int = 256
    read_parts: int = 1
    isolate_decoders: bool = True  # EncryptChunkFn runs in a subprocess: a decoder crash rejects, not kills
    owner_overlap: str = "error"  # a record several owners match: "error" rejects it, "first" takes the first
    size_note: str = ""  # how the image size was decided (for the summary)
    file_splits: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # Parquet/wds file -> split
    # -- adding to a dataset, resuming (pipelines/grow.py, pipelines/journal.py) --
    mode: str = "prepare"  # "prepare", "append" or "retry_failed"; a resume runs as the mode it resumes
    fixed_classes: bool = False  # class_names are the dataset's: a record of another class is rejected
    base_dir: str | None = None  # the dataset as it was before this run (its samples are skipped)
    base_owners: list[str] = dataclasses.field(default_factory=list)  # the dataset's owners (their keys)
    shard_base: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)  # first new shard index
    reuse_chunks: bool = False  # take a chunk's saved result (OUT/.fragments) instead of encrypting it again
    # a resume after counting: (split, owner) -> (first index, shard count, indices of the complete shards)
    resume_plan: dict[tuple[str, str], tuple[int, int, frozenset]] | None = None
    resume_rejected: frozenset = frozenset()  # ids of records the resumed run rejected (never skipped)
