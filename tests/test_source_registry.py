"""A new source kind is one module and its tests: a kind registered from outside lcrypt.sources is
detected, read and prepared like the built-in ones, and its records travel through Beam unpickled."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

import pytest

from lcrypt import Key
from lcrypt.format import Manifest
from lcrypt.sources import KINDS, detect_kind, get_source_kind, open_source, register
from lcrypt.sources.base import FileSource, Probe, Record
from lcrypt.verify import verify
from tests.test_datasets import make_images, png_bytes


@dataclasses.dataclass
class JsonLinesSource(FileSource):
    """A toy kind: a ``.toy.jsonl`` file, one image per line: ``{"split", "class", "png": hex}``."""

    kind = "toy-jsonl"

    @classmethod
    def detect(cls, probe: Probe) -> bool:
        return probe.name.endswith(".toy.jsonl")

    def iter_file(self, rel: str) -> Iterator[Record]:
        for i, line in enumerate(self.store.read_bytes(self.path).decode().splitlines()):
            d = json.loads(line)
            yield Record(f"line{i}", d["split"], d["class"], bytes.fromhex(d["png"]))


@pytest.fixture
def toy_kind():
    register(JsonLinesSource)
    yield JsonLinesSource
    del KINDS[JsonLinesSource.kind]


def make_toy(path: Path) -> dict[str, int]:
    """7 train + 3 test images of classes "b" and "a", and one line that is no image; counts per split."""
    lines = [{"split": "train" if i < 7 else "test", "class": "ab"[i % 2], "png": png_bytes(img).hex()}
             for i, img in enumerate(make_images(10, seed=7))]
    lines.append({"split": "train", "class": "a", "png": b"not a png".hex()})
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    return {"train": 7, "test": 3}


def test_a_kind_registered_from_outside_is_detected_and_prepared(toy_kind, tmp_path):
    from pipelines.prepare import run

    src = tmp_path / "images.toy.jsonl"
    counts = make_toy(src)
    del KINDS[toy_kind.kind]
    with pytest.raises(ValueError, match="cannot tell the format"):  # unknown before it is registered
        detect_kind(str(src))
    register(toy_kind)
    with pytest.raises(ValueError, match="already registered"):
        register(toy_kind)
    assert detect_kind(str(src)) == "toy-jsonl" and get_source_kind("toy-jsonl") is toy_kind
    assert isinstance(open_source(f"toy-jsonl:{src}"), toy_kind)
    assert [r.source_id for r in open_source(str(src))] == [f"line{i}" for i in range(11)]

    Key.generate("solo").save(tmp_path / "solo.key")
    out = tmp_path / "out"
    assert run(["--source", str(src), "--scheme", "etc", "--param", "block_size=8", "--keys",
                str(tmp_path / "solo.key"), "--out", str(out), "--read-parts", "3",
                "--max-reject-rate", "0.5", "--quiet"]) == 0
    m = Manifest.load(out)
    assert m.splits == counts and m.class_names == ["a", "b"] and m.source == {"kind": "toy-jsonl"}
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["source"], e["reason"]) for e in errors] == [("line10", "not_an_image")]
    assert verify(out)[0] == []


def test_records_travel_through_beam_with_the_schema_coder(tmp_path):
    """Beam's default coder would pickle a NamedTuple; the registered RowCoder encodes its fields."""
    import apache_beam as beam

    from pipelines.sources import ReadRecords

    (tmp_path / "src" / "cat").mkdir(parents=True)
    for i, img in enumerate(make_images(3)):
        (tmp_path / "src" / "cat" / f"{i}.png").write_bytes(png_bytes(img))
    chunks = beam.Pipeline() | ReadRecords(open_source(str(tmp_path / "src")), chunk=2)
    coder = beam.coders.registry.get_coder(chunks.element_type)
    assert isinstance(coder, beam.coders.ListCoder) and isinstance(coder.value_coder(), beam.coders.RowCoder)
    chunk = list(open_source(str(tmp_path / "src"))) + [Record("x#1", "train", "", b"", group="site-A",
                                                               layout_error="label: null")]
    encoded = coder.encode(chunk)
    assert b"Record" not in encoded and coder.decode(encoded) == chunk
    assert all(type(r) is Record for r in coder.decode(encoded))
