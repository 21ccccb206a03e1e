"""README.md of a release: a Hugging Face dataset card (YAML header + prose) written from the manifest.

The header makes ``datasets.load_dataset(RELEASE_FOLDER)`` read the shards with its WebDataset builder:
``configs`` give the shards of each split (``default``: every owner; one config per owner, named after
it, or ``owner-default`` for an owner called "default"), and ``dataset_info`` declares the features, the
label ``cls`` as a ``ClassLabel`` with the class names, so labels come out named. The prose says what a
user needs before training: the scheme, what it protects and what it does not, the normalisation and
augmentations that keep its blocks, counts, key ids, commands that work as printed, checksums and the
changelog. YAML strings are written as JSON strings (valid YAML), so no name can break the header.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from lcrypt.format import IMAGE_EXT, Manifest
from lcrypt.release.security import security_lines
from lcrypt.release.usage import datasets_snippet, lcrypt_train_command, timm_command
from lcrypt.signatures import PublicKey

SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                   (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))


@dataclasses.dataclass
class CardFacts:
    """What the card says beyond the manifest."""

    version: str
    license: str
    title: str
    description: str
    creator: str
    homepage: str | None
    public_keys: Sequence[PublicKey]
    changelog: Sequence[dict[str, Any]]
    rejections: dict[str, int]  # reason -> count
    checksums: dict[str, str]  # file -> sha256, for the files listed in the card


def owner_config(owner: str) -> str:
    """The config name of one owner's shards (``default`` is every owner's)."""
    return "owner-default" if owner == "default" else owner


def shard_glob(split: str, owner: str | None) -> str:
    """The shards of a split (of one owner): digits only after the owner, so "a" never matches "a-b"'s."""
    return f"{split}/*.tar" if owner is None else f"{split}/{owner}-{'[0-9]' * 6}.tar"


def size_category(n: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if n < limit), "n>100M")


def _q(text: str) -> str:
    return json.dumps(str(text), ensure_ascii=False)


def _features(m: Manifest, indent: str) -> list[str]:
    image = IMAGE_EXT.get(m.encoding, m.encoding)
    lines = [f"{indent}features:", f"{indent}- name: cls", f"{indent}  dtype:", f"{indent}    class_label:",
             f"{indent}      names:"]
    lines += [f"{indent}        {_q(str(i))}: {_q(n)}" for i, n in enumerate(m.class_names)]
    if image == "npy":
        h, w = m.image_shape[:2]
        lines += [f"{indent}- name: npy", f"{indent}  dtype:", f"{indent}    array3_d:",
                  f"{indent}      shape: [{h}, {w}, 3]", f"{indent}      dtype: uint8"]
    else:
        lines += [f"{indent}- name: {image}", f"{indent}  dtype: image"]
    return lines + [f"{indent}- name: __key__", f"{indent}  dtype: string", f"{indent}- name: __url__",
                    f"{indent}  dtype: string"]


def yaml_header(m: Manifest, facts: CardFacts) -> list[str]:
    """The card's YAML front matter (between ``---`` lines)."""
    total = sum(m.splits.values())
    lines = ["---", f"pretty_name: {_q(facts.title)}", f"license: {_q(facts.license.lower())}",
             "task_categories:", "- image-classification", "size_categories:", f"- {size_category(total)}",
             "tags:"]
    lines += [f"- {_q(t)}" for t in ("lcrypt", "encrypted", "learnable-image-encryption",
                                     f"lcrypt-scheme-{m.scheme}", "webdataset")]
    configs = [("default", None)] + [(owner_config(o.name), o.name) for o in m.owners]
    lines.append("configs:")
    for name, owner in configs:
        lines += [f"- config_name: {_q(name)}"] + (["  default: true"] if owner is None else [])
        lines.append("  data_files:")
        for split in m.splits:
            if owner is None or m.shards_for(split, owner):
                lines += [f"  - split: {_q(split)}", f"    path: {_q(shard_glob(split, owner))}"]
    lines.append("dataset_info:")
    for name, owner in configs:
        lines += [f"- config_name: {_q(name)}"] + _features(m, "  ")
    return lines + ["---"]


