"""The scheme registry: ``get_scheme(name, **params)``, ``list_schemes()`` and ``register_scheme(cls)``.

One module per scheme here; a scheme defined elsewhere joins with ``register_scheme`` (its
:class:`SchemeInfo` declares what it does, so the attacks of ``lcrypt evaluate`` know which apply).

| name              | module             | paper                                         |
|-------------------|--------------------|-----------------------------------------------|
| `plain`           | plain.py           | identity baseline                             |
| `le`              | le.py              | Tanaka 2018                                   |
| `block-shuffle`   | block_shuffle.py   | Tanaka 2018, naive baseline                   |
| `catmap`          | catmap.py          | Tanaka 2018, combined cat map baseline [9]    |
| `pe`              | pe.py              | Sirichotedumrong et al. 2019                  |
| `etc`             | etc.py             | MaungMaung & Kiya 2022 (Chuman et al. 2019)   |
| `ele`             | ele.py             | Madono et al. 2020                            |
| `cpbe`            | cpbe.py            | Ahmad & Shin 2022                             |
| `ahmad-diffusion` | ahmad_diffusion.py | Ahmad & Shin, eq. 2-4                         |
| `blockwise`       | blockwise.py       | AprilPyone & Kiya 2021; Kiya et al. 2022      |
"""

from __future__ import annotations

from typing import Any

from lcrypt.schemes.base import Scheme, SchemeInfo
from lcrypt.schemes.ahmad_diffusion import AhmadDiffusion
from lcrypt.schemes.block_shuffle import BlockShuffle
from lcrypt.schemes.blockwise import Blockwise
from lcrypt.schemes.catmap import CatMap
from lcrypt.schemes.cpbe import CPBE
from lcrypt.schemes.ele import ELE
from lcrypt.schemes.etc import EtC
from lcrypt.schemes.le import LE
from lcrypt.schemes.pe import PE
from lcrypt.schemes.plain import Plain

_SCHEMES: dict[str, type[Scheme]] = {
    cls.name: cls for cls in (Plain, LE, BlockShuffle, CatMap, PE, EtC, ELE, CPBE, AhmadDiffusion,
                                Blockwise)
}


def list_schemes() -> list[str]:
    """Names of every registered scheme, in the order of the table above."""
    return list(_SCHEMES)


def register_scheme(cls: type[Scheme]) -> type[Scheme]:
    """Add a :class:`Scheme` subclass under its ``name`` (usable as a class decorator). A name already
    registered is refused: two schemes under one name would make ciphertexts ambiguous."""
    named = isinstance(getattr(cls, "name", None), str)
    if not (isinstance(cls, type) and issubclass(cls, Scheme) and named):
        raise TypeError(f"register_scheme takes a Scheme subclass with a name, got {cls!r}")
    if cls.name in _SCHEMES:
        raise ValueError(f"scheme name {cls.name!r} is already registered ({_SCHEMES[cls.name].__name__}); "
                         "choose another name")
    _SCHEMES[cls.name] = cls
    return cls


def get_scheme(name: str, **params: Any) -> Scheme:
    """A scheme object by registry name, e.g. ``get_scheme("etc", block_size=16)``."""
    try:
        cls = _SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown scheme {name!r}; choose one of: {', '.join(_SCHEMES)}") from None
    return cls(**params)


__all__ = ["Scheme", "SchemeInfo", "get_scheme", "list_schemes", "register_scheme"]
