"""lcrypt: learnable image encryption for training on images nobody else can see.

Public API: :class:`Key`, :func:`get_scheme`, :func:`list_schemes`.
"""

from lcrypt.keys import Key, KeyFileError
from lcrypt.schemes import get_scheme, list_schemes

__version__ = "0.1.0"
__all__ = ["Key", "KeyFileError", "get_scheme", "list_schemes", "__version__"]
