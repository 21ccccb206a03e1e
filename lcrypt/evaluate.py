"""`lcrypt evaluate`: run every attack on every scheme on real images, and write an honest report.

    lcrypt evaluate --data ../shared/datasets --schemes all --out report/ --limit 100

For each dataset (an archive / folder, or every archive in a folder) and scheme it measures, on the
first ``--limit`` images of the evaluation split (test / val), encrypted under a fresh owner key:

* ciphertext-only (COA; the adversary holds the encrypted set, knows the algorithm, and knows the data
  distribution): FR and greedy FR (Chang & Case), the jigsaw solver (EtC), the inverse network
  (trained on the *train* split encrypted under the adversary's own keys, on 64×64 windows of larger images);
* known / chosen plaintext (KPA / CPA): key recovery from pairs of *train* images under the owner's key,
  scored by decrypting the unseen evaluation images;
* brute force: key-space bits;
* compressibility: JPEG q85/q80 (4:2:0) and PNG sizes of the whole dataset (or ``--compress-limit``
  images per split), plain vs scheme;

and writes ``report.md``, ``results.json`` and ``figures/<dataset>.png`` (plain | encrypted | best
reconstruction). Accuracy comes from docs/results.md when it has a row for the scheme.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lcrypt import Key, get_scheme, list_schemes
from lcrypt.attacks.brute_force import brute_force_attack
from lcrypt.attacks.fr import fr_attack, fr_greedy_attack, global_variants
from lcrypt.attacks.jigsaw import global_dihedral, jigsaw_attack, neighbour_accuracy, true_block_positions
from lcrypt.attacks.known_plaintext import chosen_plaintext_attack, known_plaintext_attack, pairs_needed
from lcrypt.cli import UserError
from lcrypt.metrics import adjacent_correlation, histogram_entropy, psnr, ssim
from lcrypt.table import format_table

EVAL_SPLITS = ("test", "val", "validation")
PUBLISHED = [
    "SIA-GAN (Madono et al. 2021), LPIPS of encrypted → attacked images: LE 0.30 → 0.09, EtC 0.21 → 0.21 "
    "(lower = closer to the plain image); we cannot compute LPIPS here (its network weights cannot be fetched).",
    "FR attack on PE, CIFAR-10: median SSIM ≈ 0.31 (MaungMaung & Kiya 2022, Fig. 8).",
    "EtC paper Table IV, CIFAR-10 (MB): JPEG q85 plain 68.7 / EtC 69.0 / ELE 134.5; q80 64.4 / 64.7 / 122.4; "
    "uncompressed 178.2.",
]


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
    from lcrypt.sources import load_arrays

    splits = [split] if split else list(EVAL_SPLITS)
    for s in splits:
        try:
            return load_arrays(str(spec), s, limit=limit)[0], s
        except ValueError as exc:
            if "has no records" not in str(exc):
                raise
    raise ValueError(f"{spec}: none of the splits {splits} exist; name one with --split")


def iter_chunks(spec: Path, limit: int | None, chunk: int = 1000):
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


def _squash(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def accuracy_from_results(path: Path) -> list[dict[str, str]]:
    """Accuracy rows of docs/results.md's tables: ``{"scheme", "text", "scope"}`` each.

    A table counts when a header cell says 'acc' or 'top-1'; a row's scheme is the cell that is a
    scheme name or starts with one ("etc (block 16)"). ``text`` is the figure with the row's model and
    the section it sits in; ``scope`` is the row's dataset cell, else the document's title, so that a
    CIFAR-10 accuracy is not quoted beside Imagenette's attacks (see :func:`accuracy_for`).
    """
    if not path.exists():
        return []
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    names = set(list_schemes())
    title = section = ""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            level, _, text = line.partition(" ")
            title, section = (text, "") if level == "#" else (title, text.split(" (")[0].strip())
        if not line.strip().startswith("|"):
            header = None
            continue
        cells = [c.strip().strip("`*") for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        acc = [i for i, h in enumerate(header) if "acc" in h or "top-1" in h]
        hit = [n for c in cells for n in [c.split(" (")[0].strip("`")] if n in names]
        if not (acc and hit and acc[0] < len(cells)) or not any(ch.isdigit() for ch in cells[acc[0]]):
            continue
        field = {h: cells[i] for i, h in enumerate(header) if i < len(cells)}
        ctx = [field[h] for h in ("model",) if field.get(h)] + ([section] if section else [])
        scope = next((field[h] for h in ("dataset", "data") if field.get(h)), title)
        figure = cells[acc[0]] + ("%" if "%" in header[acc[0]] and "%" not in cells[acc[0]] else "")
        rows.append({"scheme": hit[0], "text": figure + (f" ({', '.join(ctx)})" if ctx else ""),
                     "scope": scope})
    return rows


def accuracy_for(rows: list[dict[str, str]], dataset: str) -> dict[str, str]:
    """scheme -> "; "-joined accuracy texts of the rows whose scope names ``dataset`` (by its first word,
    e.g. "cifar10" of "cifar10-jpeg.tar.gz", matched ignoring case and punctuation)."""
    stem = _squash(dataset.replace("_", "-").split("-")[0].split(".")[0])
    out: dict[str, str] = {}
    for r in rows:
        if stem and stem in _squash(r["scope"]):
            out[r["scheme"]] = f"{out[r['scheme']]}; {r['text']}" if r["scheme"] in out else r["text"]
    return out


# -- one scheme on one dataset --------------------------------------------------------------------
def _score(recon: np.ndarray, plain: np.ndarray) -> dict[str, float]:
    s = ssim(recon, plain)
    return {"ssim": float(np.median(s)), "ssim_mean": float(s.mean()), "psnr": float(np.median(psnr(recon, plain)))}


def evaluate_scheme(name: str, plain: np.ndarray, known: np.ndarray, owner: Key, args) -> tuple[dict, dict]:
    """Returns (metrics, reconstructions for figures) for one scheme."""
    scheme = get_scheme(name)
    h, w = plain.shape[1:3]
    cipher = scheme.encrypt(plain, owner)
    res: dict[str, Any] = {"scheme": name, "key_space": brute_force_attack(scheme, h, w)}
    res["encrypted"] = _score(cipher, plain)
    res["encrypted"].update(corr_h=float(np.median(adjacent_correlation(cipher, "horizontal"))),
                            corr_v=float(np.median(adjacent_correlation(cipher, "vertical"))),
                            corr_d=float(np.median(adjacent_correlation(cipher, "diagonal"))),
                            entropy=float(np.median(histogram_entropy(cipher))))
    recons: dict[str, np.ndarray] = {}
    coa: dict[str, dict] = {}
    if name != "plain":
        coa["none (cipher as is)"], recons["none (cipher as is)"] = dict(res["encrypted"]), cipher
        shuffle = bool(scheme.params.get("color_shuffle", False))
        r = fr_attack(cipher, color_shuffle=shuffle)
        coa["fr"], recons["fr"] = _score(r, plain), r
        r = fr_greedy_attack(cipher, 1, color_shuffle=True)
        coa["fr-greedy"], recons["fr-greedy"] = _score(r, plain), r
        if name == "etc":
            n = min(len(plain), args.jigsaw_images)
            b = scheme.params["block_size"]
            r, grids = jigsaw_attack(cipher[:n], b, rotations=True, negpos=True, colors=True, restarts=args.jigsaw_restarts)
            origin = true_block_positions(scheme._transform(owner, plain.shape[1:]), b)
            best, nbr = [], []
            for im, g, p in zip(r, grids, plain[:n]):        # oracle picks the global symmetry (stated)
                cands = [(v, gg) for ii, gg in global_dihedral(im, g) for v in global_variants(np.ascontiguousarray(ii)[None])]
                scores = [ssim(v, p[None])[0] for v, _ in cands]
                k = int(np.argmax(scores))
                best.append(cands[k][0][0])
                nbr.append(neighbour_accuracy(cands[k][1], origin, w // b))
            best = np.stack(best)
            coa["jigsaw"] = {**_score(best, plain[:n]), "neighbours": float(np.mean(nbr)), "images": n}
            recons["jigsaw"] = np.concatenate([best, cipher[n:]])
        if args.itn_steps > 0 and len(known) >= 64:
            from lcrypt.attacks.inverse_network import inverse_network_attack

            adv = [Key.generate("adversary") for _ in range(4)]
            r = inverse_network_attack(known, lambda a, k: scheme.encrypt(a, adv[k]), cipher,
                                       steps=args.itn_steps, threads=args.threads)
            coa["inverse-network"], recons["inverse-network"] = _score(r, plain), r
    res["coa"] = coa
    kpa: dict[str, dict] = {}
    if name != "plain":
        k = pairs_needed(name, plain.shape[1:])
        pairs = known[:k]
        est = known_plaintext_attack(scheme, pairs, scheme.encrypt(pairs, owner))
        r = est.decrypt(cipher)
        t = scheme._transform(owner, plain.shape[1:])
        frac = est.fraction_correct(t.src, t.mask) if est.src is not None and hasattr(t, "src") else None
        kpa["known-plaintext"] = {**_score(r, plain), "pairs": k, "method": est.method, "key_fraction": frac,
                                  "exact": float(np.mean(np.all(r == plain, axis=(1, 2, 3))))}
        recons["known-plaintext"] = r
        if name in ("cpbe", "pe") and not scheme.params.get("color_shuffle"):
            est = chosen_plaintext_attack(scheme, lambda a: scheme.encrypt(a, owner), plain.shape[1:])
            r = est.decrypt(cipher)
            kpa["chosen-plaintext"] = {**_score(r, plain), "pairs": 1, "method": est.method,
                                       "exact": float(np.mean(np.all(r == plain, axis=(1, 2, 3))))}
    res["kpa"] = kpa
    return res, {"cipher": cipher, **recons}


def best_of(attacks: dict[str, dict]) -> tuple[str, float] | None:
    if not attacks:
        return None
    name = max(attacks, key=lambda a: attacks[a]["ssim"])
    return name, attacks[name]["ssim"]


def jigsaw_sweep(plain: np.ndarray, owner: Key, n: int, restarts: int) -> list[dict]:
    """The jigsaw solver against scrambling alone and full EtC, by image size (resized) and block size."""
    from PIL import Image

    from lcrypt.attacks.jigsaw import scramble_only

    rows = []
    full = plain.shape[1]
    sizes = sorted({s for s in (32, 64, 128, full) if s <= full})
    for size in sizes:
        imgs = plain[:n] if size == full else np.stack(
            [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in plain[:n]])
        for b in (8, 16, 32):
            if size % b or size // b < 2 or (size // b) ** 2 > 256:
                continue
            for variant in ("scrambling only", "full EtC"):
                if variant == "scrambling only":
                    m = scramble_only(owner, imgs.shape[1:], b)
                    recon, grids = jigsaw_attack(m.forward(imgs), b, restarts=restarts)
                    scores = ssim(recon, imgs)
                else:
                    if (size // b) ** 2 > 64 and size != full:
                        continue
                    etc = get_scheme("etc", block_size=b)
                    m = etc._transform(owner, imgs.shape[1:])
                    recon, grids = jigsaw_attack(etc.encrypt(imgs, owner), b, True, True, True, restarts=1)
                    best, gg = [], []
                    for im, g, p in zip(recon, grids, imgs):
                        cands = [(v, gr) for ii, gr in global_dihedral(im, g)
                                 for v in global_variants(np.ascontiguousarray(ii)[None])]
                        sc = [ssim(v, p[None])[0] for v, _ in cands]
                        k = int(np.argmax(sc))
                        best.append(sc[k])
                        gg.append(cands[k][1])
                    scores, grids = np.array(best), gg
                origin = true_block_positions(m, b)
                nbr = [neighbour_accuracy(g, origin, size // b) for g in grids]
                rows.append({"size": size, "block": b, "blocks": (size // b) ** 2, "variant": variant,
                             "images": len(imgs), "ssim": float(np.median(scores)),
                             "neighbours": float(np.median(nbr))})
    return rows


# -- compressibility --------------------------------------------------------------------------
def compress_dataset(spec: Path, schemes: list[str], owner: Key, limit: int | None, png_every: int) -> dict:
    from tqdm import tqdm

    from lcrypt.compressibility import file_sizes

    totals: dict[str, dict[str, float]] = {s: {} for s in schemes}
    count = 0
    for chunk in tqdm(iter_chunks(spec, limit), desc=f"compress {spec.name}", unit="chunk", leave=False):
        count += len(chunk)
        for s in schemes:
            enc = get_scheme(s).encrypt(chunk, owner)
            for k, v in file_sizes(enc, png_every=png_every).items():
                totals[s][k] = totals[s].get(k, 0.0) + v
    return {"images": count, "png_every": png_every, "sizes": totals}


# -- report ------------------------------------------------------------------------------------
def quantize_png(image):
    """A 256-colour palette version of a figure: a third of the bytes, indistinguishable at this size."""
    from PIL import Image

    return image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)


def save_figure(path: Path, plain: np.ndarray, per_scheme: dict[str, dict], results: dict[str, dict], n: int = 2) -> None:
    """Rows = schemes; for each of n images: plain | encrypted | best ciphertext-only reconstruction."""
    from PIL import Image, ImageDraw

    h, w = plain.shape[1:3]
    scale = 2 if h <= 64 else 64 / h                   # small tiles: the figures stay a few hundred KB
    cell = (int(w * scale), int(h * scale))
    label_w, pad = 120, 2
    rows = list(per_scheme)
    canvas = Image.new("RGB", (label_w + 3 * n * (cell[0] + pad), len(rows) * (cell[1] + pad) + 16), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        for j, t in enumerate(("plain", "encrypted", "best attack")):
            draw.text((label_w + (3 * i + j) * (cell[0] + pad), 2), t, fill="black")
    for r, s in enumerate(rows):
        y = 16 + r * (cell[1] + pad)
        draw.text((4, y + cell[1] // 2 - 6), s, fill="black")
        best = best_of(results[s]["coa"])
        rec = per_scheme[s].get(best[0]) if best else per_scheme[s]["cipher"]
        for i in range(n):
            for j, img in enumerate((plain[i], per_scheme[s]["cipher"][i], rec[i])):
                tile = Image.fromarray(img).resize(cell, Image.NEAREST if scale > 1 else Image.BILINEAR)
                canvas.paste(tile, (label_w + (3 * i + j) * (cell[0] + pad), y))
    quantize_png(canvas).save(path, optimize=True)


def _f(v: float | None, nd: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def write_report(out: Path, data: dict, command: str, accuracy: list[dict[str, str]]) -> str:
    lines = ["# Privacy evaluation of lcrypt's schemes", "",
             f"Produced by `{command}` ({data['date']}, {data['machine']}, {data['seconds']:.0f} s). Every figure "
             "below was measured by that run on real images unless marked as published.", "",
             "## Threat models (as in MaungMaung & Kiya 2022, Sec. III-C)", "",
             "* **Ciphertext-only (COA)**: the adversary (e.g. the cloud that stores the encrypted dataset and "
             "trains on it) holds every encrypted image and knows the algorithm and its parameters, not the key. "
             "It may know the data distribution and make look-alike images (we give it the dataset's *train* "
             "split; attacks are scored on the *test/val* split).",
             "* **Known plaintext (KPA)**: the adversary also holds a few plain–cipher pairs under the owner's key "
             "(a leaked original, a public photo that is also in the set). **Chosen plaintext (CPA)**: it can "
             "have an image of its choice encrypted (Ahmad & Shin: a blank image reveals CPBE's key).",
             "* **Brute force**: exhaustive search of the key space as each paper counts it; every lcrypt key is "
             "also bounded by its 256-bit owner secret.", "",
             "Scores are the median SSIM (Wang et al. 2004; our implementation equals scikit-image's) between "
             "each attack's reconstruction and the plain image: ~0 is noise, ~0.3 shows shapes, >0.8 is the "
             "image. LPIPS is **not** reported: its network weights cannot be fetched here.", ""]
    for ds in data["datasets"]:
        lines += [f"## {ds['name']} ({ds['shape'][0]}×{ds['shape'][1]}, {ds['attack_images']} {ds['split']} "
                  f"images attacked)", "",
                  "| scheme | key space (bits) | encrypted SSIM | best COA attack | COA SSIM | best KPA/CPA attack | "
                  "KPA SSIM | key recovered | JPEG q85 size vs plain | accuracy (docs/results.md) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        comp = ds.get("compress", {}).get("sizes", {})
        base = comp.get("plain", {}).get("jpeg_q85")
        acc = accuracy_for(accuracy, ds["name"])
        for r in ds["results"]:
            s = r["scheme"]
            coa, kpa = best_of(r["coa"]), best_of(r["kpa"])
            kp = r["kpa"].get("known-plaintext", {})
            ratio = comp.get(s, {}).get("jpeg_q85")
            key = f"{kp['key_fraction']:.1%} ({kp['pairs']} pair{'s' if kp['pairs'] > 1 else ''})" \
                if kp.get("key_fraction") is not None else (f"{kp['pairs']} pairs" if kp else "—")
            lines.append(
                f"| `{s}` | {r['key_space']['bits']:,.0f} | {_f(r['encrypted']['ssim'])} | "
                f"{coa[0] if coa else '—'} | {_f(coa[1]) if coa else '—'} | "
                f"{kpa[0] if kpa else '—'} | {_f(kpa[1]) if kpa else '—'} | {key} | "
                f"{_f(ratio / base) if ratio and base else '—'}× | {acc.get(s, 'not measured yet')} |")
        lines += ["", f"![plain, encrypted, best ciphertext-only reconstruction](figures/{ds['slug']}.png)", "",
                  "<details><summary>Every attack, and cipher-image statistics</summary>", "",
                  "| scheme | attack | threat | median SSIM | mean SSIM | median PSNR (dB) | notes |", "|---|---|---|---|---|---|---|"]
        for r in ds["results"]:
            e = r["encrypted"]
            lines.append(f"| `{r['scheme']}` | (encrypted image itself) | — | {_f(e['ssim'])} | {_f(e['ssim_mean'])} | "
                         f"{_f(e['psnr'], 1)} | adjacent corr. h/v/d {_f(e['corr_h'])}/{_f(e['corr_v'])}/{_f(e['corr_d'])}, "
                         f"entropy {_f(e['entropy'])} bits |")
            for model, group in (("COA", r["coa"]), ("KPA/CPA", r["kpa"])):
                for a, m in group.items():
                    note = []
                    if "pairs" in m:
                        note.append(f"{m['pairs']} pair(s), method {m['method']}, exact images {m['exact']:.0%}")
                    if m.get("key_fraction") is not None:
                        note.append(f"key recovered {m['key_fraction']:.1%}")
                    if "neighbours" in m:
                        note.append(f"{m['images']} images, correct neighbours {m['neighbours']:.0%}, global symmetry by oracle")
                    lines.append(f"| `{r['scheme']}` | {a} | {model} | {_f(m['ssim'])} | {_f(m['ssim_mean'])} | "
                                 f"{_f(m['psnr'], 1)} | {'; '.join(note)} |")
        lines += ["", "</details>", ""]
        if ds.get("jigsaw"):
            lines += ["### Jigsaw solver by image and block size (first images of the split; SSIM and correct-neighbour "
                      "rate are medians; full EtC's global symmetry chosen by oracle)", "",
                      "| image | block | blocks | steps undone | images | SSIM | correct neighbours |", "|---|---|---|---|---|---|---|"]
            for j in ds["jigsaw"]:
                lines.append(f"| {j['size']}×{j['size']} | {j['block']} | {j['blocks']} | {j['variant']} | {j['images']} | "
                             f"{_f(j['ssim'])} | {j['neighbours']:.0%} |")
            lines.append("")
        if comp:
            c = ds["compress"]
            lines += [f"### File sizes ({c['images']:,} images: JPEG 4:2:0 via simplejpeg; PNG via Pillow"
                      + (f", PNG measured on every {c['png_every']}th image and scaled" if c["png_every"] > 1 else "")
                      + ")", "", "| scheme | JPEG q85 (MB) | JPEG q80 (MB) | PNG (MB) | raw (MB) | q85 vs plain |",
                      "|---|---|---|---|---|---|"]
            for s, z in comp.items():
                lines.append(f"| `{s}` | {z['jpeg_q85'] / 1e6:.1f} | {z['jpeg_q80'] / 1e6:.1f} | {z['png'] / 1e6:.1f} | "
                             f"{z['raw'] / 1e6:.1f} | {z['jpeg_q85'] / base:.2f}× |")
            lines.append("")
    lines += ["## Published figures, for comparison (not measured by us)", ""] + [f"* {p}" for p in PUBLISHED] + [""]
    lines += data.get("notes", [])
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.rerender:                                    # no attacks: needs neither simplejpeg nor torch
        return rerender(Path(args.rerender), Path(args.out), args)
    missing = [m for m in ("simplejpeg", "torch") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"lcrypt evaluate: error: needs {' and '.join(missing)} (JPEG sizes, inverse network); install "
              "them with: pip install 'lcrypt[evaluate]'", file=sys.stderr)
        return 2
    out = Path(args.out)
    if not args.data:
        raise UserError("give --data (the datasets to attack), or --rerender RESULTS_JSON to rewrite a report")
    t0 = time.time()
    (out / "figures").mkdir(parents=True, exist_ok=True)
    names = list_schemes() if args.schemes == "all" else [s.strip() for s in args.schemes.split(",") if s.strip()]
    for n in names:
        get_scheme(n)                                    # unknown names fail here, with the list of known ones
    owner = Key.generate("evaluation-owner")             # fresh secret, never written anywhere
    data: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, no GPU",
                            "datasets": []}
    summary = []
    for spec in dataset_specs(args.data):
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", spec.name.split(".")[0])
        plain, split = load_split(spec, args.split, args.limit)
        known, _ = load_split(spec, "train", args.known) if args.known else (plain[:0], None)
        ds: dict[str, Any] = {"name": spec.name, "slug": slug, "split": split, "shape": list(plain.shape[1:]),
                              "attack_images": len(plain), "results": []}
        figs = {}
        for name in tqdm(names, desc=f"attacks {spec.name}", unit="scheme"):
            res, rec = evaluate_scheme(name, plain, known, owner, args)
            ds["results"].append(res)
            figs[name] = rec
            coa, kpa = best_of(res["coa"]), best_of(res["kpa"])
            summary.append([slug, name, res["key_space"]["bits"], res["encrypted"]["ssim"],
                            coa[0] if coa else "-", coa[1] if coa else float("nan"),
                            kpa[0] if kpa else "-", kpa[1] if kpa else float("nan")])
        save_figure(out / "figures" / f"{slug}.png", plain, figs, {r["scheme"]: r for r in ds["results"]})
        if args.jigsaw_sweep and "etc" in names:
            ds["jigsaw"] = jigsaw_sweep(plain, owner, args.jigsaw_images, args.jigsaw_restarts)
        if not args.no_compress:
            ds["compress"] = compress_dataset(spec, names if "plain" in names else ["plain"] + names, owner,
                                              args.compress_limit, args.png_every)
        data["datasets"].append(ds)
    data["seconds"] = time.time() - t0
    data["notes"] = [
        "## Notes on method", "",
        "* Greedy FR tries all 48 sign/colour-order candidates per pixel, against the left and upper neighbours, "
        "and is scored as is (no oracle picks its global sign/colour order).",
        "* The jigsaw solver runs on EtC only (the other block schemes do not move blocks, ELE's 4×4 blocks hold "
        "shuffled nibbles); full EtC means 96 variants per block; the one global symmetry it cannot fix "
        "(rotation/flip × colour order × sign) is chosen by an oracle, which flatters the attacker.",
        "* Key recovery: fraction of the effective key (source position and XOR mask of every byte or nibble) "
        "equal to the true one; SSIM is of decrypting the attacked images, which the attacker never saw in "
        "plain. catmap and ahmad-diffusion have no gather-and-XOR key to compare, so only their SSIM is given.",
        f"* The inverse network is a {4}-layer, 16-channel CNN trained for {args.itn_steps} steps on CPU on the "
        "train split under 4 adversary keys (on 64×64 windows, block-aligned, for images larger than that) "
        "and applied to the whole target images; a larger network trained longer on a GPU may do better.",
        "* LPIPS is not computed (weights unavailable offline); we do not substitute another score for it.", ""]
    data["command"] = args.command_line or "lcrypt evaluate " + " ".join(sys.argv[2:])
    (out / "results.json").write_text(json.dumps(data, indent=1, default=float))
    write_report(out, data, data["command"], accuracy_from_results(Path(args.results)))
    print(format_table(summary, ["dataset", "scheme", "key bits", "enc SSIM", "best COA", "SSIM", "best KPA", "SSIM"]))
    print(f"\nwrote {out / 'report.md'}, {out / 'results.json'} and {out / 'figures'} in {data['seconds']:.0f} s")
    return 0


def rerender(results_json: Path, out: Path, args: argparse.Namespace) -> int:
    """Rewrite report.md from an earlier run's results.json, quoting today's docs/results.md: the
    accuracy figures change more often than the attacks need re-running. Figures are copied along."""
    if not results_json.is_file():
        raise UserError(f"{results_json} does not exist; give the results.json an earlier `lcrypt evaluate` wrote")
    data = json.loads(results_json.read_text())
    command = data.get("command") or args.command_line
    if not command:
        raise UserError(f"{results_json} does not record the command that measured it; pass --command-line")
    out.mkdir(parents=True, exist_ok=True)
    figures = results_json.parent / "figures"
    if figures.is_dir() and figures.resolve() != (out / "figures").resolve():
        shutil.copytree(figures, out / "figures", dirs_exist_ok=True)
    write_report(out, data, command, accuracy_from_results(Path(args.results)))
    print(f"rewrote {out / 'report.md'} from {results_json} (measured {data['date']}) with {args.results}")
    return 0


def add_command(subparsers: Any) -> None:
    """Register `lcrypt evaluate` (declared in pyproject's lcrypt.commands entry points)."""
    p = subparsers.add_parser("evaluate", help="run attacks, privacy metrics and compressibility; write a report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", help="dataset archives/folders, or a folder of archives")
    p.add_argument("--schemes", default="all", help="'all' or a comma-separated list")
    p.add_argument("--out", default="report", help="output folder (report.md, results.json, figures/)")
    p.add_argument("--limit", type=int, default=100, help="evaluation images attacked per dataset")
    p.add_argument("--known", type=int, default=1000, help="train images the adversary holds (look-alikes, pairs)")
    p.add_argument("--split", default=None, help="evaluation split (default: test, then val)")
    p.add_argument("--jigsaw-images", type=int, default=10, help="images the (slow) full-EtC jigsaw solver attacks")
    p.add_argument("--jigsaw-restarts", type=int, default=2)
    p.add_argument("--jigsaw-sweep", action="store_true", help="also solve scrambling alone and full EtC by image/block size")
    p.add_argument("--itn-steps", type=int, default=150, help="inverse-network training steps (0 = skip)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for the inverse network")
    p.add_argument("--no-compress", action="store_true", help="skip the file-size measurements")
    p.add_argument("--compress-limit", type=int, default=None, help="images per split for file sizes (default all)")
    p.add_argument("--png-every", type=int, default=10, help="PNG-encode every k-th image and scale (PNG is slow)")
    p.add_argument("--results", default="docs/results.md", help="accuracy figures to quote")
    p.add_argument("--rerender", metavar="RESULTS_JSON", help="rewrite report.md from an earlier results.json "
                   "(no attacks run), quoting the current --results accuracy figures")
    p.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)
