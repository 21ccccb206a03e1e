"""Training-step time of owner adapters against one shared input layer, side by side (CPU).

    OMP_NUM_THREADS=1 python bench/owners_step.py [--owners 4] [--steps 30] [--rounds 5]

bench/accuracy_cpu.py's model (ConvMixer-64/4, patch 2, kernel 3, batch 128, 32x32) as one model and
in channels_last as the recipe trains it, and
with ``--owners`` per-owner patch embeddings (training.owners), each sample's owner drawn at random so
every batch mixes all owners. The two alternate in rounds of ``--steps`` forward+backward+AdamW steps on
the same random batches, so a busy machine slows both alike; prints the median of the rounds' images/s
and the ratio. What it leaves out: the loader, which is the same for both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--owners", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    import torch

    from lcrypt.table import format_table
    from training.models import create_model
    from training.owners import owner_model

    torch.manual_seed(0)

    def build():
        model = create_model("convmixer", 10, 32, None, width=64, depth=4, patch=2, kernel=3)
        return model.to(memory_format=torch.channels_last)  # as the recipe's --memory-format

    models = {"shared input layer": build(),
              f"{args.owners} owner adapters": owner_model(build(), args.owners)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    owner = torch.randint(0, args.owners, (args.batch_size,))
    speed: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds + 1):  # the first round warms up and is not counted
        for name, model in models.items():
            extra = (owner,) if "adapters" in name else ()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = torch.nn.functional.cross_entropy(model(x, *extra), y)
                opts[name].zero_grad(set_to_none=True)
                loss.backward()
                opts[name].step()
            speed[name].append(args.steps * args.batch_size / (time.perf_counter() - t0))
    med = {k: statistics.median(v[1:]) for k, v in speed.items()}
    base = med["shared input layer"]
    print(format_table([[k, round(v), f"{v / base:.3f}"] for k, v in med.items()],
                       ["model", "images/s (median of rounds)", "ratio"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
