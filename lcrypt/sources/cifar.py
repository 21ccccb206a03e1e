"""``cifar``: the CIFAR-10 / CIFAR-100 python archives (``cifar-10-python.tar.gz``), read with a restricted
unpickler that only rebuilds dicts, lists, strings and numpy arrays. Records carry their label and the
class names the archive declares; splits are train (``data_batch*``, ``train``) and test."""

from __future__ import annotations

import dataclasses
import io
import pickle
import posixpath
from typing import IO, Iterator

import numpy as np

from lcrypt.sources.base import FileSource, Probe, Record, label_fields

META_NAMES = ("batches.meta", "meta")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds only what the CIFAR batches hold (dicts, lists, bytes, str, numbers, numpy arrays)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}  # bytes under protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}: not a CIFAR archive "
                                         "(only numpy arrays are rebuilt)")
        return super().find_class(module, name)


def _load_batch(data: bytes) -> dict:
    d = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _names(meta: dict) -> list[str]:
    key = "label_names" if "label_names" in meta else "fine_label_names"
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


@dataclasses.dataclass
class CifarSource(FileSource):
    kind = "cifar"

    @classmethod
    def detect(cls, probe: Probe) -> bool:
        return probe.name.startswith(("cifar-10-python", "cifar-100-python"))

    def iter_file(self, rel: str) -> Iterator[Record]:
        with self.store.open(self.path) as f:
            yield from iter_cifar(f)

    def class_names(self) -> list[str] | None:
        """The names in the archive's meta batch (streams the archive up to it)."""
        from lcrypt.tarstream import iter_members

        with self.store.open(self.path) as f:
            for name, data in iter_members(f):
                if posixpath.basename(name) in META_NAMES:
                    return _names(_load_batch(data))
        return None


def iter_cifar(fileobj: IO[bytes]) -> Iterator[Record]:
    """Records of ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (labels + declared names)."""
    from lcrypt.tarstream import iter_members

    batches: dict[str, bytes] = {}
    meta = None
    for name, data in iter_members(fileobj):
        base = posixpath.basename(name)
        if base.startswith(("data_batch", "test_batch")) or base in ("train", "test"):
            batches[base] = data
        elif base in META_NAMES:
            meta = _load_batch(data)
    if meta is None or not batches:
        raise ValueError("not a CIFAR python archive: no batches.meta/meta or no data batches inside")
    names = _names(meta)
    for base in sorted(batches):
        d = _load_batch(batches.pop(base))
        labels = d.get("labels", d.get("fine_labels"))
        pixels = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        split = "test" if base.startswith("test") else "train"
        for i, (px, lab) in enumerate(zip(pixels, labels)):
            name, lab, problem = label_fields(int(lab), names)
            yield Record(source_id=f"{base}/{i}", split=split, class_name=name, label=lab,
                         data=b"" if problem else np.ascontiguousarray(px).tobytes(), ext="rgb8:32x32",
                         layout_error=problem)
