"""Key recovery from known (or chosen) plain–cipher pairs under the target key.

Every byte-wise scheme here is, for a fixed key and shape, ``c[t] = p[src[t]] ⊕ mask[t]`` over the
bytes (or, for LE/ELE, the nibbles) of an image — see :class:`lcrypt.schemes.base.IndexMap`. That
pair *is* the effective key: whoever learns it decrypts every other image of the dataset. So we
recover an estimate of (src, mask) and report (a) the fraction of positions where it equals the true
one and (b) the SSIM of decrypting *unseen* images with it.

Methods (the adversary knows the algorithm, so the scheme's declared ``SchemeInfo.key_form`` picks
the one that fits; :data:`RECOVERIES`):

* ``xor`` (one pair; key form ``xor``: PE without colour shuffle, CPBE): ``src`` is the identity, so
  ``mask = p ⊕ c``. The *chosen* plaintext of Ahmad & Shin is the blank image: ``mask = c``.
* ``pixel`` (one pair; ``pixel-colour-xor``: PE with colour shuffle): per pixel, the colour order whose
  three XOR differences are all 0 or 255.
* ``blocks`` (one pair; ``block-variants``: EtC): every plain block under its variants (up to 8
  rotations/flips × sign × 6 colour orders, as the scheme's steps say) is hashed, and each cipher block is
  looked up: the scramble, rotation, sign and colour order of every block at once.
* ``signature`` (K ≥ 2 pairs; ``byte-gather-xor`` and ``nibble-gather-xor``: block-shuffle, LE, ELE):
  XOR differences cancel the mask, ``c_k[t] ⊕ c_0[t] = p_k[src[t]] ⊕ p_0[src[t]]``, so matching the
  (K−1)-value signatures of cipher and plain positions gives ``src``, then ``mask``. With ``op="add"``
  (``byte-gather-cumsum``) the same works for the cat-map cipher after a first difference removes its
  chained diffusion (``diff(c) = p[g] + s mod 256``).
* ``chain`` (K pairs; ``row-chain`` and ``row-chain-partial``: ahmad-diffusion): ``t = c_x ⊕ c_{x−1}``
  is computable from the ciphertext, and per position it is one of 257 substitutions of p (eq. 2 with
  some s, or the identity); the first column adds the unknown IV byte. The pairs single out the
  substitution position by position.

Positions an attack cannot pin down (flat regions give equal signatures, identical blocks) take an
arbitrary consistent candidate, and plain positions nothing maps to decrypt to mid-grey.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from lcrypt.attacks.base import Attack, Outcome, Target, changes_the_image
from lcrypt.attacks.block_variants import block_variants, variant_flags
from lcrypt.schemes.base import COLOR_PERMUTATIONS, Scheme, SchemeInfo, block_index


# -- the recovered key -------------------------------------------------------------------------
@dataclasses.dataclass
class KeyEstimate:
    """An estimate of a scheme's effective key; ``decrypt`` applies it to any ciphertexts."""

    method: str
    shape: tuple[int, int, int]
    src: np.ndarray | None = None      # gather-and-XOR schemes: c[t] = p[src[t]] ^ mask[t] ...
    mask: np.ndarray | None = None
    nibbles: bool = False              # ... over nibbles (LE, ELE) instead of bytes
    op: str = "xor"                    # "add": c' = diff(c) = p[src] + mask (cat map)
    chain: dict | None = None          # ahmad-diffusion per-position substitutions
    pairs: int = 1

    def decrypt(self, ciphertexts: np.ndarray) -> np.ndarray:
        c = np.asarray(ciphertexts)
        if self.chain is not None:
            return _chain_decrypt(c, **self.chain)
        n = len(c)
        flat = c.reshape(n, -1)
        if self.op == "add":
            flat = np.diff(flat, axis=1, prepend=np.uint8(0))
        vals = to_nibbles(flat) if self.nibbles else flat
        if self.op == "add":
            src_vals = vals - self.mask
        else:
            src_vals = vals ^ self.mask
        fill = 8 if self.nibbles else 128
        out = np.full_like(vals, fill)
        out[:, self.src] = src_vals
        out = from_nibbles(out) if self.nibbles else out
        return out.reshape(c.shape)

    def fraction_correct(self, true_src: np.ndarray, true_mask: np.ndarray) -> float:
        """Share of positions whose (source, mask) equals the true key's."""
        return float(np.mean((self.src == true_src) & (self.mask == true_mask)))


