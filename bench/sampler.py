"""Our grid-balanced sampler against romatch's KDE-balanced sampler, same warp and certainty.

The warp is RoMa's output layout (symmetric, 560 x 1120 at the default coarse
resolution) for a real photo pair related by a known homography; certainty is high
where the views overlap, with a textureless band of low certainty, and zero elsewhere.
Prints time, peak memory and spatial evenness, and ours/romatch ratios.

    .venv/bin/python bench/sampler.py [--num 10000] [--res 560] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from romatch.models.matcher import RegressionMatcher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import measure  # noqa: E402

from roma_ros.matching.sampling import sample_balanced  # noqa: E402
from roma_ros.demo.photo_pairs import make_pair, project  # noqa: E402


def homography_warp(res: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    pair = make_pair("astronaut", seed=1, size=(res, res))
    ys, xs = np.mgrid[0:res, 0:res].astype(np.float64) + 0.5
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    target = project(pair.H_query_to_candidate, pts).reshape(res, res, 2)
    valid = np.isfinite(target).all(-1) & (target >= 0).all(-1) & (target < res).all(-1)
    norm = lambda p: 2 * p / res - 1  # noqa: E731
    a = norm(np.stack([xs, ys], -1))
    b = norm(np.nan_to_num(target, nan=0.0).clip(0, res))
    forward = np.concatenate([a, b], -1)
    certainty = np.where(valid, 0.9, 0.0)
    certainty[res // 3: res // 3 + res // 10] *= 0.05  # low-texture band: certain but below threshold
    # RoMa's symmetric layout: (H, 2W, 4), the second half being B->A; reuse forward for size.
    warp = np.concatenate([forward, forward[..., [2, 3, 0, 1]]], 1)
    cert = np.concatenate([certainty, certainty], 1)
    return (torch.tensor(warp, dtype=torch.float32, device=device),
            torch.tensor(cert, dtype=torch.float32, device=device))


def evenness(matches: torch.Tensor, cells: int = 16) -> tuple[float, float]:
    """(fraction of occupied query-image cells among cells that have any, coefficient of variation)."""
    idx = ((matches[:, :2].float().cpu() + 1) / 2 * cells).long().clamp(0, cells - 1)
    counts = np.bincount((idx[:, 1] * cells + idx[:, 0]).numpy(), minlength=cells * cells).astype(float)
    occupied = counts[counts > 0]
    return len(occupied) / counts.size, float(occupied.std() / occupied.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=10000)
    parser.add_argument("--res", type=int, default=560)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    warp, cert = homography_warp(args.res, args.device)
    romatch_self = SimpleNamespace(sample_mode="threshold_balanced", sample_thresh=0.05)
    gen = torch.Generator(device=args.device).manual_seed(0)
    torch.manual_seed(0)
    runs = {
        "grid (ours)": lambda: sample_balanced(warp, cert, args.num, 0.05, gen),
        "romatch kde": lambda: RegressionMatcher.sample(romatch_self, warp, cert, num=args.num),
    }
    print(f"device {args.device}, warp {tuple(warp.shape)}, num {args.num}")
    print(f"{'sampler':<12} {'time s':>9} {'peak MB':>9} {'samples':>8} {'coverage':>9} {'cv':>6}")
    results = {}
    for name, fn in runs.items():
        if args.device.startswith("cuda"):
            fn()  # first CUDA calls pay for kernel loading
        (matches, _), seconds, peak = measure(fn, args.device)
        coverage, cv = evenness(matches)
        results[name] = (seconds, peak)
        print(f"{name:<12} {seconds:>9.3f} {peak / 2**20:>9.1f} {len(matches):>8d} {coverage:>9.2f} {cv:>6.2f}")
    (t_ours, m_ours), (t_ref, m_ref) = results.values()
    print(f"ratio romatch/ours: time {t_ref / t_ours:.0f}x, peak memory {m_ref / max(m_ours, 1):.0f}x")


if __name__ == "__main__":
    main()
