"""Top-1 accuracy for the report, read from the ``summary.json`` files that ``training.train`` writes
(``lcrypt evaluate --accuracy runs/*/summary.json``).

Rule: a summary is quoted in a scheme's row when its ``scheme`` and ``scheme_params`` are the row's (as
the scheme normalises them) and its ``dataset`` (the prepared dataset's name, ``lcrypt prepare --name``)
contains the evaluated dataset's first word, ignoring case and punctuation: ``cifar10`` of
``cifar10-jpeg.tar.gz`` matches a dataset named ``cifar10-etc``, so a CIFAR-10 accuracy is never quoted
beside Imagenette's attacks. A summary quoted nowhere, or without a test accuracy, is named on stderr
with the reason; a file that is not a training summary is refused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from lcrypt.errors import UserError
from lcrypt.schemes import get_scheme

REQUIRED = ("scheme", "dataset", "top1", "model")


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """One training run's result, as the report quotes it."""

    path: str
    scheme: str
    params: dict[str, Any] | None        # as the scheme normalises them; raw when it is not registered
    dataset: str
    top1: float | None
    text: str                            # "78.38% (convmixer-256/8 p1 k9, 4 epochs, cpu (2 cores))"


def _normalised(scheme: str, params: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        return dict(get_scheme(scheme, **(params or {})).params)
    except (TypeError, ValueError):
        return params


def _describe(d: dict[str, Any]) -> str:
    model = d["model"] if isinstance(d["model"], dict) else {"name": str(d["model"])}
    name = str(model.get("name", "?"))
    if model.get("width") and model.get("depth"):
        name += f"-{model['width']}/{model['depth']}"
    name += "".join(f" {p}{model[k]}" for k, p in (("patch", "p"), ("kernel", "k")) if model.get(k))
    if model.get("adapt") not in (None, "none"):
        name = f"{model['adapt']} adaptation + {name}"
    parts = [name] + ([f"{d['epochs']} epochs"] if d.get("epochs") else []) + (
        [str(d["device"])] if d.get("device") else [])
    return f"{d['top1']:.2f}% ({', '.join(parts)})" if d["top1"] is not None else ""


def read_summaries(paths: list[str]) -> list[Accuracy]:
    """Every summary given (a run folder stands for its summary.json), in the order given."""
    out = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            path = path / "summary.json"
        if not path.is_file():
            raise UserError(f"--accuracy {given}: no such file; give the summary.json files that training "
                            "wrote (e.g. --accuracy runs/*/summary.json)")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"--accuracy {path}: not JSON ({exc}); give a training summary.json") from None
        missing = [k for k in REQUIRED if k not in d] if isinstance(d, dict) else list(REQUIRED)
        if missing or not (d["top1"] is None or isinstance(d["top1"], (int, float))):
            raise UserError(f"--accuracy {path}: not a training summary (missing or bad "
                            f"{', '.join(missing) or 'top1'}); give the summary.json training.train writes")
        out.append(Accuracy(str(path), str(d["scheme"]), _normalised(d["scheme"], d.get("scheme_params")),
                            str(d["dataset"]), d["top1"], _describe(d)))
    return out


def _squash(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _covers(a: Accuracy, dataset: str, row: dict[str, Any]) -> bool:
    stem = _squash(dataset.replace("_", "-").split("-")[0].split(".")[0])
    if not (stem and stem in _squash(a.dataset) and a.scheme == row["scheme"]):
        return False
    params = row.get("params")                        # results.json before it recorded them: the defaults
    params = _normalised(row["scheme"], None) if params is None else params
    return a.params is None or params is None or a.params == params


def accuracy_text(summaries: list[Accuracy] | None, dataset: str, row: dict[str, Any]) -> str:
    """The report's accuracy cell for one scheme's row of one dataset."""
    if summaries is None:
        return "—"
    texts = [a.text for a in summaries if a.top1 is not None and _covers(a, dataset, row)]
    return "; ".join(texts) or "not measured yet"


def unquoted(summaries: list[Accuracy], data: dict[str, Any]) -> list[str]:
    """One line per summary the report does not quote, with the reason."""
    lines = []
    for a in summaries:
        if a.top1 is None:
            lines.append(f"{a.path}: no test accuracy (trained without a test split); not quoted")
        elif not any(_covers(a, ds["name"], r) for ds in data["datasets"] for r in ds["results"]):
            lines.append(f"{a.path}: scheme {a.scheme} {a.params or {}} on dataset {a.dataset!r} matches no "
                         "evaluated scheme and dataset (the dataset name must contain the evaluated "
                         "dataset's first word); not quoted")
    return lines
