"""Attacks on learnable encryption, one module each with one entry point, and a small registry.

| name              | module               | threat model            | in -> out                              |
|-------------------|----------------------|-------------------------|----------------------------------------|
| `brute-force`     | brute_force.py       | ciphertext-only         | scheme, image size -> key-space bits   |
| `fr`              | fr.py                | ciphertext-only         | ciphertexts -> reconstructions         |
| `fr-greedy`       | fr.py                | ciphertext-only         | ciphertexts -> reconstructions         |
| `jigsaw`          | jigsaw.py            | ciphertext-only         | ciphertexts -> reconstructions, grids  |
| `inverse-network` | inverse_network.py   | ciphertext-only + known distribution | look-alike pairs under other keys, ciphertexts -> reconstructions |
| `known-plaintext` | known_plaintext.py   | known plaintext         | pairs -> key estimate (decrypts others)|
| `chosen-plaintext`| known_plaintext.py   | chosen plaintext        | encryption oracle -> key estimate      |
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from lcrypt.attacks.brute_force import brute_force_attack
from lcrypt.attacks.fr import fr_attack, fr_greedy_attack
from lcrypt.attacks.jigsaw import jigsaw_attack
from lcrypt.attacks.known_plaintext import chosen_plaintext_attack, known_plaintext_attack


def _inverse_network(*args, **kwargs):
    from lcrypt.attacks.inverse_network import inverse_network_attack   # torch imported only when run

    return inverse_network_attack(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Attack:
    name: str
    threat_model: str
    run: Callable
    summary: str


ATTACKS: dict[str, Attack] = {a.name: a for a in (
    Attack("brute-force", "ciphertext-only", brute_force_attack, "exhaustive key search, counted in bits"),
    Attack("fr", "ciphertext-only", fr_attack, "fold v -> min(v, 255-v) (Chang & Case 2020)"),
    Attack("fr-greedy", "ciphertext-only", fr_greedy_attack, "48 sign/colour-order candidates, smoothest kept"),
    Attack("jigsaw", "ciphertext-only", jigsaw_attack, "edge-compatibility block puzzle solver"),
    Attack("inverse-network", "ciphertext-only", _inverse_network,
           "CNN trained on look-alike pairs under other keys"),
    Attack("known-plaintext", "known-plaintext", known_plaintext_attack, "effective key from known pairs"),
    Attack("chosen-plaintext", "chosen-plaintext", chosen_plaintext_attack, "blank image reveals the keystream"),
)}


def get_attack(name: str) -> Attack:
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}") from None


__all__ = ["ATTACKS", "Attack", "get_attack"]
