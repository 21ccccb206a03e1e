"""Key recovery from known (or chosen) plain–cipher pairs under the target key.

Every byte-wise scheme here is, for a fixed key and shape, ``c[t] = p[src[t]] ⊕ mask[t]`` over the
bytes (or, for LE/ELE, the nibbles) of an image — see :class:`lcrypt.schemes.base.IndexMap`. That
pair *is* the effective key: whoever learns it decrypts every other image of the dataset. So we
recover an estimate of (src, mask) and report (a) the fraction of positions where it equals the true
one and (b) the SSIM of decrypting *unseen* images with it.

Methods (the adversary knows the algorithm and picks the one that fits):

* ``xor`` (one pair; PE without colour shuffle, CPBE): ``src`` is the identity, so
  ``mask = p ⊕ c``. For CPBE the *chosen* plaintext of Ahmad & Shin is the blank image: ``mask = c``.
* ``pixel`` (one pair; PE with colour shuffle): per pixel, the colour order whose three XOR
  differences are all 0 or 255.
* ``blocks`` (one pair; EtC): every plain block under its 96 variants (8 rotations/flips × sign × 6
  colour orders) is hashed, and each cipher block is looked up: the scramble, rotation, sign and colour
  order of every block at once.
* ``signature`` (K ≥ 2 pairs; any gather-and-XOR scheme: LE, ELE, block-shuffle, EtC, PE): XOR
  differences cancel the mask, ``c_k[t] ⊕ c_0[t] = p_k[src[t]] ⊕ p_0[src[t]]``, so matching the
  (K−1)-value signatures of cipher and plain positions gives ``src``, then ``mask``. With ``op="add"``
  the same works for the cat-map cipher after a first difference removes its chained diffusion
  (``diff(c) = p[g] + s mod 256``).
* ``chain`` (K pairs; ahmad-diffusion): ``t = c_x ⊕ c_{x−1}`` is computable from the ciphertext, and
  per position it is one of 257 substitutions of p (eq. 2 with some s, or the identity); the first
  column adds the unknown IV byte. The pairs single out the substitution position by position.

Positions an attack cannot pin down (flat regions give equal signatures, identical blocks) take an
arbitrary consistent candidate, and plain positions nothing maps to decrypt to mid-grey.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from lcrypt.schemes.base import COLOR_PERMUTATIONS, block_index, dihedral_maps


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


def block_variants(block: int, rotations: bool = True, negpos: bool = True, colors: bool = True) -> np.ndarray:
    """Byte gathers + XORs of every per-block variant: returns (V, b·b·3) offsets and (V,) sign masks."""
    pix = dihedral_maps(block) if rotations else np.arange(block * block)[None]
    perms = COLOR_PERMUTATIONS if colors else COLOR_PERMUTATIONS[:1]
    signs = (0, 255) if negpos else (0,)
    offs, masks = [], []
    for d in pix:
        for perm in perms:
            for s in signs:
                offs.append((d[:, None] * 3 + perm[None, :]).ravel())
                masks.append(s)
    return np.array(offs), np.array(masks, dtype=np.uint8)


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
def recover_signatures(plain: np.ndarray, cipher: np.ndarray, nibbles: bool = False, op: str = "xor") -> KeyEstimate:
    """Any gather-and-XOR (or, ``op="add"``, gather-and-add after a first difference) scheme from K ≥ 2 pairs."""
    k = len(plain)
    if k < 2:
        raise ValueError("the signature attack needs at least 2 known pairs (the mask cancels in their differences)")
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
    return KeyEstimate("signature", plain.shape[1:], src, mask.astype(np.uint8), nibbles=nibbles, op=op, pairs=k)


def _sub(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Eq. (2) without the chain term: s ⊕ ((p + s) mod 256)."""
    return s ^ (p + s)


