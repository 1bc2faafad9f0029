"""RoMa's local correlation computed from one matrix product instead of per-sample lookups.

Each refiner compares a query feature with the (2r+1)^2 candidate features in a window
around its current match. romatch's pure-PyTorch path bilinearly samples every window
with ``grid_sample``, writes a (C x H x W x K) tensor and multiplies it out, one image
at a time: on the CPU that was a third of a query's decode time.

The window offsets are whole pixels, so all K samples of one query pixel share its
bilinear fractions. Every sample is therefore a fixed mix of four dot products with
candidate pixels at integer positions, and those dot products are entries of the
(HW x HW) correlation matrix, which a batched matmul produces far faster than the
lookups. That matrix grows with (HW)^2, so it is used only where the image is small
next to the window (``use_dense``); elsewhere romatch's own function runs.
"""
from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import torch
from romatch.models import matcher as romatch_matcher
from romatch.utils.local_correlation import local_correlation as romatch_local_correlation

# Dense wins while H*W stays below this many times the window size K. Measured with
# bench/correlation.py (bench/results/): fp32 on a 2-core CPU 1.7x faster at 196 K, 0.5x at
# 784 K; fp32 on an H200 1.8x at 238 K, 0.4x at 784 K; bf16 on an H200 (tensor cores) 3.3x
# at 784 K, 0.8x at 1866 K.
DENSE_MAX_PIXELS_PER_SAMPLE = 256
DENSE_MAX_PIXELS_PER_SAMPLE_HALF = 1024
# RoMa's fused CUDA kernel (fp32 only; used when the refiner may) beats both above this.
# Measured on an H200 (bench/results/gpu-h200-round2-run1.log), 16 pairs: fp32 1.2x at 100 K,
# 2.8x at 238 K, dense 6x faster at 7 K; bf16 (dense on tensor cores) 1.4x at 784 K, 5.4x at
# 1866 K, dense 3.3x faster at 238 K.
FUSED_MIN_PIXELS_PER_SAMPLE = 64
FUSED_MIN_PIXELS_PER_SAMPLE_HALF = 512
# Correlation entries computed at once (fp32: 128 MB): bounds the memory the matrix costs.
CHUNK_ELEMENTS = 2**25


def use_dense(h: int, w: int, radius: int, dtype: torch.dtype = torch.float32) -> bool:
    """Whether the correlation matrix is cheaper than romatch's lookups for this refiner."""
    half = dtype in (torch.float16, torch.bfloat16)
    ratio = DENSE_MAX_PIXELS_PER_SAMPLE_HALF if half else DENSE_MAX_PIXELS_PER_SAMPLE
    return h * w <= ratio * (2 * radius + 1) ** 2


def use_fused(h: int, w: int, radius: int, dtype: torch.dtype = torch.float32) -> bool:
    """Whether RoMa's fused kernel, when the refiner may use it, is the cheapest here."""
    half = dtype in (torch.float16, torch.bfloat16)
    ratio = FUSED_MIN_PIXELS_PER_SAMPLE_HALF if half else FUSED_MIN_PIXELS_PER_SAMPLE
    return h * w > ratio * (2 * radius + 1) ** 2


def dense_local_correlation(feature0: torch.Tensor, feature1: torch.Tensor, radius: int,
                            warp: torch.Tensor) -> torch.Tensor:
    """Same result as romatch's ``local_correlation`` (bilinear, zero padding), (B, K, H, W).

    ``feature0``/``feature1`` are (B, C, H, W); ``warp`` (B, 2, H, W) holds each query
    pixel's current match in normalized [-1, 1] coordinates (align_corners=False).
    Window index k = (dy + r) * (2r + 1) + (dx + r), as romatch orders it.
    """
    b, c, h, w = feature0.shape
    hw, n = h * w, 2 * radius + 2  # n: integer positions a window's samples touch per axis
    corners = []
    for axis, size in ((1, h), (0, w)):  # y then x; unnormalize as grid_sample does
        pixel = ((warp[:, axis].float() + 1) * size - 1) / 2
        # Far outside (or NaN) reads only padding either way; keep the integers in range.
        pixel = pixel.nan_to_num(nan=-size).clamp(-n, size + n)
        start = pixel.floor()
        positions = start.long().reshape(b, 1, hw) + torch.arange(-radius, radius + 2, device=warp.device)[:, None]
        inside = (positions >= 0) & (positions < size)
        corners.append((positions.clamp(0, size - 1), inside, (pixel - start).reshape(b, 1, 1, hw)))
    (ys, y_in, fy), (xs, x_in, fx) = corners
    index = (ys * w)[:, :, None] + xs[:, None]  # (B, n, n, HW): flat candidate pixel per shift
    index = index.reshape(b, n * n, hw).transpose(1, 2)
    query = feature0.reshape(b, c, hw).transpose(1, 2) / math.sqrt(c)
    candidate = feature1.reshape(b, c, hw)
    rows = max(1, CHUNK_ELEMENTS // (b * hw))
    dots = torch.cat([
        torch.gather(torch.bmm(query[:, i:i + rows], candidate), 2, index[:, i:i + rows])
        for i in range(0, hw, rows)
    ], dim=1)
    dots = dots.transpose(1, 2).reshape(b, n, n, hw)
    dots = dots.masked_fill(~(y_in[:, :, None] & x_in[:, None]), 0)
    fx, fy = fx.to(dots.dtype), fy.to(dots.dtype)
    dots = dots[:, :, :-1] * (1 - fx) + dots[:, :, 1:] * fx
    dots = dots[:, :-1] * (1 - fy) + dots[:, 1:] * fy
    return dots.reshape(b, (n - 1) ** 2, h, w)


def local_correlation(feature0: torch.Tensor, feature1: torch.Tensor, local_radius: int,
                      warp: torch.Tensor, *, use_custom_corr: bool, padding_mode: str = "zeros",
                      sample_mode: str = "bilinear") -> torch.Tensor:
    """Drop-in for romatch's ``local_correlation``: the fused kernel where the refiner may use
    it and it wins, dense where that pays, romatch's lookups otherwise."""
    h, w = feature0.shape[-2:]
    if use_custom_corr and use_fused(h, w, local_radius, feature0.dtype):
        return romatch_local_correlation(feature0, feature1, local_radius, warp, use_custom_corr=True,
                                         padding_mode=padding_mode, sample_mode=sample_mode)
    if padding_mode == "zeros" and sample_mode == "bilinear" and use_dense(h, w, local_radius, feature0.dtype):
        return dense_local_correlation(feature0, feature1, local_radius, warp)
    return romatch_local_correlation(feature0, feature1, local_radius, warp, use_custom_corr=use_custom_corr,
                                     padding_mode=padding_mode, sample_mode=sample_mode)


@contextlib.contextmanager
def dense_correlation_in_romatch() -> Iterator[None]:
    """Route romatch's refiners through ``local_correlation`` above while inside.

    The refiners look the function up in romatch's matcher module at each call, so
    rebinding it there is the only seam. It is restored when the last user leaves
    (counted, so overlapping decodes in several threads cannot leave it rebound).
    """
    global _users
    with _users_lock:
        _users += 1
        romatch_matcher.local_correlation = local_correlation
    try:
        yield
    finally:
        with _users_lock:
            _users -= 1
            if not _users:
                romatch_matcher.local_correlation = romatch_local_correlation


_users = 0
_users_lock = threading.Lock()
