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
