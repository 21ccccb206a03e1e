"""Rendering for `lcrypt evaluate`: report.md from results.json (and the accuracy summaries), and the
figure of plain | encrypted | best reconstruction. Rendering reads only what measuring recorded, so
``--rerender`` rewrites a report without re-running any attack."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lcrypt.evaluate.accuracy import Accuracy, accuracy_text

PUBLISHED = [
    "SIA-GAN (Madono et al. 2021), LPIPS of encrypted → attacked images: LE 0.30 → 0.09, EtC 0.21 → 0.21 "
    "(lower = closer to the plain image); we cannot compute LPIPS here (its network weights cannot be "
    "fetched).",
    "FR attack on PE, CIFAR-10: median SSIM ≈ 0.31 (MaungMaung & Kiya 2022, Fig. 8).",
    "EtC paper Table IV, CIFAR-10 (MB): JPEG q85 plain 68.7 / EtC 69.0 / ELE 134.5; q80 64.4 / 64.7 / "
    "122.4; uncompressed 178.2.",
]
THREAT_LABELS = {"coa": "COA", "kpa": "KPA/CPA", "model": "model", "ciphertext-only": "COA",
                 "known-plaintext": "KPA/CPA", "chosen-plaintext": "KPA/CPA", "public-model": "model"}


def best_of(attacks: dict[str, dict]) -> tuple[str, float] | None:
    """The attack with the highest median SSIM, and that SSIM; None when none ran."""
    if not attacks:
        return None
    name = max(attacks, key=lambda a: attacks[a]["ssim"])
    return name, attacks[name]["ssim"]


def method_notes(jigsaw_schemes: list[str], itn_steps: int) -> list[str]:
    """The "Notes on method" section, written when measuring (kept in results.json)."""
    puzzles = ", ".join(f"`{s}`" for s in jigsaw_schemes) or "none of the evaluated schemes"
    return [
        "## Notes on method", "",
        "* Each attack runs on the schemes whose declared properties it applies to (lcrypt.attacks: steps, "
        "key form, block size); an attack that applies but could not run under this run's settings is "
        "listed with the reason.",
        "* Greedy FR tries all 48 sign/colour-order candidates per pixel, against the left and upper "
        "neighbours, and is scored as is (no oracle picks its global sign/colour order).",
        f"* The jigsaw solver runs on the schemes that move whole blocks and change them only by "
        f"rotation/flip, sign and colour order (here {puzzles}): a scheme that keeps blocks in place, or "
        "also shuffles what is inside them (ELE's nibbles), is no puzzle. With all three variants "
        "(full EtC) there are 96 per block; the one global symmetry the solver cannot fix (rotation/flip "
        "× colour order × sign) is chosen by an oracle, which flatters the attacker.",
        "* Key recovery: fraction of the effective key (source position and XOR mask of every byte or "
        "nibble) equal to the true one; SSIM is of decrypting the attacked images, which the attacker "
        "never saw in plain. Schemes whose key is not a gather-and-XOR (chained ciphers: catmap, "
        "ahmad-diffusion) have no such key to compare, so only their SSIM is given.",
        f"* The inverse network is a 4-layer, 16-channel CNN trained for {itn_steps} steps on CPU on the "
        "train split under 4 adversary keys (on 64×64 windows, block-aligned, for images larger than that) "
        "and applied to the whole target images; a larger network trained longer on a GPU may do better.",
        "* LPIPS is not computed (weights unavailable offline); we do not substitute another score for it.",
        ""]


def quantize_png(image):
    """A 256-colour palette version of a figure: a third of the bytes, indistinguishable at this size."""
    from PIL import Image

    return image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)


def save_figure(path: Path, plain: np.ndarray, per_scheme: dict[str, dict], results: dict[str, dict],
                n: int = 2) -> None:
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


def _head(data: dict[str, Any], command: str) -> list[str]:
    return [
        "# Privacy evaluation of lcrypt's schemes", "",
        f"Produced by `{command}` ({data['date']}, {data['machine']}, {data['seconds']:.0f} s). Every figure "
        "below was measured by that run on real images unless marked as published.", "",
        "## Threat models (as in MaungMaung & Kiya 2022, Sec. III-C)", "",
        "* **Ciphertext-only (COA)**: the adversary (e.g. the cloud that stores the encrypted dataset and "
        "trains on it) holds every encrypted image and knows the algorithm and its parameters, not the key. "
        "It may know the data distribution and make look-alike images (we give it the dataset's *train* "
        "split; attacks are scored on the *test/val* split).",
        "* **Known plaintext (KPA)**: the adversary also holds a few plain–cipher pairs under the owner's "
        "key (a leaked original, a public photo that is also in the set). **Chosen plaintext (CPA)**: it can "
        "have an image of its choice encrypted (Ahmad & Shin: a blank image reveals CPBE's key).",
        "* **Brute force**: exhaustive search of the key space as each paper counts it; every lcrypt key is "
        "also bounded by its 256-bit owner secret.", "",
        "Scores are the median SSIM (Wang et al. 2004; our implementation equals scikit-image's) between "
        "each attack's reconstruction and the plain image: ~0 is noise, ~0.3 shows shapes, >0.8 is the "
        "image. LPIPS is **not** reported: its network weights cannot be fetched here.", ""]


def _summary_rows(ds: dict[str, Any], accuracy: list[Accuracy] | None) -> list[str]:
    comp = ds.get("compress", {}).get("sizes", {})
    base = comp.get("plain", {}).get("jpeg_q85")
    lines = []
    for r in ds["results"]:
        s = r["scheme"]
        coa, kpa = best_of(r["coa"]), best_of(r["kpa"])
        kp = r["kpa"].get("known-plaintext", {})
        ratio = comp.get(s, {}).get("jpeg_q85")
        key = f"{kp['key_fraction']:.1%} ({kp['pairs']} pair{'s' if kp['pairs'] > 1 else ''})" \
            if kp.get("key_fraction") is not None else (f"{kp['pairs']} pairs" if kp else "—")
        bits = f"{r['key_space']['bits']:,.0f}" if r.get("key_space") else "—"
        lines.append(
            f"| `{s}` | {bits} | {_f(r['encrypted']['ssim'])} | "
            f"{coa[0] if coa else '—'} | {_f(coa[1]) if coa else '—'} | "
            f"{kpa[0] if kpa else '—'} | {_f(kpa[1]) if kpa else '—'} | {key} | "
            f"{_f(ratio / base) if ratio and base else '—'}× | {accuracy_text(accuracy, ds['name'], r)} |")
    return lines


def _attack_rows(r: dict[str, Any]) -> list[str]:
    e = r["encrypted"]
    lines = [f"| `{r['scheme']}` | (encrypted image itself) | — | {_f(e['ssim'])} | {_f(e['ssim_mean'])} | "
             f"{_f(e['psnr'], 1)} | adjacent corr. h/v/d {_f(e['corr_h'])}/{_f(e['corr_v'])}/"
             f"{_f(e['corr_d'])}, entropy {_f(e['entropy'])} bits |"]
    for group in ("coa", "kpa", "model"):
        for a, m in r.get(group, {}).items():
            note = []
            if "weights" in m:
                note.append(f"matched against {m['weights']}, exact images {m['exact']:.0%}")
            elif "pairs" in m:
                note.append(f"{m['pairs']} pair(s), method {m['method']}, exact images {m['exact']:.0%}")
            if m.get("key_fraction") is not None:
                note.append(f"key recovered {m['key_fraction']:.1%}")
            if "neighbours" in m:
                note.append(f"{m['images']} images, correct neighbours {m['neighbours']:.0%}, "
                            "global symmetry by oracle")
            lines.append(f"| `{r['scheme']}` | {a} | {THREAT_LABELS[group]} | {_f(m['ssim'])} | "
                         f"{_f(m['ssim_mean'])} | {_f(m['psnr'], 1)} | {'; '.join(note)} |")
    for sk in r.get("skipped", []):
        lines.append(f"| `{r['scheme']}` | {sk['attack']} | {THREAT_LABELS[sk['threat']]} | — | — | — | "
                     f"not run: {sk['reason']} |")
    return lines


def _model_rows(ds: dict[str, Any]) -> list[str]:
    rows = [r for r in ds["results"] if r.get("model")]
    if not rows:
        return []
    lines = ["### Key recovery from a converted model (public-model threat)", "",
             "The owner converts a ViT for its key (`lcrypt convert-model`) and publishes it. Matching the "
             "converted patch-embedding columns (up to sign) and position-embedding rows to the weights it "
             "was converted from recovers the key without any image. **Converting a publicly available "
             "pretrained model publishes the key** to anyone who downloads both; converting a privately "
             "trained model does not leak it this way (matched against another model's weights, nothing "
             "pairs).", "",
             "| scheme | adversary's weights | key recovered | SSIM of decrypted images | exact images |",
             "|---|---|---|---|---|"]
    for r in rows:
        for a, m in r["model"].items():
            key = "—" if m.get("key_fraction") is None else f"{m['key_fraction']:.1%}"
            lines.append(f"| `{r['scheme']}` | {m['weights']} | {key} | {_f(m['ssim'])} | {m['exact']:.0%} |")
    return lines + [""]


def _jigsaw_rows(ds: dict[str, Any]) -> list[str]:
    lines = ["### Jigsaw solver by image and block size (first images of the split; SSIM and "
             "correct-neighbour rate are medians; a full scheme's global symmetry chosen by oracle)", "",
             "| image | block | blocks | steps undone | images | SSIM | correct neighbours |",
             "|---|---|---|---|---|---|---|"]
    for j in ds["jigsaw"]:
        lines.append(f"| {j['size']}×{j['size']} | {j['block']} | {j['blocks']} | {j['variant']} | "
                     f"{j['images']} | {_f(j['ssim'])} | {j['neighbours']:.0%} |")
    return lines + [""]


def _size_rows(ds: dict[str, Any]) -> list[str]:
    c = ds["compress"]
    comp = c["sizes"]
    base = comp.get("plain", {}).get("jpeg_q85")
    lines = [f"### File sizes ({c['images']:,} images: JPEG 4:2:0 via simplejpeg; PNG via Pillow"
             + (f", PNG measured on every {c['png_every']}th image and scaled" if c["png_every"] > 1 else "")
             + ")", "", "| scheme | JPEG q85 (MB) | JPEG q80 (MB) | PNG (MB) | raw (MB) | q85 vs plain |",
             "|---|---|---|---|---|---|"]
    for s, z in comp.items():
        lines.append(f"| `{s}` | {z['jpeg_q85'] / 1e6:.1f} | {z['jpeg_q80'] / 1e6:.1f} | "
                     f"{z['png'] / 1e6:.1f} | {z['raw'] / 1e6:.1f} | {z['jpeg_q85'] / base:.2f}× |")
    return lines + [""]


def write_report(out: Path, data: dict[str, Any], command: str, accuracy: list[Accuracy] | None) -> str:
    """Write and return report.md; ``accuracy`` None when no training summaries were given."""
    lines = _head(data, command)
    for ds in data["datasets"]:
        lines += [f"## {ds['name']} ({ds['shape'][0]}×{ds['shape'][1]}, {ds['attack_images']} {ds['split']} "
                  f"images attacked)", "",
                  "| scheme | key space (bits) | encrypted SSIM | best COA attack | COA SSIM | "
                  "best KPA/CPA attack | KPA SSIM | key recovered | JPEG q85 size vs plain | "
                  "top-1 accuracy (training summaries) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += _summary_rows(ds, accuracy)
        lines += ["", f"![plain, encrypted, best ciphertext-only reconstruction](figures/{ds['slug']}.png)",
                  "",
                  "<details><summary>Every attack, and cipher-image statistics</summary>", "",
                  "| scheme | attack | threat | median SSIM | mean SSIM | median PSNR (dB) | notes |",
                  "|---|---|---|---|---|---|---|"]
        for r in ds["results"]:
            lines += _attack_rows(r)
        lines += ["", "</details>", ""]
        lines += _model_rows(ds)
        if ds.get("jigsaw"):
            lines += _jigsaw_rows(ds)
        if ds.get("compress", {}).get("sizes"):
            lines += _size_rows(ds)
    lines += ["## Published figures, for comparison (not measured by us)", ""] + [f"* {p}" for p in PUBLISHED]
    lines += [""] + data.get("notes", [])
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text
