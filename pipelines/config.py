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
