"""Measuring for `lcrypt evaluate`: the images, every attack that applies to a scheme, the jigsaw sweep
and file sizes. Nothing here knows a scheme by name: the attacks decide from its declared properties
(:func:`lcrypt.attacks.attacks_for`), and each outcome is scored by what it carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lcrypt import Key
from lcrypt.attacks import Attack, Budget, Outcome, Target, attacks_for
from lcrypt.attacks.base import changes_the_image
from lcrypt.attacks.jigsaw import (JIGSAW, jigsaw_attack, neighbour_accuracy, scramble_only,
                                   true_block_positions)
from lcrypt.metrics import adjacent_correlation, histogram_entropy, psnr, ssim
from lcrypt.schemes import Scheme, get_scheme

EVAL_SPLITS = ("test", "val", "validation")
GROUPS = {"ciphertext-only": "coa", "known-plaintext": "kpa", "chosen-plaintext": "kpa",
          "public-model": "model"}
"""Where each threat model's results go in results.json (brute force gives ``key_space``)."""
BASELINE = "none (cipher as is)"


# -- data ---------------------------------------------------------------------------------------
def dataset_specs(paths: list[str]) -> list[Path]:
    """Every dataset named: an archive or ImageFolder tree, or each archive inside a folder of archives."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not any(p.glob("*/*/*")) and any(p.glob("*.tar*")):
            out += sorted(p.glob("*.tar*"))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"--data {p}: no such file or folder")
    return out


def load_split(spec: Path, split: str | None, limit: int | None) -> tuple[np.ndarray, str]:
    """The first ``limit`` decoded images of ``split`` (default: the first of test, val, validation)."""
    from lcrypt.sources import load_arrays

    splits = [split] if split else list(EVAL_SPLITS)
    for s in splits:
        try:
            return load_arrays(str(spec), s, limit=limit)[0], s
        except ValueError as exc:
            if "has no records" not in str(exc):
                raise
    raise ValueError(f"{spec}: none of the splits {splits} exist; name one with --split")


def iter_chunks(spec: Path, limit: int | None, chunk: int = 1000) -> Iterator[np.ndarray]:
    """Decoded images of every split of a dataset in chunks (bounded memory), up to ``limit`` per split."""
    from lcrypt.sources import iter_records
    from lcrypt.sources.base import decode_record

    per_split: dict[str, int] = {}
    buf = []
    for r in iter_records(str(spec)):
        if limit is not None and per_split.get(r.split, 0) >= limit:
            continue
        per_split[r.split] = per_split.get(r.split, 0) + 1
        buf.append(decode_record(r))
        if len(buf) == chunk:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


# -- scoring ------------------------------------------------------------------------------------
def score(recon: np.ndarray, plain: np.ndarray) -> dict[str, float]:
    """Median and mean SSIM and median PSNR of reconstructions against the plain images."""
    s = ssim(recon, plain)
    return {"ssim": float(np.median(s)), "ssim_mean": float(s.mean()),
            "psnr": float(np.median(psnr(recon, plain)))}


def cipher_statistics(cipher: np.ndarray, plain: np.ndarray) -> dict[str, float]:
    """The ciphertext itself, scored, with its adjacent-pixel correlations and histogram entropy."""
    out = score(cipher, plain)
    for d in ("horizontal", "vertical", "diagonal"):
        out[f"corr_{d[0]}"] = float(np.median(adjacent_correlation(cipher, d)))
    out["entropy"] = float(np.median(histogram_entropy(cipher)))
    return out


def resolve(out: Outcome, plain: np.ndarray) -> tuple[np.ndarray, Any, np.ndarray]:
    """``(reconstructions, grids, SSIM per image)`` of an outcome; where the outcome is defined only up
    to a global symmetry, the oracle picks, per image, the equivalent closest to the plain image."""
    if out.equivalents is None:
        return out.reconstruction, out.grids, ssim(out.reconstruction, plain)
    best, grids, scores = [], [], []
    for im, g, p in zip(out.reconstruction, out.grids, plain):
        cands = out.equivalents(im, g)
        s = [ssim(v[None], p[None])[0] for v, _ in cands]
        k = int(np.argmax(s))
        best.append(cands[k][0])
        grids.append(cands[k][1])
        scores.append(s[k])
    return np.stack(best), grids, np.array(scores)


def _neighbours(grids: Any, truth: Any, block: int, width: int) -> list[float]:
    origin = true_block_positions(truth, block)
    return [neighbour_accuracy(g, origin, width // block) for g in grids]


def _measure(attack: Attack, out: Outcome, plain: np.ndarray, truth: Any) -> tuple[dict, np.ndarray]:
    n = len(out.reconstruction)
    recon, grids, _ = resolve(out, plain[:n])
    m: dict[str, Any] = {**score(recon, plain[:n]), **out.notes}
    if grids is not None and hasattr(truth, "src"):
        m["neighbours"] = float(np.mean(_neighbours(grids, truth, out.block, plain.shape[2])))
    if out.key is not None:
        m["key_fraction"] = (out.key.fraction_correct(truth.src, truth.mask)
                             if out.key.src is not None and hasattr(truth, "src") else None)
    if attack.threat_model != "ciphertext-only":
        m["exact"] = float(np.mean(np.all(recon == plain[:n], axis=(1, 2, 3))))
    return m, recon


def measure_scheme(scheme: Scheme, plain: np.ndarray, known: np.ndarray, owner: Key,
                   budget: Budget) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every attack that applies to ``scheme`` on ``plain`` encrypted under ``owner``: (results.json
    entry, reconstructions by attack for the figure, plus ``"cipher"``)."""
    info = scheme.info
    cipher = scheme.encrypt(plain, owner)
    truth = scheme._transform(owner, plain.shape[1:])       # the evaluator's, to score; never the attacker's
    target = Target(scheme, cipher, known, lambda a: scheme.encrypt(a, owner), budget,
                    owner_convert=owner_converter(scheme, truth, plain.shape[1:]))
    res: dict[str, Any] = {"scheme": info.name, "params": dict(scheme.params)}
    res["encrypted"] = cipher_statistics(cipher, plain)
    groups: dict[str, dict] = {"coa": {}, "kpa": {}, "model": {}}
    recons = {"cipher": cipher}
    if changes_the_image(info):
        groups["coa"][BASELINE], recons[BASELINE] = dict(res["encrypted"]), cipher
    skipped = []
    for attack in attacks_for(info):
        out = attack.run(target)
        if out.skipped:
            skipped.append({"attack": attack.name, "threat": attack.threat_model, "reason": out.skipped})
        elif attack.threat_model == "brute-force":
            res["key_space"] = out.notes
        else:
            m, recon = _measure(attack, out, plain, truth)
            groups[GROUPS[attack.threat_model]][attack.name] = m
            recons[attack.name] = recon if len(recon) == len(cipher) else np.concatenate(
                [recon, cipher[len(recon):]])
    res.update({g: v for g, v in groups.items() if v or g != "model"})
    if skipped:
        res["skipped"] = skipped
    return res, recons


