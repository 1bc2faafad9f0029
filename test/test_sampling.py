"""Properties of the fast balanced sampler, on synthetic warps with known structure."""
from __future__ import annotations

import numpy as np
import torch

from roma_ros.matching.sampling import grid_density, normalized_to_pixels, sample_balanced, sample_weighted


def identity_warp(h: int, w: int) -> torch.Tensor:
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack((gx, gy), -1)
    return torch.cat((grid, grid), -1)


def cell_counts(points: torch.Tensor, cells: int = 8) -> np.ndarray:
    idx = ((points[:, :2] + 1) / 2 * cells).long().clamp(0, cells - 1)
    return np.bincount((idx[:, 1] * cells + idx[:, 0]).numpy(), minlength=cells * cells)


def test_count_and_zero_certainty_regions_are_never_sampled():
    warp = identity_warp(100, 120)
    cert = torch.zeros(100, 120)
    cert[:, 60:] = 0.9  # right half only
    gen = torch.Generator().manual_seed(0)
    matches, certainty = sample_balanced(warp, cert, 2000, generator=gen)
    assert len(matches) == 2000
    assert (certainty > 0.05).all()
    assert (matches[:, 0] > 0).all()  # only the right half


def test_fewer_pixels_than_requested():
    warp = identity_warp(10, 10)
    cert = torch.zeros(10, 10)
    cert[2:4, 2:4] = 1.0
    matches, _ = sample_balanced(warp, cert, 1000, generator=torch.Generator().manual_seed(0))
    assert len(matches) == 4
    empty, _ = sample_balanced(warp, torch.zeros(10, 10), 100)
    assert len(empty) == 0


def test_balanced_spreads_samples_more_evenly_than_plain_weighting():
    warp = identity_warp(120, 160)
    cert = torch.full((120, 160), 0.02)
    cert[:40, :50] = 1.0  # a very confident corner dominates plain weighted sampling
    gen = torch.Generator().manual_seed(0)
    plain, _ = sample_weighted(warp, cert, 3000, generator=gen)
    balanced, _ = sample_balanced(warp, cert, 3000, generator=gen)
    cv_plain = cell_counts(plain).std() / cell_counts(plain).mean()
    cv_balanced = cell_counts(balanced).std() / cell_counts(balanced).mean()
    assert cv_balanced < 0.7 * cv_plain
    assert (cell_counts(balanced) > 0).mean() > 0.9


def test_isolated_matches_are_dropped():
    # A consistent cluster plus a scatter of lone matches with random targets.
    rng = np.random.default_rng(0)
    cluster = torch.from_numpy(rng.normal(0, 0.05, (5000, 4)).astype(np.float32))
    lonely = torch.from_numpy(rng.uniform(-1, 1, (200, 4)).astype(np.float32))
    matches = torch.cat((cluster, lonely))
    density = grid_density(matches)
    assert density[:5000].median() > 100
    assert (density[5000:] < 10).float().mean() > 0.95
    cert = torch.ones(len(matches))
    picked, _ = sample_balanced(matches, cert, 500, generator=torch.Generator().manual_seed(1))
    lonely_picked = (picked.abs() > 0.4).any(dim=1).sum()
    assert lonely_picked < 10


def test_normalized_to_pixels_maps_pixel_centres():
    coords = torch.tensor([[-1 + 1 / 4, -1 + 1 / 2], [1 - 1 / 4, 1 - 1 / 2]])
    px = normalized_to_pixels(coords, height=2, width=4)
    torch.testing.assert_close(px, torch.tensor([[0.5, 0.5], [3.5, 1.5]]))


def test_inlier_fraction_matches_romatchs_sampler_on_a_real_warp():
    """Same warp and certainty into both samplers, then the same F check: the fraction of
    correspondences that verify stays within 5 points of romatch's KDE sampler."""
    from types import SimpleNamespace

    from romatch.models.matcher import RegressionMatcher

    from roma_ros.localize.geometry import verify_fundamental
    from roma_ros.demo.photo_pairs import make_pair, project

    res = 140
    pair = make_pair("coffee", seed=4, size=(res, res))
    ys, xs = np.mgrid[0:res, 0:res].astype(np.float64) + 0.5
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    target = project(pair.H_query_to_candidate, pts)
    valid = np.isfinite(target).all(1) & (target >= 0).all(1) & (target < res).all(1)
    rng = np.random.default_rng(0)
    wrong = rng.random(len(pts)) < 0.2  # a fifth of the warp points somewhere random
    target = np.where(wrong[:, None] | ~np.isfinite(target), rng.uniform(0, res, target.shape), target)
    warp = torch.tensor(np.concatenate([2 * pts / res - 1, 2 * target / res - 1], 1).reshape(res, res, 4),
                        dtype=torch.float32)
    cert = torch.tensor(np.where(valid, 0.9, 0.0).reshape(res, res), dtype=torch.float32)
    fractions = []
    for sampler in ("ours", "romatch"):
        torch.manual_seed(0)
        if sampler == "ours":
            m, _ = sample_balanced(warp, cert, 1000, generator=torch.Generator().manual_seed(0))
        else:
            stub = SimpleNamespace(sample_mode="threshold_balanced", sample_thresh=0.05)
            m, _ = RegressionMatcher.sample(stub, warp, cert, num=1000)
        kq = normalized_to_pixels(m[:, :2], res, res).numpy()
        kc = normalized_to_pixels(m[:, 2:], res, res).numpy()
        fractions.append(verify_fundamental(kq, kc, threshold=1.0).num_inliers / len(m))
    ours, theirs = fractions
    # Both drop the isolated random targets (a fifth of the warp) by their density rule.
    assert ours > 0.95 and abs(ours - theirs) < 0.05, fractions
