"""Training and inference on encrypted datasets (torchrun DDP, timm models, adaptation networks).

``train.py`` is the run (setup, ``train_one_epoch``, ``validate``, the loop); it reads ``args.py`` (flags
and their checks), ``data.py`` (the dataset's checks and loaders), ``models.py`` (the model and
adaptation registries), ``optim.py``, ``checkpoint.py``, ``distributed.py`` and ``outdir.py`` (the
``--out`` lock, metrics and summary). ``predict.py`` is the client side: it reads a checkpoint and
classifies images encrypted with the owner's key.
"""