def recover_chain(plain: np.ndarray, cipher: np.ndarray, full: bool) -> KeyEstimate:
    """ahmad-diffusion from K pairs: per position, the substitution (identity or eq. 2 with some s) and,
    in the first column, the IV byte consistent with every pair."""
    k, h, w, ch = plain.shape
    p, c = plain, cipher
    prev = np.concatenate([np.zeros((k, h, 1, ch), np.uint8), c[:, :, :-1]], axis=2)
    t = c ^ prev                                                    # x ≥ 1: chained value (iv unknown at x = 0)
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
    return KeyEstimate("chain", plain.shape[1:], chain={"s": s_hat, "use_sub": use_sub, "iv": iv, "full": full},
                       pairs=k)


def _chain_decrypt(c: np.ndarray, s: np.ndarray, use_sub: np.ndarray, iv: np.ndarray, full: bool) -> np.ndarray:
    n, h, w, ch = c.shape
    prev = np.concatenate([np.broadcast_to(iv[None, :, None], (n, h, 1, ch)), c[:, :, :-1]], axis=2)
    t = c ^ prev
    unsub = (t ^ s) - s                                             # invert eq. (2)
    other = t if full else c
    return np.where(use_sub, unsub, other).astype(np.uint8)


# -- entry points -------------------------------------------------------------------------------
def known_plaintext_attack(scheme, plain: np.ndarray, cipher: np.ndarray) -> KeyEstimate:
    """Recover the effective key of ``scheme`` from known pairs (plain[i] encrypts to cipher[i]).

    Uses the first pair alone where one suffices (PE, CPBE, EtC) and all pairs otherwise.
    """
    name, params = scheme.name, scheme.params
    if name in ("pe", "cpbe", "plain"):
        if name == "pe" and params.get("color_shuffle"):
            return recover_pixel_shuffle(plain[:1], cipher[:1])
        return recover_xor(plain[:1], cipher[:1])
    if name == "etc":
        return recover_blocks(plain[:1], cipher[:1], params["block_size"])
    if name in ("le", "ele"):
        return recover_signatures(plain, cipher, nibbles=True)
    if name == "block-shuffle":
        return recover_signatures(plain, cipher)
    if name == "catmap":
        return recover_signatures(plain, cipher, op="add")
    if name == "ahmad-diffusion":
        return recover_chain(plain, cipher, full=params["ratio"] == 1.0)
    raise ValueError(f"no known-plaintext attack for scheme {name!r}")


PAIRS_NEEDED = {"pe": 1, "cpbe": 1, "plain": 1, "etc": 1, "block-shuffle": 3, "le": 8, "ele": 8,
                "catmap": 3, "ahmad-diffusion": 4}
"""Known pairs each attack is given on 32×32 images (the fewest that recover nearly all of the key)."""


def pairs_needed(name: str, shape: tuple[int, int, int]) -> int:
    """Pairs for the signature attack to single out positions: its K−1 differences must carry more
    bits than log2(positions) (+6 bits of margin for flat regions); one pair where one suffices."""
    base = PAIRS_NEEDED[name]
    if name not in ("block-shuffle", "le", "ele", "catmap"):
        return base
    positions = int(np.prod(shape)) * (2 if name in ("le", "ele") else 1)
    bits = 4 if name in ("le", "ele") else 8
    return max(base, 1 + int(np.ceil((np.log2(positions) + 6) / bits)))


def chosen_plaintext_attack(scheme, encrypt: Callable[[np.ndarray], np.ndarray],
                            shape: tuple[int, int, int]) -> KeyEstimate:
    """CPBE's weakness (Ahmad & Shin): encrypt a blank image and read the keystream off it."""
    if scheme.name not in ("cpbe", "pe"):
        raise ValueError(f"no chosen-plaintext shortcut for {scheme.name!r}; use known_plaintext_attack")
    blank = np.zeros((1, *shape), np.uint8)
    c = encrypt(blank)
    return KeyEstimate("blank-image", shape, np.arange(c.size), c.reshape(-1).copy())
