"""Attacks on learnable encryption, one module each, and the registry ``lcrypt evaluate`` iterates.

Every attack is an :class:`~lcrypt.attacks.base.Attack`: ``applies_to(info)`` decides from the scheme's
declared properties (``SchemeInfo.steps``, ``key_form``, ``block_size``) whether it makes sense, and
``run(target)`` attacks one scheme's ciphertexts (:class:`~lcrypt.attacks.base.Target` ->
:class:`~lcrypt.attacks.base.Outcome`). Each module also keeps its plain function for direct use.

| name               | module             | threat model     | applies to (declared)                         |
|--------------------|--------------------|------------------|-----------------------------------------------|
| `brute-force`      | brute_force.py     | brute force      | every scheme (key-space bits)                 |
| `fr`               | fr.py              | ciphertext-only  | every scheme that changes the image           |
| `fr-greedy`        | fr.py              | ciphertext-only  | every scheme that changes the image           |
| `jigsaw`           | jigsaw.py          | ciphertext-only  | whole blocks moved, changed only by variants  |
| `inverse-network`  | inverse_network.py | ciphertext-only  | every scheme that changes the image           |
| `known-plaintext`  | known_plaintext.py | known plaintext  | a key form it knows how to recover            |
| `chosen-plaintext` | known_plaintext.py | chosen plaintext | key form `xor` (a blank image shows the mask) |
| `model-conversion` | model_conversion.py | public model   | a key that folds into a model (lcrypt.folding) |
| `model-conversion-private` | model_conversion.py | public model | the same, the owner's model private  |

The model-conversion attacks assume the owner published a model converted with its key (public-model
threat): from the weights it was converted from, the key; from another model's weights, nothing.

The inverse network is ciphertext-only with a known data distribution: it trains on look-alike images
encrypted under the adversary's own keys.

:mod:`lcrypt.attacks.adapter_leak` (the model holder who is also one owner reads another owner's key off
the per-owner input layers of a ``--owner-adapters`` model) works on trained weights, not on ciphertexts,
so it is not in the registry: bench/attack_adapters.py trains the model and runs it.
"""

from __future__ import annotations

from lcrypt.attacks.base import Attack, Budget, Outcome, Target
from lcrypt.attacks.brute_force import BRUTE_FORCE
from lcrypt.attacks.fr import FR, FR_GREEDY
from lcrypt.attacks.inverse_network import INVERSE_NETWORK
from lcrypt.attacks.jigsaw import JIGSAW
from lcrypt.attacks.known_plaintext import CHOSEN_PLAINTEXT, KNOWN_PLAINTEXT
from lcrypt.attacks.model_conversion import MODEL_CONVERSION, MODEL_CONVERSION_PRIVATE
from lcrypt.schemes.base import SchemeInfo

ATTACKS: dict[str, Attack] = {a.name: a for a in (
    BRUTE_FORCE, FR, FR_GREEDY, JIGSAW, INVERSE_NETWORK, KNOWN_PLAINTEXT, CHOSEN_PLAINTEXT, MODEL_CONVERSION,
    MODEL_CONVERSION_PRIVATE)}
"""Every attack, in the order the report lists them."""


def get_attack(name: str) -> Attack:
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}") from None


def attacks_for(info: SchemeInfo) -> list[Attack]:
    """The attacks that apply to a scheme, by its declared properties."""
    return [a for a in ATTACKS.values() if a.applies_to(info)]


__all__ = ["ATTACKS", "Attack", "Budget", "Outcome", "Target", "attacks_for", "get_attack"]
