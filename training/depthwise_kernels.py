"""The Triton kernels behind :class:`training.depthwise.TritonDepthwiseConv2d` (the equations are there).

Separate so that importing training.depthwise never imports Triton (CPU-only PyTorch builds have none),
and at module level so that Triton's compiler and its interpreter (``TRITON_INTERPRET=1``, used by the
tests) both resolve one kernel's call of another.
"""

import triton
import triton.language as tl


@triton.jit
def shifted_tile(x_img, oh, ow, pmask, cmask, H, W, sxh, sxw, di, dj):
    """x[h + di, w + dj] for the tile's positions (zero outside the image), as float32."""
    ih, iw = oh + di, ow + dj
    m = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    tile = tl.load(x_img + (ih * sxh + iw * sxw)[:, None], mask=m[:, None] & cmask[None, :], other=0)
    return tile.to(tl.float32)


@triton.jit
def conv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, H, W, sxb, sxc, sxh, sxw, syb, syc, syh, syw,
                K: tl.constexpr, FLIP: tl.constexpr, HAS_BIAS: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # output positions h * W + w
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    img = tl.program_id(2).to(tl.int64)
    oh, ow = p // W, p % W
    pmask, cmask = p < H * W, c < C
    x_img = x_ptr + img * sxb + c[None, :] * sxc
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            xv = shifted_tile(x_img, oh, ow, pmask, cmask, H, W, sxh, sxw, i - K // 2, j - K // 2)
            if FLIP:
                tap = (K - 1 - i) * K + (K - 1 - j)
            else:
                tap = i * K + j
            acc += xv * tl.load(w_ptr + tap * C + c, mask=cmask, other=0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cmask, other=0)[None, :]
    out = y_ptr + img * syb + c[None, :] * syc + (oh * syh + ow * syw)[:, None]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


@triton.jit
def weight_grad_kernel(x_ptr, g_ptr, out_ptr, C, H, W, sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw,
                       K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    img = tl.program_id(2).to(tl.int64)
    oh, ow = p // W, p % W
    pmask, cmask = p < H * W, c < C
    x_img = x_ptr + img * sxb + c[None, :] * sxc
    g = shifted_tile(g_ptr + img * sgb + c[None, :] * sgc, oh, ow, pmask, cmask, H, W, sgh, sgw, 0, 0)
    row = out_ptr + (img * tl.num_programs(0) + tl.program_id(0)) * (K * K * C) + c
    for i in tl.static_range(K):  # g is read once and used k² times
        for j in tl.static_range(K):
            xv = shifted_tile(x_img, oh, ow, pmask, cmask, H, W, sxh, sxw, i - K // 2, j - K // 2)
            tl.store(row + (i * K + j) * C, tl.sum(xv * g, axis=0), mask=cmask)
