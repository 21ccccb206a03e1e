"""Apache Beam pipelines that turn raw image datasets into encrypted, published datasets.

Beam code here holds no image logic: its transforms call lcrypt functions (readers, decode rules,
schemes, the shard format) on batches. ``python -m pipelines.prepare`` / ``lcrypt prepare`` is the
entry point; ``python -m pipelines.demo`` runs it end to end on images made on the spot.
"""
