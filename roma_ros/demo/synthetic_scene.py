"""A small 3D scene with exact depth, for pose tests, the demo and bench/pose.py.

Several textured planes (scikit-image photos) form a room corner with free-standing panels, so
the scene is not planar as a whole and has depth discontinuities. Each view is rendered by
ray casting every pixel centre against every plane (a z-buffer by construction): the colour is
sampled from the plane's texture and the depth is the exact z of the hit, so ground truth holds
to floating-point precision. Pixel centres are at +0.5 and intrinsics use the same frame, as in
the rest of roma_ros.

The map frame is z up; camera poses are the optical frame (x right, y down, z forward) in the
map, quaternions [x, y, z, w].
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import cv2
import numpy as np

from roma_ros.localize.pose import CameraModel, Pose, matrix_to_pose, pose_to_matrix


@dataclass
class View:
    name: str
    rgb: np.ndarray          # (H, W, 3) uint8
    depth: np.ndarray        # (H, W) float32 metres (z in the optical frame), NaN where no surface
    camera: CameraModel
    pose: Pose               # camera optical frame in the map
    keyframe: int | None = None  # queries: index of the keyframe they were drawn near


@dataclass(frozen=True)
class Plane:
    """A textured rectangle: ``origin`` + s * ``u_axis`` + t * ``v_axis``, s in [0, width],
    t in [0, height]; the texture's top-left corner sits at ``origin``."""

    photo: str
    origin: tuple[float, float, float]
    u_axis: tuple[float, float, float]   # unit, along the texture's rows (left -> right)
    v_axis: tuple[float, float, float]   # unit, along its columns (top -> bottom)
    width: float
    height: float
    shade: float = 1.0
    mirrored: bool = False  # texture flipped left-right: SIFT and RoMa see a different picture