def owner_converter(scheme: Scheme, truth: Any, shape: tuple[int, ...]):
    """The owner converting a ViT's first layers with its key (lcrypt.folding), or None when the
    scheme's key does not fold into a model."""
    from lcrypt.folding import NotFoldable, block_key, fold_patch_embedding, fold_positions

    b = scheme.info.block_size
    if not b or not hasattr(truth, "src") or getattr(truth, "nibbles", False):
        return None
    try:
        bk = block_key(truth.src, truth.mask, tuple(shape), b)
    except NotFoldable:
        return None

    def convert(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        patch, bias = fold_patch_embedding(weights["patch"], weights["bias"], bk)
        return {"patch": patch, "bias": bias, "pos": fold_positions(weights["pos"], bk)}
    return convert


# -- jigsaw solver by image and block size ---------------------------------------------------------
def _resized(plain: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if size == plain.shape[1]:
        return plain
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in plain])


def jigsaw_sweep(schemes: list[Scheme], plain: np.ndarray, owner: Key, n: int, restarts: int) -> list[dict]:
    """The jigsaw solver against block scrambling alone and against each of ``schemes`` it applies to
    that has a block size, by image size (resized) and block size. Empty when none of them is a puzzle."""
    puzzles = [s for s in schemes if JIGSAW.applies_to(s.info) and "block_size" in s.params]
    if not puzzles:
        return []
    rows = []
    full = plain.shape[1]

    def row(size: int, b: int, variant: str, imgs: np.ndarray, scores: np.ndarray, grids: Any,
            truth: Any) -> dict:
        return {"size": size, "block": b, "blocks": (size // b) ** 2, "variant": variant, "images": len(imgs),
                "ssim": float(np.median(scores)),
                "neighbours": float(np.median(_neighbours(grids, truth, b, size)))}

    for size in sorted({s for s in (32, 64, 128, full) if s <= full}):
        imgs = _resized(plain[:n], size)
        for b in (8, 16, 32):
            if size % b or size // b < 2 or (size // b) ** 2 > 256:
                continue
            m = scramble_only(owner, imgs.shape[1:], b)
            recon, grids = jigsaw_attack(m.forward(imgs), b, restarts=restarts)
            rows.append(row(size, b, "scrambling only", imgs, ssim(recon, imgs), grids, m))
            if (size // b) ** 2 > 64 and size != full:
                continue
            for s in puzzles:
                variant = get_scheme(s.name, **{**s.params, "block_size": b})
                target = Target(variant, variant.encrypt(imgs, owner), imgs[:0], lambda a: a,
                                Budget(jigsaw_images=len(imgs), jigsaw_restarts=1))
                _, grids, scores = resolve(JIGSAW.run(target), imgs)
                rows.append(row(size, b, f"full {s.name}", imgs, scores, grids,
                                variant._transform(owner, imgs.shape[1:])))
    return rows


# -- compressibility ------------------------------------------------------------------------------
def compress_dataset(spec: Path, schemes: list[Scheme], owner: Key, limit: int | None,
                     png_every: int) -> dict[str, Any]:
    """JPEG q85/q80 and PNG bytes of every split's images (up to ``limit`` per split) under each scheme."""
    from tqdm import tqdm

    from lcrypt.compressibility import file_sizes

    totals: dict[str, dict[str, float]] = {s.name: {} for s in schemes}
    count = 0
    for chunk in tqdm(iter_chunks(spec, limit), desc=f"compress {spec.name}", unit="chunk", leave=False):
        count += len(chunk)
        for s in schemes:
            for k, v in file_sizes(s.encrypt(chunk, owner), png_every=png_every).items():
                totals[s.name][k] = totals[s.name].get(k, 0.0) + v
    return {"images": count, "png_every": png_every, "sizes": totals}
