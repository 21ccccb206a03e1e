"""training.models: the FFT depthwise convolution is PyTorch's depthwise convolution, computed another way."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.models import FFTDepthwiseConv2d, create_model
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


def test_convmixer_fft_swaps_every_depthwise_layer_and_loads_direct_weights():
    torch.manual_seed(0)
    direct = create_model("convmixer", 10, 16, width=16, depth=3, patch=1, kernel=5).eval()
    fft = create_model("convmixer", 10, 16, width=16, depth=3, patch=1, kernel=5, depthwise="fft").eval()
    assert sum(isinstance(m, FFTDepthwiseConv2d) for m in fft.modules()) == 3
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in fft.modules())
    fft.load_state_dict(direct.state_dict())  # same parameter names and shapes
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fft(x), direct(x), rtol=1e-4, atol=1e-4)
    # a checkpoint records the choice (model_config), and predict rebuilds the same layers from it
    ckpt = {"model_config": {"name": "convmixer", "adapt": "none", "width": 16, "depth": 3, "patch": 1,
                             "kernel": 5, "depthwise": "fft"},
            "class_names": [str(i) for i in range(10)], "image_shape": [16, 16, 3], "model": fft.state_dict()}
    rebuilt = load_model(ckpt)
    assert sum(isinstance(m, FFTDepthwiseConv2d) for m in rebuilt.modules()) == 3
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), fft(x))


def test_fft_depthwise_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="odd kernel"):
        FFTDepthwiseConv2d(4, 4)
    with pytest.raises(ValueError, match="choose direct or fft"):
        create_model("convmixer", 10, 16, width=8, depth=1, depthwise="winograd")
