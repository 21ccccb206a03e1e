"""Depthwise convolution: PyTorch's kernels vs FFT products vs the Triton kernel (training.depthwise),
side by side.

    .venv/bin/python bench/bench_depthwise.py       # CPU: small shapes (no Triton column)
    python3 bench/bench_depthwise.py --device cuda  # GPU: the ConvMixer-256/8 p1 k9 shapes, batch 512

ConvMixer's 9×9 depthwise convolution is what a patch-1 ConvMixer spends its GPU time on (docs/benchmarks.md,
"Training on GPU": 1,650 img/s on an H100). For each kernel size this times one forward + backward of the
layer alone (direct contiguous, direct channels_last, FFT, and on CUDA the Triton kernel on channels_last),
then one whole ConvMixer training step (AdamW) with each implementation; bf16 autocast on CUDA, float32
on CPU. Prints ms and the best direct time over each alternative's (> 1: the alternative is faster).
Checks first that every implementation gives the direct output. On CUDA it ends with the Triton
kernel's block sizes (output positions × channels per program) swept on the k9 layer.
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
from training.depthwise import FFTDepthwiseConv2d, TritonDepthwiseConv2d  # noqa: E402
from training.models import create_model  # noqa: E402


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
    alt = {"fft": FFTDepthwiseConv2d.from_conv(conv)}
    if amp:
        alt["triton"] = TritonDepthwiseConv2d.from_conv(conv)
    x = torch.randn(batch, channels, size, size, device=device)
    with torch.no_grad():
        want = conv(x)
        for name, layer in alt.items():
            err = (want - layer(x.contiguous(memory_format=torch.channels_last))).abs().max().item()
            if err > 1e-3:
                raise AssertionError(f"{name} and direct depthwise differ by {err} (kernel {kernel})")

    def step(layer, fmt):
        xin = x.to(memory_format=fmt).requires_grad_(True)

        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                y = layer(xin)
            y.float().sum().backward()
        return run

    direct = timed_ms(step(conv, torch.contiguous_format), device, reps)
    direct_cl = timed_ms(step(conv.to(memory_format=torch.channels_last), torch.channels_last), device, reps)
    f = timed_ms(step(alt["fft"], torch.contiguous_format), device, reps)
    t = timed_ms(step(alt["triton"], torch.channels_last), device, reps) if amp else None
    best = min(direct, direct_cl)
    label = f"depthwise {channels}×{size}×{size} k{kernel}, batch {batch}"
    return [label, round(direct, 2), round(direct_cl, 2), round(f, 2), round(best / f, 2),
            *((round(t, 2), round(best / t, 2)) if amp else ("-", "-"))]


def triton_sweep(batch: int, channels: int, size: int, kernel: int, device: torch.device, reps: int) -> list:
    """fwd + bwd ms of the Triton layer on channels_last bf16 for several block sizes (positions × channels
    per program, and positions per program of the weight gradient)."""
    conv = nn.Conv2d(channels, channels, kernel, groups=channels, padding="same").to(device)
    layer = TritonDepthwiseConv2d.from_conv(conv)
    xin = torch.randn(batch, channels, size, size, device=device).to(memory_format=torch.channels_last)
    xin.requires_grad_(True)
    rows = []
    for bp, bc, wbp in ((32, 32, 256), (64, 32, 256), (128, 32, 256), (32, 64, 256), (64, 64, 256),
                        (128, 16, 256), (64, 32, 128), (64, 32, 512), (64, 32, 1024)):
        layer.block_p, layer.block_c, layer.wgrad_block_p = bp, bc, wbp

        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = layer(xin)
            y.float().sum().backward()
        rows.append([f"{bp} × {bc}, weight grad {wbp} × {bc}", round(timed_ms(run, device, reps), 2)])
    return rows


def model_row(width: int, depth: int, patch: int, kernel: int, batch: int, device: torch.device,
              reps: int) -> list:
    amp = device.type == "cuda"
    fmt = torch.channels_last if amp else torch.contiguous_format
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    ms = {}
    for impl in ("direct", "fft", *(("triton",) if amp else ())):
        model = create_model("convmixer", 10, 32, width=width, depth=depth, patch=patch, kernel=kernel,
                             depthwise=impl).to(device)
        if impl == "triton":  # its fast layout; direct and FFT run contiguous, their faster one
            model = model.to(memory_format=torch.channels_last)
        xi = x if impl == "triton" else x.contiguous()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(xi)
            loss = nn.functional.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        ms[impl] = timed_ms(run, device, reps)
    t = ms.get("triton")
    return [f"ConvMixer-{width}/{depth} p{patch} k{kernel} step, batch {batch}", round(ms["direct"], 2), "",
            round(ms["fft"], 2), round(ms["direct"] / ms["fft"], 2),
            *((round(t, 2), round(ms["direct"] / t, 2)) if t else ("-", "-")),
            " → ".join(f"{batch / v * 1e3:,.0f}" for v in ms.values())]


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
                              "Triton ms", "direct / Triton", "img/s (direct → FFT → Triton)"]))
    if cuda:
        sweep = triton_sweep(batch, 256, 32, 9, device, reps)
        print(format_table(sweep, ["Triton k9 blocks (positions × channels)", "fwd + bwd ms"]))
    name = (torch.cuda.get_device_name(device) if cuda
            else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"device: {name}; torch {torch.__version__}; {'bf16 autocast' if cuda else 'float32'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
