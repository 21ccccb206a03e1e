"""training.models and training.depthwise: the FFT and Triton depthwise convolutions are PyTorch's, computed
another way."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.depthwise import IMPLEMENTATIONS, FFTDepthwiseConv2d
from training.models import create_model
from training.predict import load_model


@pytest.mark.parametrize("kernel", [3, 9])
def test_fft_depthwise_matches_conv2d_forward_and_gradients(kernel):
    torch.manual_seed(kernel)
    conv = nn.Conv2d(8, 8, kernel, groups=8, padding="same")
    fft = FFTDepthwiseConv2d.from_conv(conv)
    x = torch.randn(3, 8, 12, 12, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    g = torch.randn(3, 8, 12, 12)
    (conv(x) * g).sum().backward()
    (fft(x2) * g).sum().backward()
    torch.testing.assert_close(fft(x2), conv(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fft.weight.grad, conv.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fft.bias.grad, conv.bias.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["fft", "triton"])
def test_convmixer_swaps_every_depthwise_layer_and_loads_direct_weights(impl):
    """(On CPU the Triton layer computes with F.conv2d: this checks the swap, names and rebuild.)"""
    layer = IMPLEMENTATIONS[impl]
    torch.manual_seed(0)
    direct = create_model("convmixer", 10, 16, width=16, depth=3, patch=1, kernel=5).eval()
    other = create_model("convmixer", 10, 16, width=16, depth=3, patch=1, kernel=5, depthwise=impl).eval()
    assert sum(isinstance(m, layer) for m in other.modules()) == 3
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in other.modules())
    other.load_state_dict(direct.state_dict())  # same parameter names and shapes
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(other(x), direct(x), rtol=1e-4, atol=1e-4)
    # a checkpoint records the choice (model_config), and predict rebuilds the same layers from it
    ckpt = {"model_config": {"name": "convmixer", "adapt": "none", "width": 16, "depth": 3, "patch": 1,
                             "kernel": 5, "depthwise": impl},
            "class_names": [str(i) for i in range(10)], "image_shape": [16, 16, 3],
            "model": other.state_dict()}
    rebuilt = load_model(ckpt)
    assert sum(isinstance(m, layer) for m in rebuilt.modules()) == 3
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), other(x))


def test_fft_depthwise_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="odd kernel"):
        FFTDepthwiseConv2d(4, 4)
    with pytest.raises(ValueError, match="choose direct, fft, triton"):
        create_model("convmixer", 10, 16, width=8, depth=1, depthwise="winograd")


# The Triton kernel runs on a GPU; here Triton's interpreter runs the same kernel code on CPU tensors
# (TRITON_INTERPRET=1 must be set before triton is imported, hence a fresh process).
TRITON_CHECK = r"""
import torch
from torch import nn
from torch.nn import functional as F
from training.depthwise import TritonDepthwiseConv2d
from training.models import create_model

torch.manual_seed(0)
# (batch, channels, H, W, kernel, layout, dtype): tails in positions and channels (blocks of 16 or 32 x 4), a
# kernel wider than the image, both layouts, half precision (accumulated in float32)
cases = [(2, 5, 7, 9, 3, "contiguous", torch.float32), (2, 6, 8, 8, 9, "channels_last", torch.float32),
         (1, 3, 5, 11, 5, "channels_last", torch.float16)]
for b, c, h, w, k, layout, dtype in cases:
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    conv = nn.Conv2d(c, c, k, groups=c, padding=k // 2)
    tri = TritonDepthwiseConv2d.from_conv(conv)
    tri.block_p, tri.block_c, tri.wgrad_block_p = 16, 4, 32
    x = torch.randn(b, c, h, w).to(dtype).contiguous(memory_format=fmt).requires_grad_(True)
    g = torch.randn(b, c, h, w).to(dtype)
    y = tri(x)
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt), (y.dtype, y.stride())
    (y.float() * g.float()).sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    w64 = conv.weight.detach().double().requires_grad_(True)
    b64 = conv.bias.detach().double().requires_grad_(True)
    ref = F.conv2d(x64, w64, b64, padding=k // 2, groups=c)
    (ref * g.double()).sum().backward()
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.double(), ref, **tol)
    torch.testing.assert_close(x.grad.double(), x64.grad, **tol)
    torch.testing.assert_close(tri.weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(tri.bias.grad.double(), b64.grad, rtol=1e-4, atol=1e-3)

# a whole ConvMixer: the same loss and parameter gradients as with PyTorch's depthwise layers
direct = create_model("convmixer", 10, 8, width=8, depth=2, patch=1, kernel=5)
tri = create_model("convmixer", 10, 8, width=8, depth=2, patch=1, kernel=5, depthwise="triton")
assert sum(type(m).__name__ == "TritonDepthwiseConv2d" for m in tri.modules()) == 2
tri.load_state_dict(direct.state_dict())
x, y = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (4,))
for m in (direct, tri):
    m.to(memory_format=torch.channels_last)
    F.cross_entropy(m(x), y).backward()
for (name, p), q in zip(direct.named_parameters(), tri.parameters()):
    torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
print("ok")
"""


def test_triton_depthwise_matches_conv2d_in_triton_interpreter():
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs CUDA (the interpreter test above runs everywhere)")
def test_triton_depthwise_matches_conv2d_on_cuda_in_bf16():
    from training.depthwise import TritonDepthwiseConv2d

    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 9, groups=64, padding=4).cuda()
    tri = TritonDepthwiseConv2d.from_conv(conv)
    x = torch.randn(8, 64, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    g = torch.randn(8, 64, 32, 32, device="cuda")
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ya, yb = conv(xa), tri(xb.bfloat16())
    (ya.float() * g).sum().backward()
    (yb.float() * g).sum().backward()
    torch.testing.assert_close(yb.float(), ya.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(tri.weight.grad, conv.weight.grad, rtol=2e-2, atol=0.5)