def card_text(m: Manifest, facts: CardFacts) -> str:
    """The whole README.md."""
    info = m.scheme_info or {}
    params = ", ".join(f"`{k}={v}`" for k, v in sorted(m.scheme_params.items())) or "defaults"
    h, w = m.image_shape[:2]
    total = sum(m.splits.values())
    out = yaml_header(m, facts) + [
        "", f"# {facts.title} ({facts.version})", "", facts.description, "",
        f"Encrypted with lcrypt's scheme `{m.scheme}` ({params}) under each data "
        "owner's key: people see noise, networks still learn. `preview.png` shows what anyone sees:", "",
        "![encrypted samples](preview.png)", "",
        "| | |", "|---|---|",
        f"| version | {facts.version} |", f"| license | {facts.license} |", f"| creator | {facts.creator} |",
        *([f"| homepage | {facts.homepage} |"] if facts.homepage else []),
        f"| samples | {total:,} |", f"| image size | {h}×{w} RGB, stored as {m.encoding} |",
        f"| classes | {m.num_classes}: {', '.join(m.class_names)} |",
        f"| lcrypt | {m.lcrypt_version} |", "",
        "## Encryption", "",
        f"Scheme `{m.scheme}`: {info.get('summary', 'see `lcrypt schemes`')} ({info.get('paper', '')}); "
        f"parameters {params}; block size {info.get('block_size') or 'none'}. Train on the pixels as stored "
        "(no resize, no crop), normalised with mean = std = 0.5 per channel. Augmentations that keep the "
        f"scheme's blocks aligned: {', '.join(info.get('augmentations', [])) or 'none'} (geometric ones move "
        f"whole cells of {info.get('aug_grid', 1)} px); any other crop, resize or flip breaks them.", "",
        *security_lines(m.scheme), "",
        "## Counts", "", "| split | owner | samples |", "|---|---|---|"]
    for split in m.splits:
        out += [f"| {split} | {o.name} | {o.counts[split]:,} |" for o in m.owners if o.counts.get(split)]
        out.append(f"| {split} | all | {m.splits[split]:,} |")
    rejected = sum(facts.rejections.values())
    out += ["", f"Rejected while preparing: {rejected:,} record(s)" + (
        " (" + ", ".join(f"{r}: {n:,}" for r, n in sorted(facts.rejections.items())) + "); counts by reason "
        "in `rejections.json` (source file names are never published)" if rejected else "") + ".", ""]
    out += _keys_section(m, facts) + _training_section(m) + _checksums_section(facts)
    out += ["## Changelog", ""] + [f"- {c['version']} ({c['date']}): {c['change']}"
                                   for c in reversed(list(facts.changelog))]
    return "\n".join(out) + "\n"


def _keys_section(m: Manifest, facts: CardFacts) -> list[str]:
    signing = {k.owner: k for k in facts.public_keys}
    lines = ["## Owners, keys and signatures", "",
             "A key id is the fingerprint of the owner's public signing key. Each owner listed with a public "
             "key signed this release (`signatures/OWNER.sig`, over the sha256 of every file); check it "
             "against the key id the owner published elsewhere:", "",
             "| owner | key id | Ed25519 public key (base64) |", "|---|---|---|"]
    for o in m.owners:
        pk = signing.get(o.name)
        lines.append(f"| {o.name} | `{o.key_id}` | "
                     f"{'`' + pk.as_dict()['public_key'] + '`' if pk else 'did not sign this release'} |")
    example = " ".join(f"--key-id {k.owner}={k.key_id}" for k in facts.public_keys) or "--key-id OWNER=ID"
    return lines + ["", "```bash", f"lcrypt verify . {example}", "```", "",
                    "A signature proves who published these exact files (origin and integrity), not that the "
                    "images are hidden: that is the scheme's part, above.", ""]


def _training_section(m: Manifest) -> list[str]:
    lines = ["## Train on it", "", "Run these from this folder (runs go to `../runs`, beside it). With "
             "lcrypt's trainer (it checks every shard against the manifest and applies only the "
             "augmentations the scheme keeps):", "", "```bash",
             lcrypt_train_command(m), "```", ""]
    try:
        timm = timm_command(m)
    except ValueError as exc:
        lines += [f"timm: not with this encoding ({exc}).", ""]
    else:
        lines += ["With timm's `train.py` (any `--model`; these flags keep the stored pixels: no resize, "
                  "crop or augmentation, mean = std = 0.5):", "", "```bash", timm, "```", ""]
    return lines + ["With Hugging Face `datasets` (labels come out as a `ClassLabel` with the names above; "
                    "`name=OWNER` selects one owner's shards):", "", "```python", datasets_snippet(m), "```",
                    "",
                    "The shards are plain WebDataset tars (`KEY.cls` holds the label as ASCII digits, "
                    "`KEY.png`/`.jpg`/`.npy` the encrypted image); `_info.json` lists them per split for "
                    "timm's reader.", ""]


def _checksums_section(facts: CardFacts) -> list[str]:
    lines = ["## Checksums", "", "Every file's sha256 is in `SHA256SUMS` (`sha256sum -c SHA256SUMS`); "
             "`lcrypt verify .` checks them, every shard against the manifest and every signature.", ""]
    return lines + [f"- `{name}`: `{digest}`" for name, digest in sorted(facts.checksums.items())] + [""]
