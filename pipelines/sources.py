"""Beam side of the source readers: lcrypt.datasets parses every format; this file only lists and reads
through Beam's file systems (local, gs://, s3://, ...) and turns read units into record chunks.

A record travels as a plain tuple (see :data:`FIELDS`) so Beam's fast coder handles it without pickle,
and Beam's ``BatchElements`` groups the records into chunks of a fixed size for the vectorised
encryption (measured on CIFAR-10: as fast as reading straight into chunks, docs/benchmarks.md).
"""

from __future__ import annotations

import os
from typing import IO, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from lcrypt import storage
from lcrypt.datasets import Record, Source
from pipelines import outdir

FIELDS = ("source_id", "split", "class_name", "data", "ext", "label", "group", "layout_error")
CHUNK = 256  # records per batch: large enough to amortise Beam, small enough to spread over workers


class BeamFS:
    """The file-system interface lcrypt.datasets.Source expects, on apache_beam.io.filesystems (the same
    joining as the --out folder: pipelines/outdir.py)."""

    def open(self, path: str) -> IO[bytes]:
        return FileSystems.open(path, compression_type="uncompressed")

    def isdir(self, path: str) -> bool:
        if not outdir.is_remote(path):
            return os.path.isdir(path)
        # an object store (gs://, s3://) has no folders: a "folder" is a prefix some object has; "**"
        # because "*" stops at "/", and a dataset's files sit below its split and class folders
        return bool(FileSystems.match([path.rstrip("/") + "/**"], limits=[1])[0].metadata_list) and \
            not FileSystems.exists(path)

    def exists(self, path: str) -> bool:
        return FileSystems.exists(path) or self.isdir(path)

    @staticmethod
    def walk(path: str) -> list[str]:
        """A source's files: an object store's listing (as the --out folder's), or a local tree with its
        symlinked folders followed (lcrypt.storage.walk), as the library reads sources."""
        return outdir.list_files(path) if outdir.is_remote(path) else storage.walk(path, follow_links=True)

    join = staticmethod(outdir.join)


def open_source(spec: str, **options) -> Source:
    """lcrypt.datasets.Source for ``spec`` on Beam's file systems."""
    return Source.parse(spec, fs=BeamFS(), **options)


def record_tuple(r: Record) -> tuple:
    return (r.source_id, r.split, r.class_name, r.data, r.ext, r.label, r.group, r.layout_error)


def tuple_record(t: tuple) -> Record:
    return Record(*t)


class ReadUnitFn(beam.DoFn):
    """One read unit (a file list, an archive, a Parquet file, a shard) -> its record tuples."""

    def __init__(self, source: Source):
        self.source = source

    def process(self, unit) -> Iterator[tuple]:
        for r in self.source.read_unit(tuple(unit)):
            yield record_tuple(r)


class ReadRecords(beam.PTransform):
    """Chunks of record tuples of a whole source, spread over the workers.

    The units are reshuffled so the workers read different files, or different parts of one archive
    (see lcrypt.datasets.Source.units), and the decode/encrypt step fuses with the read: measured on
    CIFAR-10, reshuffling the raw records instead cost more than it gained on two workers.
    """

    def __init__(self, source: Source, chunk: int = CHUNK, parts: int = 1):
        super().__init__()
        self.source, self.chunk, self.parts = source, chunk, parts

    def expand(self, pbegin):
        return (pbegin
                | "Units" >> beam.Create(self.source.units(self.parts))
                | "SpreadUnits" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(ReadUnitFn(self.source))
                | "Chunks" >> beam.BatchElements(min_batch_size=self.chunk, max_batch_size=self.chunk))
