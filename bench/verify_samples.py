"""Fitting F on a subset of the matches: how far do inlier counts move, and what is saved?

Synthetic two-view scenes (3-D points seen by two cameras, 0.1 px noise) with 10,000
correspondences and a share of uniform outliers, like the 10,000 samples RoMa gives each
keyframe. For each scene: USAC_MAGSAC on all points against ``verify_fundamental_subset``
(fit on ``max_points``, inliers counted on all), same threshold (0.2 px). Prints the
ratio of the counts (min / median / max over seeds), how often the acceptance at
min_inliers 50 differs, and median times; and, as the yardstick, the same ratio for a
second full fit on the points in another order (MAGSAC's own spread). Real matches share the sampler's order, so the
evenly spread subset is as random as the samples.

    .venv/bin/python bench/verify_samples.py [--seeds 10] [--max-points 5000,2500]
"""
from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np

from roma_ros.localize.geometry import verify_fundamental, verify_fundamental_subset

INTRINSICS = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])


def two_view_matches(n: int, outliers: float, rng: np.random.Generator, noise: float = 0.1):
    """(query, candidate) pixel correspondences of a random 3-D scene, a share replaced by outliers."""
    points = rng.uniform([-3, -2, 4], [3, 2, 10], (n, 3))
    rotation, _ = cv2.Rodrigues(rng.normal(0, 0.15, 3))
    translation = np.array([-1.0, 0.0, 0.0]) + rng.normal(0, 0.2, 3)

    def project(p: np.ndarray) -> np.ndarray:
        h = p @ INTRINSICS.T
        return h[:, :2] / h[:, 2:]

    q = project(points) + rng.normal(0, noise, (n, 2))
    c = project(points @ rotation.T + translation) + rng.normal(0, noise, (n, 2))
    wrong = rng.random(n) < outliers
    c[wrong] = rng.uniform([0, 0], [640, 480], (int(wrong.sum()), 2))
    return q, c


def ratio(count: int, reference: int) -> float:
    return count / reference if reference else (1.0 if count == 0 else float("inf"))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--max-points", default="5000,2500")
    parser.add_argument("--min-inliers", type=int, default=50)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    print(f"{'outliers':>8} {'points':>6} {'count ratio min/med/max':>24} {'decisions differ':>16} "
          f"{'all ms':>7} {'subset ms':>9} {'speed-up':>8} {'reordered full fit min/max':>26}")
    for outliers in (0.2, 0.5, 0.8, 0.95, 0.99, 1.0):
        for max_points in (int(v) for v in args.max_points.split(",")):
            ratios, differ, t_all, t_sub, spread = [], 0, [], [], []
            for seed in range(args.seeds):
                q, c = two_view_matches(10000, outliers, np.random.default_rng(seed))
                full, s_all = timed(lambda: verify_fundamental(q, c))
                part, s_sub = timed(lambda: verify_fundamental_subset(q, c, max_points))
                t_all.append(s_all)
                t_sub.append(s_sub)
                order = np.random.default_rng(seed + 1000).permutation(len(q))
                again = verify_fundamental(q[order], c[order])
                a, b = full.num_inliers if full.verified else 0, part.num_inliers if part.verified else 0
                ratios.append(ratio(b, a))
                spread.append(ratio(again.num_inliers if again.verified else 0, a))
                differ += (a >= args.min_inliers) != (b >= args.min_inliers)
            print(f"{outliers:>8.2f} {max_points:>6} {min(ratios):>8.3f} {statistics.median(ratios):>7.3f} "
                  f"{max(ratios):>7.3f} {differ:>10}/{args.seeds} {1000 * statistics.median(t_all):>7.1f} "
                  f"{1000 * statistics.median(t_sub):>9.1f} {statistics.median(t_all) / statistics.median(t_sub):>7.1f}x "
                  f"{min(spread):>17.3f} {max(spread):>7.3f}")


if __name__ == "__main__":
    main()
