"""The synthetic room that pose tests and bench/pose.py trust as ground truth."""
from __future__ import annotations

import numpy as np

from roma_ros.demo import synthetic_scene as ss
from roma_ros.localize.pose import pose_to_matrix, rotation_angle_deg


def test_depth_is_exact_on_the_planes_and_nan_where_there_is_none():
    """Back-projecting every pixel centre with its depth lands on one of the scene's planes."""
    keyframes, _ = ss.relocalization_set(seed=0, n_queries=0, size=(120, 160))
    view = keyframes[1]
    assert view.rgb.shape == (120, 160, 3) and view.rgb.dtype == np.uint8
    assert view.depth.shape == (120, 160) and view.depth.dtype == np.float32
    rows, cols = np.nonzero(np.isfinite(view.depth))
    assert 0.5 < len(rows) / view.depth.size < 1.0  # mostly room, some empty space above the walls
    cam = view.camera
    z = view.depth[rows, cols].astype(np.float64)
    p_cam = np.column_stack([(cols + 0.5 - cam.cx) / cam.fx * z, (rows + 0.5 - cam.cy) / cam.fy * z, z])
    T = pose_to_matrix(view.pose)
    p_map = p_cam @ T[:3, :3].T + T[:3, 3]
    distance = np.full(len(p_map), np.inf)
    for plane in ss.SCENE:
        o, a, b = (np.asarray(v) for v in (plane.origin, plane.u_axis, plane.v_axis))
        rel = p_map - o
        s, t, off = rel @ a, rel @ b, np.abs(rel @ np.cross(a, b))
        inside = (s >= -1e-6) & (s <= plane.width + 1e-6) & (t >= -1e-6) & (t <= plane.height + 1e-6)
        distance = np.minimum(distance, np.where(inside, off, np.inf))
    assert distance.max() < 1e-4  # float32 depth at a few metres


def test_views_agree_with_each_other():
    """A point seen by a keyframe projects into a query where the query sees the same colour."""
    keyframes, queries = ss.relocalization_set(seed=2, n_queries=3, photometric=False)
    for query in queries:
        keyframe = keyframes[query.keyframe]
        kq, kk = ss.exact_matches(keyframe, query, 500, np.random.default_rng(0))
        assert len(kq) > 300
        a = keyframe.rgb[kk[:, 1].astype(int), kk[:, 0].astype(int)].astype(float)
        b = query.rgb[kq[:, 1].astype(int), kq[:, 0].astype(int)].astype(float)
        assert np.median(np.abs(a - b)) < 20  # same surface; texture filtering differs


def test_queries_are_far_from_their_keyframes_and_reproducible():
    keyframes, queries = ss.relocalization_set(seed=0, n_queries=20)
    again = ss.relocalization_set(seed=0, n_queries=20)[1]
    assert all(np.array_equal(q.rgb, r.rgb) and q.pose == r.pose for q, r in zip(queries, again))
    angles, moves = [], []
    for query in queries:
        R, t = ss.relative_pose(keyframes[query.keyframe], query)
        angles.append(rotation_angle_deg(R, np.eye(3)))
        moves.append(np.linalg.norm(t))
    assert np.median(angles) > 12 and max(angles) > 25
    assert min(moves) > 0.5 and np.median(moves) > 0.8
    assert not np.array_equal(ss.relocalization_set(seed=1, n_queries=1)[1][0].rgb, queries[0].rgb)


def test_other_room_shares_geometry_but_not_pictures():
    keyframes, _ = ss.relocalization_set(seed=0, n_queries=0)
    view = keyframes[0]
    other = ss.render(view.pose, view.camera, view.depth.shape, ss.OTHER_ROOM)
    np.testing.assert_array_equal(np.isnan(other.depth), np.isnan(view.depth))
    assert np.nanmax(np.abs(other.depth - view.depth)) == 0
    assert np.mean(np.abs(other.rgb.astype(int) - view.rgb.astype(int))) > 20


def test_mip_levels_keep_the_texture_in_place():
    """A linear ramp stays the same function of position at every level (pixel centres at +0.5):
    a level shifted by a fraction of a texel would put the texture elsewhere in each view."""
    x = np.arange(256, dtype=np.float32) + 0.5
    ramp = np.tile(x, (64, 1))
    for level, image in enumerate(ss.mip_levels(ramp)[1:], start=1):
        centres = (np.arange(image.shape[1]) + 0.5) * 2 ** level
        inner = slice(2, -2)  # away from the borders, where the blur sees replicated pixels
        np.testing.assert_allclose(image[10, inner], centres[inner], atol=1e-3 * 2 ** level)
