"""`roma-match`'s pose options: intrinsics, keyframe depth, the pose gates, and the report.

Kept apart from cli.py so the matching command stays readable; the gates' defaults are
``PoseConfig``'s, which are also the node's ``pose.*`` parameter defaults.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np

from roma_ros.localize.pose import CameraModel, PoseConfig, PoseEstimate, estimate_pose

_GATES = (  # (option, PoseConfig field, type, help)
    ("--pose-min-inliers", "min_inliers", int, "PnP inliers needed for a metric pose"),
    ("--pose-reprojection-threshold", "reprojection_threshold", float, "PnP RANSAC inlier threshold (px)"),
    ("--pose-max-rmse", "max_rmse", float, "largest inlier reprojection RMSE (px)"),
    ("--pose-min-inlier-ratio", "min_inlier_ratio", float, "smallest share of PnP points that are inliers"),
    ("--pose-min-depth", "min_depth", float, "nearest keyframe depth used (m)"),
    ("--pose-max-depth", "max_depth", float, "farthest keyframe depth used (m)"),
    ("--pose-max-depth-spread", "max_depth_spread", float,
     "3x3 depth spread / depth above which a pixel is a depth edge and dropped"),
)


def add_pose_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "pose", "relative pose of the query camera in the candidate (keyframe) camera frame: metric (PnP) "
        "with --keyframe-depth, rotation and translation direction only (essential matrix) without. "
        "Intrinsics use the OpenCV / ROS CameraInfo convention (pixel centres at integers).")
    group.add_argument("--query-intrinsics", metavar="FX,FY,CX,CY", help="query camera intrinsics (px)")
    group.add_argument("--query-distortion", metavar="K1,K2,P1,P2[,K3[,K4,K5,K6]]",
                       help="query camera distortion (OpenCV order: plumb_bob 5, rational_polynomial 8)")
    group.add_argument("--keyframe-intrinsics", metavar="FX,FY,CX,CY", help="candidate camera intrinsics (px)")
    group.add_argument("--keyframe-depth", metavar="FILE",
                       help="depth registered to the candidate image: 16-bit PNG (mm) or float TIFF / .npy (m)")
    group.add_argument("--depth-scale", type=float, metavar="S",
                       help="metres per stored depth unit (default: 0.001 for 16-bit, 1.0 for float)")
    defaults = PoseConfig()
    for option, name, kind, text in _GATES:
        group.add_argument(option, dest=f"pose_{name}", type=kind, default=getattr(defaults, name),
                           metavar="N" if kind is int else "X", help=f"{text} (default: %(default)s)")


def _numbers(text: str, option: str, counts: tuple[int, ...]) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} '{text}' is not a comma-separated list of numbers") from None
    if len(values) not in counts:
        raise ValueError(f"{option} takes {' or '.join(map(str, counts))} numbers, got {len(values)}")
    return values


def _camera(args: argparse.Namespace, which: str) -> CameraModel | None:
    text = getattr(args, f"{which}_intrinsics")
    if text is None:
        return None
    fx, fy, cx, cy = _numbers(text, f"--{which}-intrinsics", (4,))
    distortion: list[float] = []
    if which == "query" and args.query_distortion:
        distortion = _numbers(args.query_distortion, "--query-distortion", (4, 5, 8))
    camera = CameraModel.from_ros(fx, fy, cx, cy, distortion)
    try:
        camera.validate()
    except ValueError as exc:
        raise ValueError(f"--{which}-intrinsics: {exc}") from None
    return camera


@dataclass
class PoseInputs:
    query_camera: CameraModel
    keyframe_camera: CameraModel
    depth: np.ndarray | None
    config: PoseConfig


def pose_inputs(args: argparse.Namespace) -> PoseInputs | None:
    """Check and load the pose options before any slow work; None when no pose is asked for.

    Raises ValueError (depth.DepthFileError included) with a one-line message for bad or
    inconsistent options.
    """
    config = PoseConfig(**{name: getattr(args, f"pose_{name}") for _, name, _, _ in _GATES})
    config.validate()
    query, keyframe = _camera(args, "query"), _camera(args, "keyframe")
    if args.depth_scale is not None and not args.keyframe_depth:
        raise ValueError("--depth-scale needs --keyframe-depth")
    if args.query_distortion and query is None:
        raise ValueError("--query-distortion needs --query-intrinsics")
    if query is None and keyframe is None and not args.keyframe_depth:
        return None
    missing = [name for name, cam in (("--query-intrinsics", query), ("--keyframe-intrinsics", keyframe))
               if cam is None]
    if missing:
        wanted = "a metric pose from --keyframe-depth" if args.keyframe_depth else "a relative pose"
        raise ValueError(f"{wanted} needs {' and '.join(missing)}")
    if getattr(args, "resize_to_model", False):
        raise ValueError("--resize-to-model reports pixels of resized images; the intrinsics are for the "
                         "original images, so leave it out for a pose")
    depth = None
    if args.keyframe_depth:
        from roma_ros.store import load_depth

        depth = load_depth(args.keyframe_depth, args.depth_scale)
    return PoseInputs(query, keyframe, depth, config)  # type: ignore[arg-type]


def check_cameras(inputs: PoseInputs, query_shape: tuple[int, ...], candidate_shape: tuple[int, ...]) -> None:
    """Each camera against its image's size (``CameraModel.check_for_image``): an absurd
    distortion or principal point is a one-line error, not a confident wrong pose."""
    for which, camera, shape in (("query", inputs.query_camera, query_shape),
                                 ("keyframe", inputs.keyframe_camera, candidate_shape)):
        try:
            camera.check_for_image(shape[1], shape[0])
        except ValueError as exc:
            flags = f"--{which}-intrinsics" + ("/--query-distortion" if which == "query" else "")
            raise ValueError(f"{flags}: {exc}") from None


def check_depth_size(inputs: PoseInputs, candidate_shape: tuple[int, ...], depth_file: str) -> None:
    if inputs.depth is not None:
        from roma_ros.store import check_registered

        check_registered(inputs.depth.shape, candidate_shape, f"keyframe depth '{depth_file}'",
                         image="the candidate image", fix="it must be registered to it, same size")


def compute_pose(inputs: PoseInputs, kpts_query: np.ndarray, kpts_candidate: np.ndarray,
                 verified: bool, verify_reason: str) -> PoseEstimate:
    """The pose from the F inliers, as the node does; an unverified match gives no pose."""
    if not verified:
        method = "pnp" if inputs.depth is not None else "essential"
        return PoseEstimate(False, f"matches not verified: {verify_reason}", method, False, None, None)
    return estimate_pose(kpts_query, kpts_candidate, inputs.depth, inputs.keyframe_camera,
                         inputs.query_camera, inputs.config)


def pose_json(est: PoseEstimate) -> dict[str, Any]:
    """The ``pose`` object of ``--json``: position only for a metric pose that passed the gates."""
    out: dict[str, Any] = {
        "method": est.method,
        "metric": bool(est.ok and est.metric),
        "position": None,
        "orientation": None,
        "inliers": int(est.inliers),
        "points": int(est.points),
        "reprojection_rmse_px": None if est.rmse_px is None or not np.isfinite(est.rmse_px) else float(est.rmse_px),
        "covariance": None,
        "reason": est.reason,
    }
    if est.ok and est.metric:
        out["position"] = [float(v) for v in est.translation]
        out["orientation"] = list(est.quaternion())
        out["covariance"] = [float(v) for v in np.asarray(est.covariance).reshape(36)]
    elif est.method == "essential" and est.rotation is not None:
        out["orientation"] = list(est.quaternion())
        out["translation_direction"] = [float(v) for v in est.translation]
    return out


def pose_line(est: PoseEstimate) -> str:
    """One line for the terminal."""
    if est.ok and est.metric:
        x, y, z = est.translation
        q = est.quaternion()
        return (f"pose (pnp): query camera in the keyframe camera frame: position [{x:.3f}, {y:.3f}, {z:.3f}] m, "
                f"orientation xyzw [{q[0]:.4f}, {q[1]:.4f}, {q[2]:.4f}, {q[3]:.4f}], {est.inliers}/{est.points} "
                f"inliers, RMSE {est.rmse_px:.2f} px, position std {est.position_std:.3f} m")
    if est.method == "essential" and est.rotation is not None:
        q, d = est.quaternion(), est.translation
        return (f"pose (essential, non-metric): orientation xyzw [{q[0]:.4f}, {q[1]:.4f}, {q[2]:.4f}, {q[3]:.4f}], "
                f"translation direction [{d[0]:.3f}, {d[1]:.3f}, {d[2]:.3f}], {est.inliers} inliers: {est.reason}")
    return f"pose ({est.method}): no metric pose: {est.reason}"
