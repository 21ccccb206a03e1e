"""Loaders for published lcrypt datasets: streaming shards per rank/worker, GPU-resident, augmentation.

Modules: :mod:`loaders.plan` (which samples each rank and worker reads), :mod:`loaders.dataset` (reading
and checking shards; no torch needed), :mod:`loaders.torch_dataset` (the same under torch's DataLoader),
:mod:`loaders.gpu` (a split kept on the device), :mod:`loaders.augment` (encrypted-domain augmentation).
Dependencies point one way: loaders import lcrypt (shard format, manifest, scheme properties), never
the reverse, and never pipelines.
"""