def _wall(photo, a, b, z_low, z_high, shade=1.0) -> Plane:
    """A vertical rectangle from ground point a to ground point b, between two heights."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    u = (b - a) / np.linalg.norm(b - a)
    return Plane(photo, (a[0], a[1], z_high), (u[0], u[1], 0.0), (0.0, 0.0, -1.0),
                 float(np.linalg.norm(b - a)), z_high - z_low, shade)


# A room corner (floor, back wall, left wall) with three panels standing in front of it.
SCENE: tuple[Plane, ...] = (
    Plane("gravel", (-4.0, 4.0, 0.0), (1.0, 0.0, 0.0), (0.0, -1.0, 0.0), 8.0, 8.0, 0.8),
    _wall("brick", (-4.0, 4.0), (4.0, 4.0), 0.0, 3.0, 1.0),
    _wall("coffee", (-4.0, -1.5), (-4.0, 4.0), 0.0, 3.0, 0.9),
    _wall("astronaut", (-1.6, 1.6), (0.2, 2.4), 0.0, 1.8, 1.0),
    _wall("chelsea", (0.8, 2.6), (2.4, 1.4), 0.3, 1.5, 0.95),
    _wall("rocket", (2.6, 3.6), (3.8, 1.8), 0.0, 2.2, 0.9),
)
# A distractor place: the same room with pictures that never appear in SCENE (unused photos and
# mirrored ones), for "is a wrong keyframe refused?" checks.
OTHER_ROOM: tuple[Plane, ...] = tuple(
    replace(plane, photo=photo, mirrored=mirrored)
    for plane, (photo, mirrored) in zip(SCENE, (("grass", False), ("camera", False), ("rocket", True),
                                                 ("coffee", True), ("astronaut", True), ("chelsea", True)))
)
# Texture resolution: pixels per metre on every plane.
_TEXELS_PER_M = 160.0


@functools.lru_cache(maxsize=None)
def _texture_pyramid(photo: str, width_m: float, height_m: float, mirrored: bool) -> tuple[np.ndarray, ...]:
    from roma_ros.demo.photo_pairs import load_photo  # lazy: scikit-image is a dev dependency

    w, h = int(round(width_m * _TEXELS_PER_M)), int(round(height_m * _TEXELS_PER_M))
    image = load_photo(photo)
    return mip_levels(cv2.resize(image[:, ::-1] if mirrored else image, (w, h), interpolation=cv2.INTER_AREA))


def mip_levels(image: np.ndarray, smallest: int = 16) -> tuple[np.ndarray, ...]:
    """``image`` and its halvings down to ``smallest`` px, each covering the same extent.

    Blur + area resize, not cv2.pyrDown: pyrDown centres output pixel i on input pixel 2i, half an
    input texel off the pixel-centre frame, so views rendered at different levels would disagree
    by millimetres on where a texture lies.
    """
    levels = [image]
    while min(levels[-1].shape[:2]) > smallest:
        blurred = cv2.GaussianBlur(levels[-1], (3, 3), 0)
        levels.append(cv2.resize(blurred, (levels[-1].shape[1] // 2, levels[-1].shape[0] // 2),
                                 interpolation=cv2.INTER_AREA))
    return tuple(levels)


def look_at(position, target, roll_deg: float = 0.0) -> Pose:
    """Pose of an optical frame at ``position`` looking at ``target`` (map z up), rolled about z."""
    position, target = np.asarray(position, float), np.asarray(target, float)
    z = target - position
    z /= np.linalg.norm(z)
    x = np.cross(z, (0.0, 0.0, 1.0))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.column_stack([x, y, z])
    c, s = np.cos(np.radians(roll_deg)), np.sin(np.radians(roll_deg))
    R = R @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, position
    return matrix_to_pose(T)


def default_camera(size: tuple[int, int] = (240, 320)) -> CameraModel:
    """A 64 deg horizontal field of view camera for an image of ``size`` = (height, width)."""
    h, w = size
    f = 0.8 * w
    return CameraModel(f, f, w / 2.0, h / 2.0)


def render(pose: Pose, camera: CameraModel, size: tuple[int, int] = (240, 320),
           scene: tuple[Plane, ...] = SCENE, name: str = "") -> View:
    """Ray-cast every pixel centre: RGB from the nearest plane's texture, exact z-depth."""
    h, w = size
    T = pose_to_matrix(pose)
    R, c = T[:3, :3], T[:3, 3]
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays_cam = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], -1)
    rays = rays_cam @ R.T  # map frame directions, scaled so their optical-z component is 1
    depth = np.full((h, w), np.inf)
    rgb = np.zeros((h, w, 3), np.float32)
    for plane in scene:
        o, a, b = (np.asarray(x, float) for x in (plane.origin, plane.u_axis, plane.v_axis))
        normal = np.cross(a, b)
        denom = rays @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            z = ((o - c) @ normal) / denom  # ray parameter = optical z, as the rays have z = 1
        hit = c + rays * z[..., None] - o
        s, t = hit @ a, hit @ b
        visible = (z > 1e-6) & (z < depth) & (s >= 0) & (s <= plane.width) & (t >= 0) & (t <= plane.height)
        if not visible.any():
            continue
        pyramid = _texture_pyramid(plane.photo, plane.width, plane.height, plane.mirrored)
        # Texels per image pixel at this distance and slant: choose the matching mip level.
        footprint = np.median(z[visible] / abs(np.median(denom[visible])) / camera.fx) * _TEXELS_PER_M
        level = int(np.clip(np.floor(np.log2(max(footprint, 1.0))), 0, len(pyramid) - 1))
        tex = pyramid[level]
        # Texels per metre of this level, exact for odd sizes too (resize maps extent to extent).
        scale_x, scale_y = tex.shape[1] / plane.width, tex.shape[0] / plane.height
        map_x = np.where(visible, s * scale_x - 0.5, -1).astype(np.float32)
        map_y = np.where(visible, t * scale_y - 0.5, -1).astype(np.float32)
        colour = cv2.remap(tex, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        rgb[visible] = colour[visible].astype(np.float32) * plane.shade
        depth[visible] = z[visible]
    depth = np.where(np.isfinite(depth), depth, np.nan).astype(np.float32)
    return View(name, np.clip(np.rint(rgb), 0, 255).astype(np.uint8), depth, camera, pose)


# Keyframe camera stations: (position, look-at target) around the room's open side.
_KEYFRAME_STATIONS = (
    ((-2.0, -3.0, 1.5), (-0.8, 2.5, 1.0)),
    ((0.5, -3.5, 1.6), (0.3, 2.5, 0.9)),
    ((2.5, -2.5, 1.4), (1.0, 2.8, 1.0)),
    ((-2.8, -0.5, 1.7), (0.5, 2.8, 0.8)),
    ((1.0, -1.0, 1.3), (2.0, 3.0, 1.0)),
)


def relocalization_set(seed: int = 0, n_queries: int = 20, size=(240, 320),
                       photometric: bool = True) -> tuple[list[View], list[View]]:
    """Posed keyframes with depth, and queries under strong viewpoint change with ground truth.

    Each query starts at a keyframe station (3 to 6 m from the walls), moves 0.6 to 1.8 m, looks
    at a target moved by up to 1.5 m and rolls up to 20 deg: 7 to 30 deg of rotation from its
    keyframe (median ~15 over seeds 0-2). Queries get a different exposure and sensor noise when
    ``photometric``. ``View.keyframe`` is the index of the keyframe a query was drawn near.
    """
    from roma_ros.demo.photo_pairs import photometric_change

    rng = np.random.default_rng(seed)
    camera = default_camera(size)
    keyframes = [render(look_at(p, t), camera, size, name=f"kf{i}") for i, (p, t) in enumerate(_KEYFRAME_STATIONS)]
    queries = []
    for i in range(n_queries):
        k = i % len(_KEYFRAME_STATIONS)
        position, target = (np.asarray(x, float) for x in _KEYFRAME_STATIONS[k])
        step = rng.normal(size=3) * (1.0, 1.0, 0.3)
        step *= rng.uniform(0.6, 1.8) / np.linalg.norm(step)
        target = target + rng.uniform(-1.0, 1.0, 3) * (1.5, 0.5, 0.6)
        view = render(look_at(position + step, target, rng.uniform(-20, 20)), camera, size, name=f"q{i:02d}")
        view.keyframe = k
        if photometric:
            view.rgb = photometric_change(view.rgb, rng)
        queries.append(view)
    return keyframes, queries


def relative_pose(keyframe: View, query: View) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth (R, t): the query camera in the keyframe camera frame, p_kf = R p_q + t."""
    T = np.linalg.inv(pose_to_matrix(keyframe.pose)) @ pose_to_matrix(query.pose)
    return T[:3, :3], T[:3, 3]


def exact_matches(keyframe: View, query: View, n: int, rng: np.random.Generator,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(kpts_query, kpts_keyframe): up to ``n`` keyframe pixel centres with depth that are visible
    (not occluded) in the query, and their exact projections there."""
    h, w = keyframe.depth.shape
    rows, cols = np.nonzero(np.isfinite(keyframe.depth))
    pick = rng.permutation(len(rows))[: 4 * n]
    rows, cols = rows[pick], cols[pick]
    kpts_k = np.column_stack([cols + 0.5, rows + 0.5])
    z = keyframe.depth[rows, cols].astype(np.float64)
    cam = keyframe.camera
    p_k = np.column_stack([(kpts_k[:, 0] - cam.cx) / cam.fx * z, (kpts_k[:, 1] - cam.cy) / cam.fy * z, z])
    R, t = relative_pose(keyframe, query)
    p_q = (p_k - t) @ R  # R^T (p_k - t)
    qc = query.camera
    with np.errstate(divide="ignore", invalid="ignore"):
        kpts_q = np.column_stack([qc.fx * p_q[:, 0] / p_q[:, 2] + qc.cx, qc.fy * p_q[:, 1] / p_q[:, 2] + qc.cy])
    qh, qw = query.depth.shape
    ok = (p_q[:, 2] > 0) & (kpts_q[:, 0] >= 0) & (kpts_q[:, 0] < qw) & (kpts_q[:, 1] >= 0) & (kpts_q[:, 1] < qh)
    ok &= np.isfinite(kpts_q).all(axis=1)
    # Visible: the query's own depth at that pixel agrees (not hidden behind another plane).
    qi = np.clip(np.floor(kpts_q[:, 1]), 0, qh - 1).astype(int)
    qj = np.clip(np.floor(kpts_q[:, 0]), 0, qw - 1).astype(int)
    with np.errstate(invalid="ignore"):
        ok &= np.abs(query.depth[qi, qj] - p_q[:, 2]) < 0.02 * p_q[:, 2]
    return kpts_q[ok][:n], kpts_k[ok][:n]
