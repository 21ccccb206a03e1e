"""Brute force: the size of the key space, counted as each paper counts it (PE eq. 2-4, Tanaka's
96!·2^96, EtC's N_B!·8^N_B·2^N_B·6^N_B), read from ``scheme.info.key_space_bits``.

Any scheme's search is also bounded by lcrypt's 256-bit owner key, from which every choice is derived,
so the effective figure is min(paper count, 256). Years are at an (optimistic) 10^12 trials/s.
"""

from __future__ import annotations

import math

from lcrypt.attacks.base import Attack, Outcome

OWNER_KEY_BITS = 256
TRIALS_PER_SECOND = 1e12


def brute_force_attack(scheme, height: int, width: int) -> dict:
    """``{"bits", "effective_bits", "log10_years"}`` for exhausting the key space at 10^12 keys/s."""
    bits = scheme.info.key_space_bits(height, width)
    eff = min(bits, OWNER_KEY_BITS) if bits > 0 else 0.0
    seconds_log10 = eff * math.log10(2) - math.log10(TRIALS_PER_SECOND)
    return {"bits": bits, "effective_bits": eff, "log10_years": seconds_log10 - math.log10(3.156e7)}


BRUTE_FORCE = Attack("brute-force", "brute-force", "exhaustive key search, counted in bits",
                     applies_to=lambda info: True,
                     run=lambda t: Outcome(notes=brute_force_attack(t.scheme, *t.cipher.shape[1:3])))