def to_nibbles(flat: np.ndarray) -> np.ndarray:
    """(N, L) bytes -> (N, 2L) nibbles laid out as IndexMap does: all upper nibbles, then all lower."""
    return np.concatenate([flat >> 4, flat & 15], axis=1)


def from_nibbles(nib: np.ndarray) -> np.ndarray:
    half = nib.shape[1] // 2
    return ((nib[:, :half] << 4) | (nib[:, half:] & 15)).astype(np.uint8)


# -- one pair ----------------------------------------------------------------------------------
def recover_xor(plain: np.ndarray, cipher: np.ndarray) -> KeyEstimate:
    """XOR-only schemes (PE without colour shuffle, CPBE): one pair gives the whole mask."""
    p, c = plain[0].reshape(-1), cipher[0].reshape(-1)
    return KeyEstimate("xor", plain.shape[1:], np.arange(p.size), p ^ c)


def recover_pixel_shuffle(plain: np.ndarray, cipher: np.ndarray) -> KeyEstimate:
    """PE with colour shuffle: per pixel the first colour order whose XOR differences are all 0/255."""
    p, c = plain[0].reshape(-1, 3), cipher[0].reshape(-1, 3)
    cand = p[:, COLOR_PERMUTATIONS] ^ c[:, None, :]                                  # (n, 6, 3)
    ok = np.all((cand == 0) | (cand == 255), axis=2)
    choice = np.where(ok.any(axis=1), ok.argmax(axis=1), 0)
    perm = COLOR_PERMUTATIONS[choice]                                                 # (n, 3)
    src = (np.arange(len(p))[:, None] * 3 + perm).ravel()
    mask = (p.reshape(-1)[src] ^ c.reshape(-1)).astype(np.uint8)
    mask = np.where((mask == 0) | (mask == 255), mask, 0).astype(np.uint8)
    return KeyEstimate("pixel", plain.shape[1:], src, mask)


def recover_blocks(plain: np.ndarray, cipher: np.ndarray, block: int, **variants: bool) -> KeyEstimate:
    """EtC from one pair: look every cipher block up among the plain blocks under every variant."""
    h, w, _ = plain.shape[1:]
    blk = block_index(h, w, block, 3)
    p, c = plain[0].reshape(-1), cipher[0].reshape(-1)
    offs, signs = block_variants(block, **variants)
    pb = p[blk]                                                                       # (nb, b·b·3)
    table: dict[bytes, tuple[int, int]] = {}
    for v in range(len(offs) - 1, -1, -1):                                            # first variant wins
        trans = pb[:, offs[v]] ^ signs[v]
        for r in range(len(blk) - 1, -1, -1):
            table[trans[r].tobytes()] = (r, v)
    src = np.arange(p.size)
    mask = np.zeros(p.size, dtype=np.uint8)
    for q in range(len(blk)):
        hit = table.get(c[blk[q]].tobytes())
        if hit is not None:
            r, v = hit
            src[blk[q]] = blk[r][offs[v]]
            mask[blk[q]] = signs[v]
    return KeyEstimate("blocks", plain.shape[1:], src, mask)


