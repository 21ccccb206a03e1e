"""Loaders for published lcrypt datasets: streaming shards per rank/worker, GPU-resident, augmentation.

Dependencies point one way: loaders import lcrypt (shard format, manifest, scheme properties), never
the reverse, and never pipelines.
"""

from loaders.augment import AugmentConfig, EncryptedAugment, normalize
from loaders.dataset import KeyMismatchError, ShardDataset, check_key_ids, load_manifest, make_loader
from loaders.plan import EpochPlan, plan_epoch

__all__ = ["AugmentConfig", "EncryptedAugment", "normalize", "KeyMismatchError", "ShardDataset",
           "check_key_ids", "load_manifest", "make_loader", "EpochPlan", "plan_epoch"]
