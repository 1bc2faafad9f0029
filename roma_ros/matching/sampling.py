"""Turning a dense warp into a few thousand correspondences.

romatch's ``threshold_balanced`` sampler draws 4x the wanted matches weighted by
certainty, then thins dense regions with a Gaussian KDE over all pairs of draws:
an O(n^2) distance matrix (40k x 40k for 10k samples) that costs ~60 s and 8.5 GB
on a 2-core CPU. ``sample_balanced`` keeps the intent (certainty-weighted,
spatially balanced, isolated matches dropped) but estimates the density by
counting draws in cells of a 4-D grid over (x_A, y_A, x_B, y_B), averaged over two
grids shifted by half a cell: O(n) time and memory on any device.
"""
from __future__ import annotations

import math

import torch

# romatch's KDE uses std=0.1 in normalized coordinates; a cell of edge sqrt(2*pi)*std
# has the same volume as the kernel, so grid counts and KDE densities are comparable.
KDE_STD = 0.1
CELL = math.sqrt(2 * math.pi) * KDE_STD
# romatch drops matches with a KDE density below 10 ("should have at least 10 perfect neighbours").
MIN_DENSITY = 10.0
EXPANSION = 4


def _grid_density(points: torch.Tensor, offset: float) -> torch.Tensor:
    """Number of points sharing each point's 4-D grid cell."""
    bins = int(math.ceil(2.0 / CELL)) + 2
    cells = torch.floor((points.float() + 1.0) / CELL + offset).long().clamp_(0, bins - 1)
    key = ((cells[:, 0] * bins + cells[:, 1]) * bins + cells[:, 2]) * bins + cells[:, 3]
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    return counts[inverse].float()


def grid_density(points: torch.Tensor) -> torch.Tensor:
    """Approximate neighbour count of each 4-D match, in units of romatch's KDE density."""
    return 0.5 * (_grid_density(points, 0.0) + _grid_density(points, 0.5))


def threshold_certainty(certainty: torch.Tensor, thresh: float) -> torch.Tensor:
    """Certainties above ``thresh`` all count as 1: RoMa is over-confident near 1 and
    this keeps low-texture but correct regions from being starved."""
    weights = certainty.clone()
    weights[weights > thresh] = 1
    return weights


def sample_weighted(
    matches: torch.Tensor,
    certainty: torch.Tensor,
    num: int,
    thresh: float = 0.05,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``num`` draws without replacement, weighted by thresholded certainty
    (romatch's plain ``threshold`` mode; the first stage of ``sample_balanced``)."""
    matches = matches.reshape(-1, 4)
    certainty = certainty.reshape(-1)
    weights = threshold_certainty(certainty, thresh)
    available = int((weights > 0).sum())
    if available == 0 or num <= 0:
        return matches[:0], certainty[:0]
    draws = torch.multinomial(weights, min(num, available), replacement=False, generator=generator)
    return matches[draws], certainty[draws]


def sample_balanced(
    matches: torch.Tensor,
    certainty: torch.Tensor,
    num: int,
    thresh: float = 0.05,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Certainty-weighted, spatially balanced sampling of a dense warp.

    ``matches``: (..., 4) normalized coordinates (x_A, y_A, x_B, y_B);
    ``certainty``: same leading shape. Returns (n, 4) matches and their (n,) certainties,
    n <= num (fewer when too few pixels carry any certainty).
    """
    good, good_cert = sample_weighted(matches, certainty, EXPANSION * num, thresh, generator)
    if len(good) == 0:
        return good, good_cert
    density = grid_density(good)
    keep_weight = 1.0 / (density + 1.0)
    keep_weight[density < MIN_DENSITY] = 1e-7
    picked = torch.multinomial(keep_weight, min(num, len(good)), replacement=False, generator=generator)
    return good[picked], good_cert[picked]


def normalized_to_pixels(coords: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalized [-1, 1] coordinates (align_corners=False) to pixel coordinates of an
    image of the given size; the mapping is resolution independent, so the result is in
    the ORIGINAL image even though the model ran at another resolution."""
    scale = coords.new_tensor([width / 2.0, height / 2.0])
    return (coords + 1.0) * scale
