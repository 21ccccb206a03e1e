"""Beam side of the source readers: :mod:`lcrypt.sources` parses every kind; this file turns a source's
read units into chunks of records spread over the workers.

A :class:`~lcrypt.sources.base.Record` travels through the pipeline as it is: it is a NamedTuple, which
Beam encodes with its schema coder (RowCoder, registered here) instead of pickle. Each read unit's
records are cut into chunks of a fixed size for the vectorised encryption, in the unit's order: a chunk
is a function of the source alone, not of how the runner bundles the work (Beam's ``BatchElements``
batches across a bundle), so a resumed run meets the same chunks and takes their saved results
(pipelines/journal.py).
"""

from __future__ import annotations

import os
import socket
from typing import Iterator, List

import apache_beam as beam

from lcrypt.sources.base import Record, Source

CHUNK = 256  # records per batch: large enough to amortise Beam, small enough to spread over workers

beam.coders.registry.register_coder(Record, beam.coders.RowCoder)


@beam.typehints.with_output_types(List[Record])
class ReadUnitFn(beam.DoFn):
    """One read unit (a file list, an archive, a Parquet file, a shard) -> its records, in chunks of
    ``chunk``; with ``keep``, only the records whose source id it holds (``--retry-failed``)."""

    def __init__(self, source: Source, chunk: int, keep: frozenset | None = None):
        self.source, self.chunk, self.keep = source, chunk, keep

    def setup(self):
        """A worker that cannot see the source says so, instead of rejecting every file as unreadable."""
        from pipelines.beamstorage import pipeline_storage

        path = self.source.path
        if not pipeline_storage(path).exists(path):
            raise SourceUnreadable(f"{worker_name()} cannot read --source {path}: not found there; every "
                                   "worker must reach the source at the same path (a shared file system, "
                                   "or gs://...)")

    def process(self, unit) -> Iterator[list[Record]]:
        batch: list[Record] = []
        try:
            for r in self.source.read_unit(tuple(unit)):
                if self.keep is not None and r.source_id not in self.keep:
                    continue
                batch.append(r)
                if len(batch) == self.chunk:
                    yield batch
                    batch = []
        except OSError as exc:  # a worker elsewhere may not see what the driver saw
            raise SourceUnreadable(
                f"{worker_name()} cannot read --source {self.source.path} ({unit[0]}): "
                f"{exc.strerror or exc}; every worker must reach the source at the same path "
                "(a shared file system, or gs://...)") from None
        if batch:
            yield batch


def worker_name() -> str:
    """Which worker this is, for error messages: the dask worker's address, else the host and pid."""
    try:
        from distributed import get_worker

        return f"dask worker {get_worker().address}"
    except (ImportError, ValueError):
        return f"worker {socket.gethostname()} pid {os.getpid()}"


class SourceUnreadable(OSError):
    """A worker could not read the source; the message names the worker and the path."""

    def __reduce__(self):  # shipped back from workers by its message
        return SourceUnreadable, (str(self),)

    def __str__(self) -> str:
        return self.args[0]


class ReadRecords(beam.PTransform):
    """Chunks of the records of a whole source, spread over the workers.

    The units are reshuffled so the workers read different files, or different parts of one archive
    (see lcrypt.sources.base.FileSource), and the decode/encrypt step fuses with the read: reshuffling
    the raw records instead would ship every raw image through the runner once more.
    """

    def __init__(self, source: Source, chunk: int = CHUNK, parts: int = 1, units: list | None = None,
                 keep: frozenset | None = None):
        super().__init__()
        self.source, self.chunk, self.keep = source, chunk, keep
        self.units = units if units is not None else source.units(parts)

    def expand(self, pbegin):
        return (pbegin
                | "Units" >> beam.Create(self.units)
                | "SpreadUnits" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(ReadUnitFn(self.source, self.chunk, self.keep)))
