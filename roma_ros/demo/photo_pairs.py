"""Real photos under known viewpoint change, for tests, the demo and benchmarks.

scikit-image ships real photographs, so warping them with a known homography
gives image pairs with exact ground truth and no download. Coordinates follow
the ``Matches`` convention: pixel (0, 0) covers [0, 1) x [0, 1), so its centre
is (0.5, 0.5); every homography here maps those continuous coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Photos that scikit-image installs with the package (no pooch download needed).
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "camera")

# Shifts between the Matches convention (centres at +0.5) and OpenCV's (centres at integers).
_TO_CV = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
_FROM_CV = np.linalg.inv(_TO_CV)


def load_photo(name: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) photo from ``skimage.data``; grayscale ones become 3-channel."""
    if name not in PHOTO_NAMES:
        raise ValueError(f"unknown photo '{name}': choose one of {', '.join(PHOTO_NAMES)}")
    from skimage import data  # imported lazily: only tests, demo and benchmarks need it

    image = np.asarray(getattr(data, name)())
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def project(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply homography ``H`` to (N, 2) points; points sent to infinity or behind come back NaN."""
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    homog = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ np.asarray(H, dtype=np.float64).T
    w = homog[:, 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = homog[:, :2] / w
    out[(w[:, 0] <= 1e-12)] = np.nan
    return out


def ground_truth_error(H: np.ndarray, kpts_q: np.ndarray, kpts_c: np.ndarray) -> np.ndarray:
    """Per-match distance (px) between ``H`` applied to the query point and the candidate point.

    Matches whose query point ``H`` cannot map get ``inf``, so they never pass a threshold.
    """
    err = np.linalg.norm(project(H, kpts_q) - np.asarray(kpts_c, dtype=np.float64).reshape(-1, 2), axis=1)
    return np.where(np.isfinite(err), err, np.inf)


def _inside(pts: np.ndarray, size: tuple[int, int], margin: float = 0.0) -> np.ndarray:
    """Which points lie in an image of ``size`` = (height, width), ``margin`` px from the edge."""
    h, w = size
    with np.errstate(invalid="ignore"):
        x_ok = (pts[:, 0] >= margin) & (pts[:, 0] <= w - margin)
        return x_ok & (pts[:, 1] >= margin) & (pts[:, 1] <= h - margin)


def _overlap_fraction(H: np.ndarray, size: tuple[int, int], steps: int = 24) -> float:
    """Fraction of a grid over the query image that ``H`` maps inside an image of the same size."""
    h, w = size
    xs, ys = np.meshgrid(np.linspace(0, w, steps), np.linspace(0, h, steps))
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
    return float(np.mean(_inside(project(H, grid), size)))


def viewpoint_homography(
    shape: tuple[int, ...], rng: np.random.Generator, strength: float = 1.0, min_overlap: float = 0.4
) -> np.ndarray:
    """A random homography that looks like a large viewpoint change of a planar scene.

    Composes, about the image centre, a strong perspective tilt, a rotation of up
    to 30 deg x ``strength``, a scale in [1 - 0.4 s, 1 + 0.4 s] and a small shift;
    redraws until at least ``min_overlap`` of the image stays in view, so every
    pair still shows a common region.
    """
    if strength < 0 or strength > 1.5:
        raise ValueError(f"strength={strength} must lie in [0, 1.5]")
    h, w = int(shape[0]), int(shape[1])
    f = max(h, w) / 2.0
    to_norm = np.array([[1 / f, 0, -w / (2 * f)], [0, 1 / f, -h / (2 * f)], [0, 0, 1]])
    for _ in range(1000):
        px, py = rng.uniform(-0.4, 0.4, size=2) * strength
        perspective = np.array([[1, 0, 0], [0, 1, 0], [px, py, 1.0]])
        angle = np.deg2rad(rng.uniform(-30, 30) * strength)
        scale = rng.uniform(1 - 0.4 * strength, 1 + 0.4 * strength)
        tx, ty = rng.uniform(-0.1, 0.1, size=2) * strength
        c, s = np.cos(angle) * scale, np.sin(angle) * scale
        similarity = np.array([[c, -s, tx], [s, c, ty], [0, 0, 1.0]])
        H = np.linalg.inv(to_norm) @ similarity @ perspective @ to_norm
        H /= H[2, 2]
        if _overlap_fraction(H, (h, w)) >= min_overlap:
            return H
    raise RuntimeError(f"no homography with overlap >= {min_overlap} found; lower strength or min_overlap")


def photometric_change(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Different exposure and camera: brightness, contrast, gamma and sensor noise."""
    x = image.astype(np.float32) / 255.0
    x = np.clip((x - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.12, 0.12), 0.0, 1.0)
    x = x ** rng.uniform(0.7, 1.4)
    x = x * 255.0 + rng.normal(0.0, 2.0, size=x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def warp_pair(
    image: np.ndarray,
    H: np.ndarray,
    out_size: tuple[int, int] | None = None,
    photometric: bool = True,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``image`` as seen through ``H`` (source px -> warped px); returns (warped_rgb, H).

    ``out_size`` is (height, width), default the source size. Areas outside the
    source stay black; the photometric change only touches the visible part.
    """
    h, w = image.shape[:2] if out_size is None else out_size
    H = np.asarray(H, dtype=np.float64)
    H_cv = _TO_CV @ H @ _FROM_CV
    warped = cv2.warpPerspective(image, H_cv, (int(w), int(h)), flags=cv2.INTER_LINEAR, borderValue=0)
    if photometric:
        valid = cv2.warpPerspective(
            np.full(image.shape[:2], 255, np.uint8), H_cv, (int(w), int(h)), flags=cv2.INTER_NEAREST
        )
        changed = photometric_change(warped, rng if rng is not None else np.random.default_rng())
        warped = np.where(valid[:, :, None] > 0, changed, 0).astype(np.uint8)
    return warped, H


@dataclass
class ViewPair:
    """A query photo and the same scene from another viewpoint, with exact ground truth."""

    query: np.ndarray
    candidate: np.ndarray
    H_query_to_candidate: np.ndarray  # query px -> candidate px (Matches convention)
    name: str = ""
    seed: int = 0

    def error(self, kpts_q: np.ndarray, kpts_c: np.ndarray) -> np.ndarray:
        """Per-match ground-truth reprojection error in px."""
        return ground_truth_error(self.H_query_to_candidate, kpts_q, kpts_c)


def make_pair(
    name: str, seed: int, size: tuple[int, int] = (480, 640), strength: float = 1.0, photometric: bool = True
) -> ViewPair:
    """Photo ``name`` resized to ``size`` = (height, width) as query, and a warped view as candidate."""
    rng = np.random.default_rng(seed)
    photo = load_photo(name)
    h, w = size
    query = cv2.resize(photo, (int(w), int(h)), interpolation=cv2.INTER_AREA)
    H = viewpoint_homography(query.shape, rng, strength=strength)
    candidate, _ = warp_pair(query, H, photometric=photometric, rng=rng)
    return ViewPair(query, candidate, H, name, seed)


def correspondences_with_outliers(
    pair_or_H: ViewPair | np.ndarray,
    n_inliers: int,
    n_outliers: int,
    rng: np.random.Generator,
    noise_px: float = 0.1,
    size: tuple[int, int] = (480, 640),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic matches: true ones from the homography plus random outliers, shuffled.

    Returns (kpts_q, kpts_c, is_true), float32 (N, 2), (N, 2) and bool (N,).
    True matches are sampled where both views overlap, mapped with H and given
    Gaussian noise of ``noise_px``; outliers are uniform in both images. ``size``
    (height, width) applies to both images when a bare H is given.
    """
    if isinstance(pair_or_H, ViewPair):
        H = pair_or_H.H_query_to_candidate
        size_q, size_c = pair_or_H.query.shape[:2], pair_or_H.candidate.shape[:2]
    else:
        H = np.asarray(pair_or_H, dtype=np.float64)
        size_q = size_c = size
    if _overlap_fraction(H, size_q) == 0.0 and n_inliers > 0:
        raise ValueError("the homography maps no part of the query image into the candidate")

    def uniform_points(n: int, hw: tuple[int, int]) -> np.ndarray:
        return rng.uniform((0, 0), (hw[1], hw[0]), size=(n, 2))

    q_true = np.zeros((0, 2))
    c_true = np.zeros((0, 2))
    while len(q_true) < n_inliers:
        q = uniform_points(4 * (n_inliers - len(q_true)) + 16, size_q)
        c = project(H, q) + rng.normal(0.0, noise_px, size=(len(q), 2))
        keep = _inside(c, size_c, margin=1.0) & _inside(q, size_q, margin=1.0)
        q_true, c_true = np.concatenate([q_true, q[keep]]), np.concatenate([c_true, c[keep]])
    q_true, c_true = q_true[:n_inliers], c_true[:n_inliers]

    kpts_q = np.concatenate([q_true, uniform_points(n_outliers, size_q)])
    kpts_c = np.concatenate([c_true, uniform_points(n_outliers, size_c)])
    is_true = np.concatenate([np.ones(n_inliers, bool), np.zeros(n_outliers, bool)])
    order = rng.permutation(len(is_true))
    return kpts_q[order].astype(np.float32), kpts_c[order].astype(np.float32), is_true[order]
