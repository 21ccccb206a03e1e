"""ConvMixer's depthwise convolution three ways: PyTorch's kernels, FFT products, or a Triton kernel.

A patch-1 ConvMixer-256/8 with 9×9 kernels spends most of its GPU step in the depthwise convolution,
where PyTorch's kernels are far slower than the pointwise layers (figures: docs/benchmarks.md, "Training
on GPU"). Both replacements keep the ``nn.Conv2d``'s ``weight`` (C, 1, k, k)
and ``bias`` (C,), so state dicts load either way and a checkpoint trained with one runs with another:

* :class:`FFTDepthwiseConv2d` — a product of spectra; its cost does not grow with the kernel.
* :class:`TritonDepthwiseConv2d` — a direct kernel in Triton for channels_last activations, where one
  tap of the kernel is a contiguous vector load over channels; the backward pass is the same kernel
  with the filter flipped (input gradient) and a reduction per tile of positions (weight gradient). On
  a CPU tensor it falls back to ``F.conv2d`` (or runs in Triton's interpreter under
  ``TRITON_INTERPRET=1``, which is how the tests check it without a GPU).

The convolution, as PyTorch defines it (a cross-correlation), stride 1, 'same' zero padding P = k // 2::

    y[b, c, h, w]  = bias[c] + Σ_ij x[b, c, h + i - P, w + j - P] · W[c, i, j]
    ∂L/∂x[b,c,h,w] = Σ_ij g[b, c, h + i - P, w + j - P] · W[c, k-1-i, k-1-j]     (the flipped filter)
    ∂L/∂W[c, i, j] = Σ_bhw g[b, c, h, w] · x[b, c, h + i - P, w + j - P]
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F


def is_same_depthwise(m: nn.Module) -> bool:
    """A depthwise, stride-1, 'same'-padded ``nn.Conv2d`` with an odd square kernel > 1: what both
    replacements compute."""
    return (isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels
            and m.kernel_size[0] == m.kernel_size[1] > 1 and m.kernel_size[0] % 2 == 1
            and m.stride == (1, 1) and m.dilation == (1, 1)
            and m.padding in ("same", (m.kernel_size[0] // 2,) * 2) and m.padding_mode == "zeros")


class _DepthwiseParams(nn.Module):
    """The parameters of the ``nn.Conv2d`` a replacement stands for (same names and shapes)."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"{type(self).__name__} needs an odd kernel ('same' padding), got {kernel_size}")
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d):
        out = cls(conv.out_channels, conv.kernel_size[0], conv.bias is not None)
        out.weight.data.copy_(conv.weight.data)
        if conv.bias is not None:
            out.bias.data.copy_(conv.bias.data)
        return out.to(conv.weight.device)


class FFTDepthwiseConv2d(_DepthwiseParams):
    """conv = product of spectra. Linear (not circular) convolution: both operands are zero-padded to
    (H + k - 1, W + k - 1); PyTorch's convolution is a cross-correlation, hence the flipped kernel, and
    the 'same' output is the full output cropped from offset k // 2. Autograd's backward is two more FFT
    products. Computed in float32 (cuFFT has no bfloat16), returned in the input's dtype."""

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