# -- several pairs ----------------------------------------------------------------------------
def recover_signatures(plain: np.ndarray, cipher: np.ndarray, nibbles: bool = False,
                       op: str = "xor") -> KeyEstimate:
    """Any gather-and-XOR (or, ``op="add"``, gather-and-add after a first difference) scheme from K ≥ 2
    pairs."""
    k = len(plain)
    if k < 2:
        raise ValueError("the signature attack needs at least 2 known pairs "
                         "(the mask cancels in their differences)")
    p, c = plain.reshape(k, -1), cipher.reshape(k, -1)
    if op == "add":
        c = np.diff(c, axis=1, prepend=np.uint8(0))
    if nibbles:
        p, c = to_nibbles(p), to_nibbles(c)
    bits = 4 if nibbles else 8
    use = min(k - 1, 60 // bits)
    if op == "add":
        sp, sc = (p[1:use + 1] - p[0]), (c[1:use + 1] - c[0])
    else:
        sp, sc = p[1:use + 1] ^ p[0], c[1:use + 1] ^ c[0]
    shifts = (np.arange(use, dtype=np.int64) * bits)[:, None]
    key_p = (sp.astype(np.int64) << shifts).sum(axis=0)
    key_c = (sc.astype(np.int64) << shifts).sum(axis=0)
    order = np.argsort(key_p, kind="stable")
    sorted_p = key_p[order]
    idx = np.clip(np.searchsorted(sorted_p, key_c), 0, len(order) - 1)
    found = sorted_p[idx] == key_c
    src = np.where(found, order[idx], np.arange(len(key_c)))
    mask = (c[0] - p[0, src]) if op == "add" else (c[0] ^ p[0, src])
    return KeyEstimate("signature", plain.shape[1:], src, mask.astype(np.uint8), nibbles=nibbles, op=op,
                       pairs=k)


def _sub(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Eq. (2) without the chain term: s ⊕ ((p + s) mod 256)."""
    return s ^ (p + s)


def recover_chain(plain: np.ndarray, cipher: np.ndarray, full: bool) -> KeyEstimate:
    """ahmad-diffusion from K pairs: per position, the substitution (identity or eq. 2 with some s) and,
    in the first column, the IV byte consistent with every pair."""
    k, h, w, ch = plain.shape
    p, c = plain, cipher
    prev = np.concatenate([np.zeros((k, h, 1, ch), np.uint8), c[:, :, :-1]], axis=2)
    t = c ^ prev                                        # x ≥ 1: chained value (iv unknown at x = 0)
    s_all = np.arange(256, dtype=np.uint8)
    # model "sub": t == s ^ (p + s) for some s; model "id": t == p (full) or c == p (half)
    sub_ok = np.ones((h, w, ch, 256), bool)
    for j in range(k):
        sub_ok &= _sub(p[j][..., None], s_all) == t[j][..., None]
    ident = (t == p) if full else (c == p)
    id_ok = ident.all(axis=0)
    s_hat = sub_ok.argmax(axis=-1).astype(np.uint8)
    use_sub = sub_ok.any(axis=-1) & ~id_ok
    # first column: c0 = f(p0) ^ iv with unknown iv, unless (half) f is the identity without chain
    iv = np.zeros((h, ch), np.uint8)
    p0, c0 = p[:, :, 0], c[:, :, 0]                                 # (k, h, ch)
    cand = _sub(p0[..., None, None], s_all[:, None]) ^ s_all[None, :]  # (k, h, ch, s, iv) for sub
    ok = np.all(cand == c0[..., None, None], axis=0)                # (h, ch, 256, 256)
    id0 = p0 ^ c0 if full else None
    id0_ok = np.all(id0 == id0[0], axis=0) if full else np.all(c0 == p0, axis=0)
    flat = ok.reshape(h, ch, -1)
    any_sub = flat.any(axis=-1)
    best = flat.argmax(axis=-1)
    s_first, iv_sub = np.divmod(best, 256)
    first_sub = any_sub & ~id0_ok
    s_hat[:, 0] = np.where(first_sub, s_first, s_hat[:, 0])
    iv = np.where(first_sub, iv_sub, (id0[0] if full else 0)).astype(np.uint8)
    use_sub[:, 0] = first_sub
    return KeyEstimate("chain", plain.shape[1:], pairs=k,
                       chain={"s": s_hat, "use_sub": use_sub, "iv": iv, "full": full})


def _chain_decrypt(c: np.ndarray, s: np.ndarray, use_sub: np.ndarray, iv: np.ndarray,
                   full: bool) -> np.ndarray:
    n, h, w, ch = c.shape
    prev = np.concatenate([np.broadcast_to(iv[None, :, None], (n, h, 1, ch)), c[:, :, :-1]], axis=2)
    t = c ^ prev
    unsub = (t ^ s) - s                                             # invert eq. (2)
    other = t if full else c
    return np.where(use_sub, unsub, other).astype(np.uint8)


# -- what each key form needs ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Recovery:
    """How one key form is recovered: the fewest pairs given on 32×32 images (the fewest that recover
    nearly all of the key), the signature width in bits per value (None: a fixed number of pairs), and
    the recovery itself, ``(info, plain pairs, cipher pairs) -> KeyEstimate``."""

    pairs: int
    signature_bits: int | None
    recover: Callable[[SchemeInfo, np.ndarray, np.ndarray], KeyEstimate]


RECOVERIES: dict[str, Recovery] = {
    "xor": Recovery(1, None, lambda info, p, c: recover_xor(p[:1], c[:1])),
    "pixel-colour-xor": Recovery(1, None, lambda info, p, c: recover_pixel_shuffle(p[:1], c[:1])),
    "block-variants": Recovery(1, None, lambda info, p, c: recover_blocks(p[:1], c[:1], info.block_size,
                                                                         **variant_flags(info))),
    "byte-gather-xor": Recovery(3, 8, lambda info, p, c: recover_signatures(p, c)),
    "nibble-gather-xor": Recovery(8, 4, lambda info, p, c: recover_signatures(p, c, nibbles=True)),
    "byte-gather-cumsum": Recovery(3, 8, lambda info, p, c: recover_signatures(p, c, op="add")),
    "row-chain": Recovery(4, None, lambda info, p, c: recover_chain(p, c, full=True)),
    "row-chain-partial": Recovery(4, None, lambda info, p, c: recover_chain(p, c, full=False)),
}
"""Key form (``SchemeInfo.key_form``) -> its recovery; a scheme of another form has no known-plaintext
attack here."""


def _recovery(info: SchemeInfo) -> Recovery:
    try:
        return RECOVERIES[info.key_form]
    except KeyError:
        raise ValueError(f"no known-plaintext attack for scheme {info.name!r}: its key form "
                         f"{info.key_form!r} is none of {', '.join(RECOVERIES)}") from None


def pairs_needed(info: SchemeInfo, shape: tuple[int, int, int]) -> int:
    """Pairs for the signature attack to single out positions: its K−1 differences must carry more
    bits than log2(positions) (+6 bits of margin for flat regions); the fixed count otherwise."""
    rec = _recovery(info)
    if rec.signature_bits is None:
        return rec.pairs
    positions = int(np.prod(shape)) * (8 // rec.signature_bits)
    return max(rec.pairs, 1 + math.ceil((np.log2(positions) + 6) / rec.signature_bits))


# -- entry points -------------------------------------------------------------------------------
def known_plaintext_attack(scheme: Scheme, plain: np.ndarray, cipher: np.ndarray) -> KeyEstimate:
    """Recover the effective key of ``scheme`` from known pairs (plain[i] encrypts to cipher[i]).

    Uses the first pair alone where one suffices (key forms ``xor``, ``pixel-colour-xor``,
    ``block-variants``) and all pairs otherwise.
    """
    return _recovery(scheme.info).recover(scheme.info, plain, cipher)


def chosen_plaintext_attack(scheme: Scheme, encrypt: Callable[[np.ndarray], np.ndarray],
                            shape: tuple[int, int, int]) -> KeyEstimate:
    """An XOR-only scheme's weakness (Ahmad & Shin on CPBE): encrypt a blank image and read the mask
    off it."""
    if scheme.info.key_form != "xor":
        raise ValueError(f"no chosen-plaintext shortcut for {scheme.name!r} (key form "
                         f"{scheme.info.key_form!r}, not xor); use known_plaintext_attack")
    blank = np.zeros((1, *shape), np.uint8)
    c = encrypt(blank)
    return KeyEstimate("blank-image", shape, np.arange(c.size), c.reshape(-1).copy())


def _run_known(target: Target) -> Outcome:
    info, shape = target.scheme.info, target.cipher.shape[1:]
    k = pairs_needed(info, shape)
    if len(target.known) < k:
        return Outcome(skipped=f"needs {k} known pairs, the adversary holds {len(target.known)} images")
    pairs = target.known[:k]
    est = known_plaintext_attack(target.scheme, pairs, target.owner_encrypt(pairs))
    return Outcome(est.decrypt(target.cipher), notes={"pairs": k, "method": est.method}, key=est)


def _run_chosen(target: Target) -> Outcome:
    est = chosen_plaintext_attack(target.scheme, target.owner_encrypt, target.cipher.shape[1:])
    return Outcome(est.decrypt(target.cipher), notes={"pairs": 1, "method": est.method})


KNOWN_PLAINTEXT = Attack(
    "known-plaintext", "known-plaintext", "effective key from known pairs",
    applies_to=lambda info: changes_the_image(info) and info.key_form in RECOVERIES, run=_run_known)
CHOSEN_PLAINTEXT = Attack(
    "chosen-plaintext", "chosen-plaintext", "blank image reveals an XOR mask",
    applies_to=lambda info: changes_the_image(info) and info.key_form == "xor", run=_run_chosen)
