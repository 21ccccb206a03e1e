"""What every attack shares: what it is given (:class:`Target`), what it returns (:class:`Outcome`), and
how it says which schemes it applies to (:class:`Attack`).

An attack decides from the scheme's declared properties (:class:`lcrypt.schemes.base.SchemeInfo`:
``steps``, ``key_form``, ``block_size``), never from its name, so a scheme registered from outside is
attacked by every attack its declaration fits, and by none that would not make sense.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from lcrypt.schemes.base import Scheme, SchemeInfo

THREAT_MODELS = ("brute-force", "ciphertext-only", "known-plaintext", "chosen-plaintext", "public-model")


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much work the slow attacks may do (the CPU defaults of ``lcrypt evaluate``)."""

    jigsaw_images: int = 10          # images the full-variant jigsaw solver attacks (the first ones)
    jigsaw_restarts: int = 2
    itn_steps: int = 150             # inverse-network training steps; 0 = do not run it
    threads: int | None = 2          # torch CPU threads for the inverse network


@dataclasses.dataclass(frozen=True)
class Target:
    """One scheme's ciphertexts and what the threat models grant the adversary besides.

    Ciphertext-only attacks read ``cipher`` and ``known`` (plain look-alikes from the same distribution,
    never the target images) and may encrypt under keys of their own; known- and chosen-plaintext attacks
    may also call ``owner_encrypt`` (the owner's key, as an encryption oracle). Public-model attacks call
    ``owner_convert``: the owner publishing a model converted with its key from the weights given
    (``patch``, ``bias``, ``pos`` arrays); None when the scheme's key does not fold into a model.
    """

    scheme: Scheme
    cipher: np.ndarray                                  # (N, H, W, 3) uint8 under the owner's key
    known: np.ndarray                                   # (K, H, W, 3) uint8 plain images the adversary holds
    owner_encrypt: Callable[[np.ndarray], np.ndarray]
    budget: Budget = Budget()
    owner_convert: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None


@dataclasses.dataclass
class Outcome:
    """What one attack produced.

    ``reconstruction``: its estimate of the plain images of the first ``len(reconstruction)`` ciphertexts
    (None for brute force). ``notes``: figures the report prints beside the score (pairs, method, images,
    key-space bits). ``key``: a recovered effective key, to be compared with the true one. ``grids`` and
    ``block``: where a block solver put each block, to be compared with the true positions.
    ``equivalents``: for a result defined only up to a global symmetry no attack can fix, every
    equivalent ``(image, grid)`` of one solved ``(image, grid)``; the evaluator's oracle then picks one
    (generous to the attacker; the report says so). ``skipped``: why the attack did not run.
    """

    reconstruction: np.ndarray | None = None
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)
    key: Any = None
    grids: np.ndarray | None = None
    block: int | None = None
    equivalents: Callable[[np.ndarray, np.ndarray], list[tuple[np.ndarray, np.ndarray]]] | None = None
    skipped: str | None = None


@dataclasses.dataclass(frozen=True)
class Attack:
    """One attack: its threat model, whether it applies to a scheme, and its entry point."""

    name: str
    threat_model: str
    summary: str
    applies_to: Callable[[SchemeInfo], bool]
    run: Callable[[Target], Outcome]

    def __post_init__(self) -> None:
        if self.threat_model not in THREAT_MODELS:
            raise ValueError(f"attack {self.name!r}: threat model {self.threat_model!r} is not one of "
                             f"{THREAT_MODELS}")


def changes_the_image(info: SchemeInfo) -> bool:
    """True for every scheme but the identity: the attacks on images have something to undo."""
    return bool(info.steps)
