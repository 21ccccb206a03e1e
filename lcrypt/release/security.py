"""What each scheme protects, as measured: the scheme's row of lcrypt's security evaluation, for the card.

Figures are those of docs/security.md (``lcrypt evaluate --data ../shared/datasets --schemes all``,
2026-11-23, 100 test/val images per dataset): the best ciphertext-only attack and its median SSIM
against the plain image (about 0 is noise, 0.3 shows shapes, above 0.8 is the image), and how many
known plain–cipher pairs recover the key. Re-measure with ``lcrypt evaluate`` and update both together.
"""

from __future__ import annotations

MEASURED = "lcrypt evaluate on CIFAR-10 (32×32) and Imagenette (224×224), 2026-11-23"
KNOWN_PLAINTEXT = ("No scheme survives a known-plaintext attack: whoever holds a few of the original "
                   "images of this set (a leaked or public photo that is also in it) can recover the key and "
                   "decrypt the others. The key protects the set only while none of its originals is public.")

# scheme -> (best ciphertext-only attack: CIFAR-10, Imagenette), pairs that recover the key, verdict
SECURITY: dict[str, tuple[tuple[str, str], str, str]] = {
    "plain": (("— (no encryption)", "— (no encryption)"), "—", "nothing: the images are stored as they are"),
    "le": (("inverse network, 0.07", "greedy FR, 0.06"), "8 pairs",
           "held against every ciphertext-only attack we ran"),
    "block-shuffle": (("inverse network, 0.62", "inverse network, 0.58"), "4 pairs",
                      "visibly readable as it is (SSIM 0.48 without any attack)"),
    "catmap": (("inverse network, 0.09", "inverse network, 0.13"), "4 pairs",
               "held against every ciphertext-only attack we ran (a conventional cipher, not learnable)"),
    "pe": (("FR, 0.29", "greedy FR, 0.42"), "1 pair (or one chosen blank image)",
           "leaks shapes to a key-free fold attack"),
    "etc": (("jigsaw solver, 1.00", "jigsaw solver, 0.79"), "1 pair",
            "hides images from a casual viewer, not from a jigsaw solver, which puts the blocks back"),
    "ele": (("inverse network, 0.09", "inverse network, 0.12"), "8 pairs",
            "held against every ciphertext-only attack we ran"),
    "cpbe": (("inverse network, 0.60", "inverse network, 0.48"), "1 pair (or one chosen blank image)",
             "visibly readable as it is (SSIM 0.11-0.20 without any attack)"),
    "ahmad-diffusion": (("inverse network, 0.39", "inverse network, 0.31"), "4 pairs",
                        "falls partly to an inverse network"),
    "blockwise": (("inverse network, 0.08", "not measured"), "4 pairs",
                  "held against every ciphertext-only attack we ran on CIFAR-10 (2026-12-02); a model "
                  "converted from public weights gives the key away"),
}


def security_lines(scheme: str) -> list[str]:
    """Markdown lines for the card: the scheme's measured row, or a pointer to measure it."""
    if scheme not in SECURITY:
        return [f"Scheme `{scheme}` is not in lcrypt's security evaluation: measure it with `lcrypt evaluate "
                f"--schemes {scheme}` before relying on it.", "", KNOWN_PLAINTEXT]
    (cifar, imagenette), pairs, verdict = SECURITY[scheme]
    return [f"**What `{scheme}` protects** (against whoever holds the encrypted set; {MEASURED}): {verdict}.",
            "",
            "| | CIFAR-10 (32×32) | Imagenette (224×224) |",
            "|---|---|---|",
            f"| best ciphertext-only attack, median SSIM to the plain image | {cifar} | {imagenette} |",
            f"| known plain–cipher pairs that recover the key | {pairs} | {pairs} |",
            "",
            f"What it does not protect: {KNOWN_PLAINTEXT}"]
