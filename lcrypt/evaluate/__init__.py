"""`lcrypt evaluate`: run every attack that applies to every scheme on real images, and write an honest
report.

    lcrypt evaluate --data ../shared/datasets --schemes all --out report/ --limit 100 \\
        --accuracy runs/*/summary.json

For each dataset (an archive / folder, or every archive in a folder) and scheme it measures, on the
first ``--limit`` images of the evaluation split (test / val), encrypted under a fresh owner key, each
attack of lcrypt.attacks that applies to the scheme's declared properties (its steps, key form, block
size; a scheme registered from outside is attacked alike):

* ciphertext-only (COA; the adversary holds the encrypted set, knows the algorithm, and knows the data
  distribution): FR and greedy FR (Chang & Case), the jigsaw solver (block-scrambling schemes), the
  inverse network (trained on the *train* split encrypted under the adversary's own keys, on 64×64
  windows of larger images);
* known / chosen plaintext (KPA / CPA): key recovery from pairs of *train* images under the owner's key,
  scored by decrypting the unseen evaluation images;
* brute force: key-space bits;
* compressibility: JPEG q85/q80 (4:2:0) and PNG sizes of the whole dataset (or ``--compress-limit``
  images per split), plain vs scheme;

and writes ``report.md``, ``results.json`` and ``figures/<dataset>.png`` (plain | encrypted | best
reconstruction). The accuracy column quotes the training summaries given with ``--accuracy`` (the
``summary.json`` that training writes; see lcrypt.evaluate.accuracy for which row each is quoted in).
``--rerender results.json`` rewrites a report from an earlier run with the summaries given now, without
re-running any attack.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from lcrypt import Key, get_scheme, list_schemes
from lcrypt.attacks import Budget
from lcrypt.attacks.jigsaw import JIGSAW
from lcrypt.errors import UserError
from lcrypt.evaluate.accuracy import Accuracy, read_summaries, unquoted
from lcrypt.evaluate.measure import compress_dataset, dataset_specs, jigsaw_sweep, load_split, measure_scheme
from lcrypt.evaluate.render import best_of, method_notes, save_figure, write_report
from lcrypt.table import format_table


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    accuracy = read_summaries(args.accuracy) if args.accuracy else None     # refused before hours of work
    if args.rerender:                                    # no attacks: needs neither simplejpeg nor torch
        return rerender(Path(args.rerender), Path(args.out), args, accuracy)
    missing = [m for m in ("simplejpeg", "torch") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"lcrypt evaluate: error: needs {' and '.join(missing)} (JPEG sizes, inverse network); install "
              "them with: pip install 'lcrypt[evaluate]'", file=sys.stderr)
        return 2
    out = Path(args.out)
    if not args.data:
        raise UserError("give --data (the datasets to attack), or --rerender RESULTS_JSON to rewrite a "
                        "report")
    t0 = time.time()
    (out / "figures").mkdir(parents=True, exist_ok=True)
    names = list_schemes() if args.schemes == "all" else [s.strip() for s in args.schemes.split(",")
                                                          if s.strip()]
    schemes = [get_scheme(n) for n in names]         # unknown names fail here, with the list of known ones
    sized = schemes if "plain" in names else [get_scheme("plain")] + schemes   # sizes need the baseline
    owner = Key.generate("evaluation-owner")             # fresh secret, never written anywhere
    budget = Budget(args.jigsaw_images, args.jigsaw_restarts, args.itn_steps, args.threads)
    data: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"),
                            "machine": f"{os.cpu_count()} CPU cores, no GPU", "datasets": []}
    summary = []
    for spec in dataset_specs(args.data):
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", spec.name.split(".")[0])
        plain, split = load_split(spec, args.split, args.limit)
        known = load_split(spec, "train", args.known)[0] if args.known else plain[:0]
        ds: dict[str, Any] = {"name": spec.name, "slug": slug, "split": split, "shape": list(plain.shape[1:]),
                              "attack_images": len(plain), "results": []}
        figs = {}
        for scheme in tqdm(schemes, desc=f"attacks {spec.name}", unit="scheme"):
            res, figs[scheme.name] = measure_scheme(scheme, plain, known, owner, budget)
            ds["results"].append(res)
            coa, kpa = best_of(res["coa"]), best_of(res["kpa"])
            summary.append([slug, scheme.name, res["key_space"]["bits"], res["encrypted"]["ssim"],
                            coa[0] if coa else "-", coa[1] if coa else float("nan"),
                            kpa[0] if kpa else "-", kpa[1] if kpa else float("nan")])
        save_figure(out / "figures" / f"{slug}.png", plain, figs, {r["scheme"]: r for r in ds["results"]})
        if args.jigsaw_sweep:
            ds["jigsaw"] = jigsaw_sweep(schemes, plain, owner, args.jigsaw_images, args.jigsaw_restarts)
        if not args.no_compress:
            ds["compress"] = compress_dataset(spec, sized, owner, args.compress_limit, args.png_every)
        data["datasets"].append(ds)
    data["seconds"] = time.time() - t0
    data["notes"] = method_notes([s.name for s in schemes if JIGSAW.applies_to(s.info)], args.itn_steps)
    data["command"] = args.command_line or "lcrypt evaluate " + " ".join(sys.argv[2:])
    (out / "results.json").write_text(json.dumps(data, indent=1, default=float))
    write_report(out, data, data["command"], accuracy)
    _note_unquoted(accuracy, data)
    print(format_table(summary, ["dataset", "scheme", "key bits", "enc SSIM", "best COA", "SSIM", "best KPA",
                                 "SSIM"]))
    print(f"\nwrote {out / 'report.md'}, {out / 'results.json'} and {out / 'figures'} "
          f"in {data['seconds']:.0f} s")
    return 0


def rerender(results_json: Path, out: Path, args: argparse.Namespace,
             accuracy: list[Accuracy] | None) -> int:
    """Rewrite report.md from an earlier run's results.json, quoting the training summaries given now:
    accuracy arrives more often than the attacks need re-running. Figures are copied along."""
    if not results_json.is_file():
        raise UserError(f"{results_json} does not exist; give the results.json an earlier "
                        "`lcrypt evaluate` wrote")
    data = json.loads(results_json.read_text())
    command = data.get("command") or args.command_line
    if not command:
        raise UserError(f"{results_json} does not record the command that measured it; pass --command-line")
    out.mkdir(parents=True, exist_ok=True)
    figures = results_json.parent / "figures"
    if figures.is_dir() and figures.resolve() != (out / "figures").resolve():
        shutil.copytree(figures, out / "figures", dirs_exist_ok=True)
    write_report(out, data, command, accuracy)
    _note_unquoted(accuracy, data)
    quoted = (f", quoting {len(accuracy)} training summaries" if accuracy
              else ", without accuracy (no --accuracy)")
    print(f"rewrote {out / 'report.md'} from {results_json} (measured {data['date']}){quoted}")
    return 0


def _note_unquoted(accuracy: list[Accuracy] | None, data: dict[str, Any]) -> None:
    for line in unquoted(accuracy or [], data):
        print(f"lcrypt evaluate: note: --accuracy {line}", file=sys.stderr)


def add_command(subparsers: Any) -> None:
    """Register `lcrypt evaluate` (declared in pyproject's lcrypt.commands entry points)."""
    p = subparsers.add_parser("evaluate",
                              help="run attacks, privacy metrics and compressibility; write a report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", help="dataset archives/folders, or a folder of archives")
    p.add_argument("--schemes", default="all", help="'all' or a comma-separated list")
    p.add_argument("--out", default="report", help="output folder (report.md, results.json, figures/)")
    p.add_argument("--limit", type=int, default=100, help="evaluation images attacked per dataset")
    p.add_argument("--known", type=int, default=1000,
                   help="train images the adversary holds (look-alikes, pairs)")
    p.add_argument("--split", default=None, help="evaluation split (default: test, then val)")
    p.add_argument("--jigsaw-images", type=int, default=10,
                   help="images the (slow) full-variant jigsaw solver attacks")
    p.add_argument("--jigsaw-restarts", type=int, default=2)
    p.add_argument("--jigsaw-sweep", action="store_true",
                   help="also solve scrambling alone and each block-scrambling scheme by image/block size")
    p.add_argument("--itn-steps", type=int, default=150, help="inverse-network training steps (0 = skip)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for the inverse network")
    p.add_argument("--no-compress", action="store_true", help="skip the file-size measurements")
    p.add_argument("--compress-limit", type=int, default=None,
                   help="images per split for file sizes (default all)")
    p.add_argument("--png-every", type=int, default=10,
                   help="PNG-encode every k-th image and scale (PNG is slow)")
    p.add_argument("--accuracy", nargs="+", metavar="SUMMARY_JSON",
                   help="training summaries (summary.json, or run folders holding one) to quote top-1 from")
    p.add_argument("--rerender", metavar="RESULTS_JSON",
                   help="rewrite report.md from an earlier results.json (no attacks run), quoting the "
                   "--accuracy summaries given now")
    p.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)
