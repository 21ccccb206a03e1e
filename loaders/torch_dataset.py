"""ShardDataset as a torch ``IterableDataset``.

A module of its own for two reasons: ``loaders.dataset`` imports without torch (lcrypt users may not
have it), and DataLoader workers started by a forkserver receive the dataset pickled, so its class
must be importable by name (a class made inside a function is not).
"""

from __future__ import annotations

import torch.utils.data

from loaders.dataset import ShardDataset


class TorchShardDataset(ShardDataset, torch.utils.data.IterableDataset):
    """:class:`loaders.dataset.ShardDataset`, iterable by ``torch.utils.data.DataLoader``."""
