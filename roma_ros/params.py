"""The node's parameters in one table: name, default, description, live or start-up only.

config/match.yaml must hold exactly these names (a test checks it); the node
declares them from here with descriptors, so `ros2 param describe` explains each.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roma_ros.keyframes import DEFAULT_DIR
from roma_ros.matching.base import MatcherConfig
from roma_ros.pipeline import DecisionConfig


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    live: bool = False  # may change while running (validated); else read-only after start
    choices: tuple[str, ...] = ()


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model", "roma_outdoor", "matcher network", choices=("roma_outdoor", "roma_indoor", "tiny_roma_outdoor", "classical")),
    ParamSpec("weights", "", "RoMa / Tiny RoMa checkpoint path; empty: torch hub cache, then the official URL"),
    ParamSpec("dinov2_weights", "", "DINOv2 ViT-L/14 checkpoint path (RoMa only); empty: torch hub cache, then URL"),
    ParamSpec("allow_download", True, "download missing weights from the official URLs at start-up"),
    ParamSpec("random_weights", False, "tests and benchmarks only: random network weights (meaningless matches)"),
    ParamSpec("device", "auto", "auto (CUDA if available), cpu, cuda or cuda:N"),
    ParamSpec("coarse_res", 560, "RoMa coarse resolution, multiple of 14 (Tiny RoMa: longer image side)"),
    ParamSpec("upsample_res", 864, "RoMa refinement resolution, multiple of 8; 0 = off (about 2x faster)"),
    ParamSpec("symmetric", True, "match in both directions (RoMa default); false is faster"),
    ParamSpec("num_samples", 10000, "correspondences sampled per keyframe before verification"),
    ParamSpec("sampler", "grid", "grid: fast balanced sampler; romatch: romatch's KDE sampler (slow on CPU)",
              choices=("grid", "romatch")),
    ParamSpec("batch_size", 8, "keyframes decoded together on the GPU (memory bound)"),
    ParamSpec("keep_vgg", False, "RoMa: keep each keyframe's projected VGG decoder inputs (faster queries; "
              "~65 MB per keyframe at 560, ~210 MB with upsample 864)"),
    ParamSpec("warmup", True, "run one match at start-up so the first query is not slow"),
    ParamSpec("keyframes_dir", "", "keyframe folder (images + optional keyframes.yaml); empty: ~/.ros/roma_ros/keyframes"),
    ParamSpec("frame_id", "map", "frame of keyframe poses, the ~/keyframes PoseArray and ~/markers"),
    ParamSpec("image_transport", "raw", "raw subscribes `image` (sensor_msgs/Image); compressed subscribes "
              "`image/compressed` (sensor_msgs/CompressedImage)", choices=("raw", "compressed")),
    ParamSpec("image_qos", "sensor_data", "sensor_data (best effort, depth 1) or reliable (depth 1)",
              choices=("sensor_data", "reliable")),
    ParamSpec("ransac.method", "usac_magsac", "fundamental-matrix estimator", live=True,
              choices=("usac_magsac", "ransac", "lmeds")),
    ParamSpec("ransac.threshold", 0.2, "RANSAC inlier threshold in pixels of the original images", live=True),
    ParamSpec("ransac.confidence", 0.999999, "RANSAC confidence, strictly between 0 and 1", live=True),
    ParamSpec("ransac.max_iters", 10000, "RANSAC iterations", live=True),
    ParamSpec("min_inliers", 50, "accept the best keyframe only with at least this many inliers", live=True),
    ParamSpec("min_overlap", 0.0, "RoMa: accept only when the dense warp's mean certainty (overlap estimate) is at "
              "least this; 0 = off", live=True),
    ParamSpec("top_k", 5, "keyframes verified per query, chosen by DINOv2 global-descriptor similarity; "
              "0 = all (models without descriptors always use all)", live=True),
    ParamSpec("debug.max_lines", 50, "inlier lines drawn in ~/debug_image; -1 = all", live=True),
    ParamSpec("debug.publish_image", True, "publish ~/debug_image (only drawn when someone subscribes)", live=True),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages"),
    ParamSpec("ransac.max_points", 5000, "fit F on at most this many evenly spread matches, then count inliers "
              "on all of them (faster; counts within bench/verify_samples.py's bounds); 0 = fit on all", live=True),
)
SPECS = {p.name: p for p in PARAMS}


def check_value(name: str, value: Any) -> None:
    """Raise ValueError when ``value`` is not acceptable for parameter ``name``."""
    spec = SPECS[name]
    if spec.choices and value not in spec.choices:
        raise ValueError(f"{name}='{value}' unknown: choose one of {', '.join(spec.choices)}")
    if name == "debug.max_lines" and value < -1:
        raise ValueError("debug.max_lines must be -1 (all) or >= 0")
    if name == "diagnostics_period" and not value > 0:
        raise ValueError("diagnostics_period must be > 0 seconds")


def matcher_config(values: dict[str, Any]) -> MatcherConfig:
    config = MatcherConfig(
        model=values["model"], weights=values["weights"], dinov2_weights=values["dinov2_weights"],
        device=values["device"], coarse_res=values["coarse_res"], upsample_res=values["upsample_res"],
        symmetric=values["symmetric"], num_samples=values["num_samples"], sampler=values["sampler"],
        batch_size=values["batch_size"], keep_vgg=values["keep_vgg"], allow_download=values["allow_download"],
        random_weights=values["random_weights"],
    )
    config.validate()
    return config


def decision_config(values: dict[str, Any]) -> DecisionConfig:
    config = DecisionConfig(
        method=values["ransac.method"], threshold=float(values["ransac.threshold"]),
        confidence=float(values["ransac.confidence"]), max_iters=int(values["ransac.max_iters"]),
        min_inliers=int(values["min_inliers"]), min_overlap=float(values["min_overlap"]),
        top_k=int(values["top_k"]), max_points=int(values["ransac.max_points"]),
    )
    config.validate()
    return config


def keyframes_dir(values: dict[str, Any]) -> Path:
    return Path(values["keyframes_dir"] or DEFAULT_DIR).expanduser()
