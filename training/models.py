"""Model registry: the papers' backbones, built from timm, with optional adaptation networks in front.

``create_model(name, num_classes, image_size, block_size, adapt=..., **kw)``, timm-style:

* ``convmixer`` — timm's ConvMixer of any ``width``/``depth``/``patch``/``kernel`` (Trockman & Kolter; the
  EtC paper uses 256/8 patch 1 kernel 9 on CIFAR-10 and 384/8 patch 4 kernel 9 on Imagenette);
  ``depthwise="fft"`` computes its depthwise convolutions as products in the frequency domain
  (:class:`FFTDepthwiseConv2d`, same parameters and result), an alternative to PyTorch's depthwise
  kernels, whose backward pass is slow for large kernels on GPUs (pytorch/pytorch#18631);
* ``vit`` — timm's VisionTransformer with patch size = the scheme's block size (EtC paper, sec. III-C:
  patch embedding absorbs a block-wise cipher only when patches and blocks coincide);
* ``resnet18`` — timm's ResNet-18 with a CIFAR stem (3×3 stride-1 first conv, no max-pool) for small
  images, as in Sirichotedumrong et al.;
* ``adapt="pe"`` / ``adapt="block"`` put :mod:`training.adaptation`'s networks in front of any of them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from training.adaptation import Adapted, BlockAdaptation, PEAdaptation

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        _MODELS[name] = fn
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


class FFTDepthwiseConv2d(nn.Module):
    """A depthwise, stride-1, 'same'-padded convolution computed with FFTs: conv = product of spectra.

    Holds the same ``weight`` (C, 1, k, k) and ``bias`` (C,) as the ``nn.Conv2d`` it replaces, so state
    dicts load either way. Linear (not circular) convolution: both operands are zero-padded to
    (H + k - 1, W + k - 1); PyTorch's convolution is a cross-correlation, hence the flipped kernel, and
    the 'same' output is the full output cropped from offset k // 2. The cost does not grow with the
    kernel size, and autograd's backward is two more FFT products. Computed in float32 (cuFFT has no
    bfloat16), returned in the input's dtype.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"FFT depthwise convolution needs an odd kernel ('same' padding), got {kernel_size}")
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "FFTDepthwiseConv2d":
        out = cls(conv.out_channels, conv.kernel_size[0], conv.bias is not None)
        out.weight.data.copy_(conv.weight.data)
        if conv.bias is not None:
            out.bias.data.copy_(conv.bias.data)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k, p = self.kernel_size, self.kernel_size // 2
        size = (h + k - 1, w + k - 1)
        xf = torch.fft.rfft2(x.float(), s=size)
        wf = torch.fft.rfft2(self.weight.float().flip(-1, -2)[:, 0], s=size)
        y = torch.fft.irfft2(xf * wf, s=size)[..., p:p + h, p:p + w]
        if self.bias is not None:
            y = y + self.bias.float()[:, None, None]
        return y.to(x.dtype)


def use_fft_depthwise(model: nn.Module) -> nn.Module:
    """Replace every depthwise, stride-1, 'same' ``nn.Conv2d`` with odd kernel > 1 by FFTDepthwiseConv2d."""
    for name, child in model.named_children():
        if (isinstance(child, nn.Conv2d) and child.groups == child.in_channels == child.out_channels
                and child.kernel_size[0] == child.kernel_size[1] > 1 and child.kernel_size[0] % 2 == 1
                and child.stride == (1, 1) and child.dilation == (1, 1)
                and child.padding in ("same", (child.kernel_size[0] // 2,) * 2)):
            setattr(model, name, FFTDepthwiseConv2d.from_conv(child))
        else:
            use_fft_depthwise(child)
    return model


@register("convmixer")
def convmixer(num_classes: int, image_size: int, block_size: int | None = None, width: int = 256,
              depth: int = 8, patch: int = 1, kernel: int = 9, depthwise: str = "direct", **_: Any) -> nn.Module:
    from timm.models.convmixer import ConvMixer

    model = ConvMixer(dim=width, depth=depth, kernel_size=kernel, patch_size=patch, num_classes=num_classes)
    if depthwise == "fft":
        return use_fft_depthwise(model)
    if depthwise != "direct":
        raise ValueError(f"unknown depthwise implementation {depthwise!r}; choose direct or fft")
    return model


@register("vit")
def vit(num_classes: int, image_size: int, block_size: int | None = None, width: int = 192, depth: int = 6,
        patch: int | None = None, heads: int | None = None, **_: Any) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    patch = patch or block_size or 4
    if image_size % patch:
        raise ValueError(f"ViT patch size {patch} does not divide the image size {image_size}")
    return VisionTransformer(img_size=image_size, patch_size=patch, embed_dim=width, depth=depth,
                             num_heads=heads or max(1, width // 64), num_classes=num_classes)


@register("resnet18")
def resnet18(num_classes: int, image_size: int, block_size: int | None = None, **_: Any) -> nn.Module:
    import timm

    model = timm.create_model("resnet18", num_classes=num_classes, pretrained=False)
    if image_size <= 64:  # CIFAR stem
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def create_model(name: str, num_classes: int, image_size: int, block_size: int | None = None,
                 adapt: str | None = None, **kwargs: Any) -> nn.Module:
    """Build ``name`` for ``num_classes`` and square ``image_size``, with an optional adaptation network."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    backbone = _MODELS[name](num_classes=num_classes, image_size=image_size, block_size=block_size, **kwargs)
    if adapt in (None, "", "none"):
        return backbone
    if adapt == "pe":
        return Adapted(PEAdaptation(), backbone)
    if adapt == "block":
        if not block_size:
            raise ValueError("--adapt block needs a block-wise scheme (the manifest's block size is empty)")
        return Adapted(BlockAdaptation(block_size), backbone)
    raise ValueError(f"unknown adaptation {adapt!r}; choose none, pe or block")
