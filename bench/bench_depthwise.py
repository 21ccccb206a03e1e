"""Depthwise convolution: PyTorch's kernels vs FFT products (training.models.FFTDepthwiseConv2d), side by side.

    .venv/bin/python bench/bench_depthwise.py                 # CPU: small shapes
    python3 bench/bench_depthwise.py --device cuda            # GPU: the ConvMixer-256/8 p1 k9 shapes, batch 512

ConvMixer's 9×9 depthwise convolution is what a patch-1 ConvMixer spends its GPU time on (docs/benchmarks.md,
"Training on GPU": 1,650 img/s on an H100). For each kernel size this times one forward + backward of the
layer alone (direct contiguous, direct channels_last, FFT), then one whole ConvMixer training step
(AdamW) with each implementation; bf16 autocast on CUDA, float32 on CPU. Prints ms and the ratio
direct / FFT (> 1: FFT is faster). Checks first that both give the same output.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcrypt.table import format_table  # noqa: E402
from training.models import FFTDepthwiseConv2d, create_model  # noqa: E402


def timed_ms(fn, device: torch.device, reps: int, rounds: int = 3) -> float:
    """Median over ``rounds`` of the mean ms of ``reps`` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    out = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e3 / reps)
    return statistics.median(out)


def layer_row(batch: int, channels: int, size: int, kernel: int, device: torch.device, reps: int) -> list:
    amp = device.type == "cuda"
    conv = nn.Conv2d(channels, channels, kernel, groups=channels, padding="same").to(device)
    fft = FFTDepthwiseConv2d.from_conv(conv).to(device)
    x = torch.randn(batch, channels, size, size, device=device)
    with torch.no_grad():
        err = (conv(x) - fft(x)).abs().max().item()
    if err > 1e-3:
        raise AssertionError(f"FFT and direct depthwise differ by {err} (kernel {kernel})")

    def step(layer, fmt):
        xin = x.to(memory_format=fmt).requires_grad_(True)

        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                y = layer(xin)
            y.float().sum().backward()
        return run

    direct = timed_ms(step(conv, torch.contiguous_format), device, reps)
    direct_cl = timed_ms(step(conv.to(memory_format=torch.channels_last), torch.channels_last), device, reps)
    f = timed_ms(step(fft, torch.contiguous_format), device, reps)
    return [f"depthwise {channels}×{size}×{size} k{kernel}, batch {batch}", round(direct, 2), round(direct_cl, 2),
            round(f, 2), round(min(direct, direct_cl) / f, 2)]


def model_row(width: int, depth: int, patch: int, kernel: int, batch: int, device: torch.device, reps: int) -> list:
    amp = device.type == "cuda"
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    ms = {}
    for impl in ("direct", "fft"):
        model = create_model("convmixer", 10, 32, width=width, depth=depth, patch=patch, kernel=kernel,
                             depthwise=impl).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            loss = nn.functional.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        ms[impl] = timed_ms(run, device, reps)
    return [f"ConvMixer-{width}/{depth} p{patch} k{kernel} step, batch {batch}", round(ms["direct"], 2), "",
            round(ms["fft"], 2), round(ms["direct"] / ms["fft"], 2),
            f"{batch / ms['direct'] * 1e3:,.0f} → {batch / ms['fft'] * 1e3:,.0f}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, help="default 512 on CUDA, 32 on CPU")
    p.add_argument("--reps", type=int, help="calls per timing round (default 10 on CUDA, 3 on CPU)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batch = args.batch or (512 if cuda else 32)
    reps = args.reps or (10 if cuda else 3)
    rows = [layer_row(batch, 256, 32, k, device, reps) + [""] for k in (3, 5, 9)]
    rows.append(model_row(256, 8, 1, 9, batch, device, reps))
    if not cuda:
        rows.append(model_row(64, 4, 2, 3, 128, device, reps))  # bench/accuracy_cpu.py's model
    print(format_table(rows, ["fwd + bwd", "direct ms", "direct channels_last ms", "FFT ms", "direct / FFT",
                              "img/s"]))
    name = (torch.cuda.get_device_name(device) if cuda
            else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"device: {name}; torch {torch.__version__}; {'bf16 autocast' if cuda else 'float32'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