class TritonDepthwiseConv2d(_DepthwiseParams):
    """The direct convolution as a Triton kernel (channels_last is its fast layout; any strides work).

    ``block_p`` output positions × ``block_c`` channels per program: each of the k² taps is one masked
    load of that tile, shifted, from cache. ``wgrad_block_p`` positions per program in the weight
    gradient, whose (image, tile) partial sums are then added (larger tiles: fewer partial sums).
    Accumulates in float32 and returns the input's dtype.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True, block_p: int = 64,
                 block_c: int = 32, wgrad_block_p: int = 256):
        super().__init__(channels, kernel_size, bias)
        self.block_p, self.block_c, self.wgrad_block_p = block_p, block_c, wgrad_block_p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda or (os.environ.get("TRITON_INTERPRET") == "1"):
            blocks = (self.block_p, self.block_c, self.wgrad_block_p)
            return _TritonDepthwise.apply(x, self.weight, self.bias, blocks)
        return F.conv2d(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype),
                        padding=self.kernel_size // 2, groups=x.shape[1])


IMPLEMENTATIONS = {"fft": FFTDepthwiseConv2d, "triton": TritonDepthwiseConv2d}
CHOICES = ("direct", *IMPLEMENTATIONS)  # "direct" keeps PyTorch's nn.Conv2d


def replace_depthwise(model: nn.Module, impl: str) -> nn.Module:
    """Swap every depthwise 'same' ``nn.Conv2d`` of ``model`` for ``impl`` ('direct' keeps PyTorch's)."""
    if impl == "direct":
        return model
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown depthwise implementation {impl!r}; choose {', '.join(CHOICES)}")
    for name, child in model.named_children():
        if is_same_depthwise(child):
            setattr(model, name, IMPLEMENTATIONS[impl].from_conv(child))
        else:
            replace_depthwise(child, impl)
    return model


# -- the Triton path: autograd and launches (the kernels: training/depthwise_kernels.py) ------------------
class _TritonDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, blocks: tuple[int, int, int]):
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.blocks = bias is not None, blocks
        return depthwise_conv(x, weight, bias, flip=False, block_p=blocks[0], block_c=blocks[1])

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        block_p, block_c, wgrad_block_p = ctx.blocks
        cl = torch.channels_last
        if x.is_contiguous(memory_format=cl) and not g.is_contiguous(memory_format=cl):
            g = g.contiguous(memory_format=cl)  # one copy, then channel-contiguous loads
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = depthwise_conv(g, weight, None, flip=True, block_p=block_p, block_c=block_c)
        if ctx.needs_input_grad[1]:
            gw = depthwise_weight_grad(x, g, weight.shape[-1], block_p=wgrad_block_p, block_c=block_c)
            gw = gw.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.float().sum((0, 2, 3)).to(weight.dtype)
        return gx, gw, gb, None


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   flip: bool = False, block_p: int = 64, block_c: int = 32) -> torch.Tensor:
    """y = depthwise 'same' convolution of x (B, C, H, W) with weight (C, 1, k, k) (flipped: the input
    gradient's), in x's dtype and memory layout."""
    from training.depthwise_kernels import conv_kernel  # imports Triton: only when a Triton layer runs

    b, c, h, w = x.shape
    k = weight.shape[-1]
    y = torch.empty_like(x)
    # (k², C): one tap's weights are contiguous
    wt = weight.detach().reshape(c, k * k).t().float().contiguous()
    bt = bias.detach().float().contiguous() if bias is not None else wt  # unread when HAS_BIAS is False
    grid = (_cdiv(h * w, block_p), _cdiv(c, block_c), b)
    conv_kernel[grid](x, wt, bt, y, c, h, w, *x.stride(), *y.stride(), K=k, FLIP=flip,
                      HAS_BIAS=bias is not None, BLOCK_P=block_p, BLOCK_C=block_c,
                      num_warps=_warps(block_p * block_c))
    return y


def depthwise_weight_grad(x: torch.Tensor, g: torch.Tensor, k: int, block_p: int = 256, block_c: int = 32
                          ) -> torch.Tensor:
    """∂L/∂W (C, 1, k, k) in float32 from the layer's input x and output gradient g (both (B, C, H, W)):
    a program holds one tile of g (positions × channels) and sums each tap's product with the shifted x
    tile over its positions; the (image, tile) partial sums are added up here."""
    from training.depthwise_kernels import weight_grad_kernel

    b, c, h, w = x.shape
    tiles = _cdiv(h * w, block_p)
    partial = torch.empty(b * tiles, k * k, c, device=x.device, dtype=torch.float32)
    grid = (tiles, _cdiv(c, block_c), b)
    weight_grad_kernel[grid](x, g, partial, c, h, w, *x.stride(), *g.stride(), K=k, BLOCK_P=block_p,
                             BLOCK_C=block_c, num_warps=_warps(block_p * block_c))
    return partial.sum(0).t().reshape(c, 1, k, k)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _warps(tile: int) -> int:
    """Warps per program: ~16 tile elements per thread keeps a tile and its shifted copy in registers."""
    return max(4, min(16, tile // 512))
