"""The node's parameters in one table: name, default, description, live or start-up only,
and the rules a value must follow.

config/match.yaml must hold exactly these names (a test checks it); the node
declares them from here with descriptors, so `ros2 param describe` explains each.
The same rules judge every value, at start-up (a bad one stops the node, see
``check_startup``) and on every live change (a bad one is rejected, see ``check_value``).
"""
from __future__ import annotations

import array
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roma_ros.matching.base import MODEL_NAMES, MatcherConfig
from roma_ros.localize.pipeline import DecisionConfig
from roma_ros.localize.pose import MIN_PNP_POINTS, CameraModel, PoseConfig
from roma_ros.store import DEFAULT_DIR

_POSE = PoseConfig()  # the pose gates' defaults (pose.py, calibrated by bench/pose.py)

TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
              list: "a list of numbers"}
FRAME_PATTERN, FRAME_TEXT = r"[^/\s]\S*", "a frame name: not empty, no spaces, no leading '/'"


class ParameterError(ValueError):
    """A parameter value its rules do not allow; the message names the parameter, the value and
    what is allowed, on one line."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter. Its type is the type of ``default`` (a float parameter also takes an
    integer); the optional rule fields below restrict its values further."""

    name: str
    default: Any
    description: str
    live: bool = False  # may change while running (validated); else read-only after start
    choices: tuple[str, ...] = ()  # the only strings allowed
    minimum: float | None = None  # numbers: inclusive bounds
    maximum: float | None = None
    above: float | None = None  # numbers: exclusive lower bound
    below: float | None = None  # numbers: exclusive upper bound
    multiple_of: int | None = None  # integers: must be a multiple of this
    also: tuple[Any, ...] = ()  # values allowed besides the rules above (e.g. 0 = off)
    pattern: str = ""  # strings: a regular expression the whole value must match ...
    pattern_text: str = ""  # ... and what it allows, in words
    model_defaults: dict[str, Any] = field(default_factory=dict)  # model -> default for that model
    # A rule the fields above cannot say (e.g. 4 intrinsics with positive focal lengths): raises
    # ValueError saying what is wrong.
    check: Callable[[Any], Any] | None = None

    @property
    def kind(self) -> type:
        return type(self.default)

    def default_for(self, model: str) -> Any:
        """The default the node declares when it runs ``model``."""
        return self.model_defaults.get(model, self.default)

    def allowed(self) -> str:
        """The rules in words, for error messages and ``ros2 param describe``."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.pattern_text:
            return self.pattern_text
        bounds = []
        if self.minimum is not None and self.maximum is not None:
            bounds.append(f"from {_number(self.minimum)} to {_number(self.maximum)}")
        else:
            bounds += [f"{word} {_number(bound)}" for word, bound in ((">=", self.minimum), ("<=", self.maximum))
                       if bound is not None]
        bounds += [f"{word} {_number(bound)}" for word, bound in ((">", self.above), ("<", self.below))
                   if bound is not None]
        text = TYPE_NAMES[self.kind]
        if bounds:
            text += " " + " and ".join(bounds)
        if self.multiple_of:
            text += f", a multiple of {self.multiple_of}"
        if self.also:
            text += ", or " + " or ".join(str(v) for v in self.also)
        return text

    def problem(self, value: Any) -> str | None:
        """None when ``value`` obeys every rule of this parameter, else what is allowed."""
        return None if self._obeys(value) else self.allowed()

    def _obeys(self, value: Any) -> bool:
        if not _has_type(value, self.kind):
            return False
        if value in self.also:
            return True
        if self.choices and value not in self.choices:
            return False
        if self.pattern and not re.fullmatch(self.pattern, value):
            return False
        if self.kind in (int, float):
            return (math.isfinite(value)
                    and (self.minimum is None or value >= self.minimum)
                    and (self.maximum is None or value <= self.maximum)
                    and (self.above is None or value > self.above)
                    and (self.below is None or value < self.below)
                    and (not self.multiple_of or value % self.multiple_of == 0))
        return True


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _has_type(value: Any, kind: type) -> bool:
    if kind is float:
        return type(value) in (int, float)  # bool is an int subclass, but never a number here
    if kind is list:
        return _is_empty_list(value) or (isinstance(value, (list, tuple, array.array))
                                         and all(_has_type(v, float) for v in value))
    return type(value) is kind


# How an empty list reaches the node: a params file's ``[]`` arrives as "not set" (None), and
# ``ros2 param dump`` writes such a parameter as ``null``, which rcl's YAML parser hands over as the
# string "null" (YAML's other null spellings likewise). All mean "empty" for a list parameter.
YAML_NULLS = ("null", "Null", "NULL", "~")


def _is_empty_list(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value in YAML_NULLS)


# Thresholds of the classical (SIFT) matcher, calibrated on bench/place_recognition.py (docs/keyframes.md,
# "Shortlist and decision"): its keypoints are less precise than RoMa's, so a looser RANSAC
# threshold, and distractors reach 9-13 inliers while true places reach 27 or more.
CLASSICAL = "classical"

PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("autostart", True, "configure and activate at start-up (unmanaged `ros2 run` / `ros2 launch`); "
              "false: stay unconfigured until a lifecycle manager (nav2 lifecycle_manager, `ros2 lifecycle set`) "
              "drives the transitions"),
    ParamSpec("mode", "on_demand", "on_demand: match only while a ~/relocalize call waits for an answer; "
              "continuous: match every frame (at most max_rate_hz) while anyone subscribes to ~/pose, ~/matches, "
              "~/markers, ~/debug_image or initialpose", live=True, choices=("on_demand", "continuous")),
    ParamSpec("max_rate_hz", 2.0, "match at most this many frames per second (both modes; newer frames replace "
              "the waiting one); 0 = as fast as the matcher goes", live=True, minimum=0.0, maximum=1000.0),
    ParamSpec("relocalize_timeout", 10.0, "seconds a ~/relocalize call matches frames before it answers that "
              "no pose was found", live=True, above=0.0, maximum=3600.0),
    ParamSpec("model", "roma_outdoor", "matcher network", choices=MODEL_NAMES),
    ParamSpec("weights", "", "RoMa / Tiny RoMa checkpoint path; empty: torch hub cache, then the official URL"),
    ParamSpec("dinov2_weights", "", "DINOv2 ViT-L/14 checkpoint path (RoMa only); empty: torch hub cache, then URL"),
    ParamSpec("allow_download", True, "download missing weights from the official URLs at start-up"),
    ParamSpec("random_weights", False, "tests and benchmarks only: random network weights (meaningless matches)"),
    ParamSpec("device", "auto", "auto (CUDA if available), cpu, cuda or cuda:N (checked for every model; "
              "classical always runs on the CPU)", pattern=r"auto|cpu|cuda(:[0-9]+)?",
              pattern_text="auto, cpu, cuda or cuda:N"),
    ParamSpec("coarse_res", 560, "RoMa coarse resolution, multiple of 14 (Tiny RoMa: longer image side)",
              minimum=14, maximum=1120, multiple_of=14),
    ParamSpec("upsample_res", 864, "RoMa refinement resolution, multiple of 8; 0 = off (about 2x faster)",
              minimum=8, maximum=1728, multiple_of=8, also=(0,)),
    ParamSpec("symmetric", True, "match in both directions (RoMa default); false is faster"),
    ParamSpec("num_samples", 10000, "correspondences sampled per keyframe before verification",
              minimum=1, maximum=100000),
    ParamSpec("sampler", "grid", "grid: fast balanced sampler; romatch: romatch's KDE sampler (slow on CPU)",
              choices=("grid", "romatch")),
    ParamSpec("batch_size", 8, "keyframes decoded together on the GPU (memory bound)", minimum=1, maximum=64),
    ParamSpec("keep_vgg", False, "RoMa: keep each keyframe's projected VGG decoder inputs (faster queries; "
              "~65 MB per keyframe at 560, ~210 MB with upsample 864)"),
    ParamSpec("warmup", True, "run one match at start-up so the first query is not slow"),
    ParamSpec("keyframes_dir", "", "keyframe folder (images + optional keyframes.yaml); empty: ~/.ros/roma_ros/keyframes"),
    ParamSpec("frame_id", "map", "frame of keyframe poses, the ~/keyframes PoseArray, ~/markers, ~/pose and "
              "/initialpose", pattern=FRAME_PATTERN, pattern_text=FRAME_TEXT),
    ParamSpec("image_transport", "raw", "raw subscribes `image` (sensor_msgs/Image); compressed subscribes "
              "`image/compressed` (sensor_msgs/CompressedImage)", choices=("raw", "compressed")),
    ParamSpec("image_qos", "sensor_data", "sensor_data (best effort, depth 1) or reliable (depth 1)",
              choices=("sensor_data", "reliable")),
    ParamSpec("ransac.method", "usac_magsac", "fundamental-matrix estimator", live=True,
              choices=("usac_magsac", "ransac", "lmeds")),
    ParamSpec("ransac.threshold", 0.2, "RANSAC inlier threshold in pixels of the original images; default "
              "0.2 (RoMa's demo value), 1.0 with model classical (calibrated)", live=True, above=0.0,
              model_defaults={CLASSICAL: 1.0}),
    ParamSpec("ransac.confidence", 0.999999, "RANSAC confidence, strictly between 0 and 1", live=True,
              above=0.0, below=1.0),
    ParamSpec("ransac.max_iters", 10000, "RANSAC iterations", live=True, minimum=1, maximum=1000000),
    ParamSpec("ransac.max_points", 5000, "fit F on at most this many evenly spread matches, then count inliers "
              "on all of them (faster; counts within bench/verify_samples.py's bounds); 0 = fit on all", live=True,
              minimum=8, maximum=1000000, also=(0,)),
    ParamSpec("min_inliers", 50, "accept the best keyframe only with at least this many inliers; default 50, "
              "20 with model classical (calibrated)", live=True, minimum=0, model_defaults={CLASSICAL: 20}),
    ParamSpec("min_overlap", 0.0, "RoMa: accept only when the dense warp's mean certainty (overlap estimate) is at "
              "least this; 0 = off", live=True, minimum=0.0, maximum=1.0),
    ParamSpec("feature_memory_mb", 2048.0, "dense keyframe features kept in memory (on the matcher's device), "
              "least recently used first out; a query fetches its shortlist's (from the feature cache on disk, "
              "or prepared again) when they were evicted. 0 = no bound (all held). Counters in /diagnostics",
              minimum=0.0),
    ParamSpec("top_k", 5, "keyframes verified per query, chosen by global-descriptor similarity (DINOv2 for "
              "RoMa, VLAD of SIFT over a vocabulary from the map for classical); 0 = all", live=True, minimum=0),
    ParamSpec("pose.min_inliers", _POSE.min_inliers, "publish a pose only with at least this many PnP inliers",
              live=True, minimum=MIN_PNP_POINTS),
    ParamSpec("pose.reprojection_threshold", _POSE.reprojection_threshold,
              "PnP RANSAC inlier threshold in pixels of the query image", live=True, above=0.0),
    ParamSpec("pose.max_rmse", _POSE.max_rmse, "publish a pose only when the PnP inliers' reprojection RMSE "
              "(px) is at most this", live=True, above=0.0),
    ParamSpec("pose.min_inlier_ratio", _POSE.min_inlier_ratio, "publish a pose only when at least this share "
              "of the 2D-3D points are PnP inliers", live=True, minimum=0.0, maximum=1.0),
    ParamSpec("pose.min_depth", _POSE.min_depth, "keyframe depth below this (m) is not used for the pose",
              live=True, minimum=0.0),
    ParamSpec("pose.max_depth", _POSE.max_depth, "keyframe depth above this (m) is not used for the pose "
              "(must exceed pose.min_depth)", live=True, above=0.0),
    ParamSpec("pose.depth_std_a", _POSE.depth_std_a, "keyframe depth noise model std = a + b*z^2: the constant "
              "a (m); a keyframe's depth_std [a, b] in keyframes.yaml overrides it (docs/pose.md)", live=True,
              minimum=0.0),
    ParamSpec("pose.depth_std_b", _POSE.depth_std_b, "keyframe depth noise model std = a + b*z^2: the "
              "quadratic b (1/m); default for Kinect-class structured light (docs/pose.md)", live=True, minimum=0.0),
    ParamSpec("pose.match_std_px", _POSE.match_std_px, "match (keypoint) noise std per axis in each image (px), "
              "propagated into the pose covariance", live=True, above=0.0),
    ParamSpec("pose.covariance_scale", _POSE.covariance_scale, "variance factor on the pose covariance, "
              "calibrated on real RGB-D pairs (docs/pose.md)", live=True, above=0.0),
    ParamSpec("pose.effective_points", _POSE.effective_points, "the covariance counts at most this many "
              "independent points (errors shared by all points do not average out; docs/pose.md)", live=True,
              minimum=MIN_PNP_POINTS),
    ParamSpec("pose.multi_keyframe", _POSE.multi_keyframe, "solve one PnP over the F-inliers of every accepted "
              "keyframe with depth, intrinsics and a pose (in the best keyframe's frame)", live=True),
    ParamSpec("query_intrinsics", [], "[fx, fy, cx, cy] of the query camera in pixels (OpenCV/ROS convention, "
              "as CameraInfo K), used while no camera_info has arrived; empty = none", live=True,
              check=lambda value: query_camera({"query_intrinsics": value})),
    ParamSpec("camera_to_base", [], "[x, y, z, qx, qy, qz, qw]: pose of the camera optical frame in base_frame "
              "(the static tf base_frame -> camera optical frame); set: ~/pose is base_frame's pose; "
              "empty: ~/pose is the camera optical frame's pose", live=True,
              check=lambda value: camera_to_base({"camera_to_base": value})),
    ParamSpec("base_frame", "base_link", "name of the frame camera_to_base refers to (reported in diagnostics)",
              live=True, pattern=FRAME_PATTERN, pattern_text=FRAME_TEXT),
    ParamSpec("pose.min_position_std", 0.003, "~/pose covariance floor: x, y, z standard deviation at least this "
              "(m), so a filter never takes a pose as certain", live=True, minimum=0.0, maximum=100.0),
    ParamSpec("pose.min_angle_std", 0.1, "~/pose covariance floor: roll, pitch, yaw standard deviation at least "
              "this (degrees)", live=True, minimum=0.0, maximum=180.0),
    ParamSpec("publish_initialpose", True, "publish base_frame's pose on the relative `initialpose` topic (AMCL) "
              "after an accepted ~/relocalize and, in continuous mode, after disagree.frames frames that disagree "
              "with estimate_topic; never on every frame, never without camera_to_base", live=True),
    ParamSpec("initialpose.min_position_std", 0.1, "initialpose covariance floor: x, y, z standard deviation at "
              "least this (m); the covariance sent is diagonal", live=True, minimum=0.0, maximum=1000.0),
    ParamSpec("initialpose.min_angle_std", 3.0, "initialpose covariance floor: roll, pitch, yaw standard "
              "deviation at least this (degrees)", live=True, minimum=0.0, maximum=180.0),
    ParamSpec("estimate_topic", "amcl_pose", "the robot's current pose estimate (PoseWithCovarianceStamped in "
              "frame_id, e.g. AMCL's amcl_pose), for the prior and the disagreement check; relative to the "
              "namespace", pattern=r"[~A-Za-z/][\w/~]*", pattern_text="a topic name"),
    ParamSpec("last_pose_max_age", 5.0, "while estimate_topic has sent nothing, the last published pose serves "
              "as the estimate for this many seconds (the robot moves on); 0 = never", live=True, minimum=0.0),
    ParamSpec("disagree.distance", 1.0, "a pose farther than this (m, in x-y) from the estimate disagrees with it",
              live=True, above=0.0),
    ParamSpec("disagree.angle", 20.0, "a pose whose yaw differs from the estimate's by more than this (degrees) "
              "disagrees with it (compared only with camera_to_base set: both are then base_frame poses)",
              live=True, above=0.0, maximum=180.0),
    ParamSpec("disagree.frames", 3, "a pose that disagrees with the estimate is published (~/pose, and "
              "initialpose in continuous mode) only once this many consecutive accepted frames agree with "
              "each other; 1 = at once", live=True, minimum=1, maximum=1000),
    ParamSpec("prior.radius", 0.0, "with an estimate (estimate_topic, else the last published pose), verify only "
              "keyframes whose pose lies within this many metres (x-y) of it; keyframes without a pose always "
              "count; 0 = off", live=True, minimum=0.0),
    ParamSpec("camera_info_rectified", False, "the image is rectified (image_rect): the query camera is "
              "camera_info P (fx=P[0], fy=P[5], cx=P[2], cy=P[6]) without distortion; false: K and D (raw "
              "image); ~/add_keyframe stores the same model"),
    ParamSpec("keyframe_pose_type", "pose_stamped", "message type of the keyframe_pose topic",
              choices=("pose_stamped", "pose_with_covariance_stamped")),
    ParamSpec("sync_tolerance", 0.05, "~/add_keyframe stores the depth frame and keyframe_pose whose stamps lie "
              "within this many seconds of the image's", live=True, minimum=0.0, maximum=10.0),
    ParamSpec("mapping.enabled", False, "mapping mode: store a query frame as a keyframe (as ~/add_keyframe does) "
              "whenever keyframe_pose shows the camera moved mapping.min_distance or turned mapping.min_angle from "
              "every stored keyframe, or mapping.max_interval passed; additions are counted in /diagnostics",
              live=True),
    ParamSpec("mapping.min_distance", 0.5, "mapping mode: metres moved from every keyframe for a new one",
              live=True, minimum=0.0),
    ParamSpec("mapping.min_angle", 15.0, "mapping mode: or degrees turned from every keyframe", live=True,
              minimum=0.0, maximum=180.0),
    ParamSpec("mapping.max_interval", 10.0, "mapping mode: or seconds (image stamps) since the last keyframe; 0 = "
              "no time rule", live=True, minimum=0.0),
    ParamSpec("debug.max_lines", 50, "inlier lines drawn in ~/debug_image; -1 = all", live=True, minimum=-1),
    ParamSpec("debug.publish_image", True, "publish ~/debug_image (only drawn when someone subscribes)", live=True),
    ParamSpec("stale_timeout", 5.0, "/diagnostics warns when no image arrived for this many seconds while "
              "active; 0 = off", live=True, minimum=0.0, maximum=3600.0),
    ParamSpec("keyframes_period", 5.0, "after keyframe additions the whole ~/keyframes PoseArray is "
              "republished at most this often (s); the added poses go out at once on ~/keyframes_added. "
              "Load and reload always publish it whole; 0 = only then",
              live=True, minimum=0.0, maximum=3600.0),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages (wall clock)",
              minimum=0.01, maximum=60.0),
    ParamSpec("max_image_pixels", 4096 * 2160, "query frames with more pixels (width x height) are rejected as "
              "bad frames before decoding or copying (bounded memory, decompression bombs), and depth frames "
              "with more are not buffered; default: 4K",
              live=True, minimum=32 * 32),
)
SPECS = {p.name: p for p in PARAMS}


def check_value(name: str, value: Any) -> Any:
    """``value`` as the node keeps it (an integer given for a float parameter becomes a float);
    ParameterError when the rules of parameter ``name`` do not allow it."""
    spec = SPECS[name]
    problem = spec.problem(value)
    if problem is not None:
        raise ParameterError(f"{name}={value!r} is not allowed: expected {problem}")
    if spec.kind is list:  # list, tuple or array.array ('d' from `ros2 param set` and rclpy clients)
        value = [] if _is_empty_list(value) else [float(v) for v in value]
    if spec.check is not None:
        try:
            spec.check(value)
        except ValueError as exc:
            raise ParameterError(f"{name}={value!r} is not allowed: {exc}") from None
    return float(value) if spec.kind is float else value


def check_startup(values: dict[str, Any]) -> dict[str, Any]:
    """Every start-up value checked against its rules, then the rules between parameters
    (upsample_res >= coarse_res, pose.max_depth > pose.min_depth, ...); returns the values as
    the node keeps them. Raises ParameterError for the first bad value."""
    checked = {name: check_value(name, value) for name, value in values.items()}
    try:
        matcher_config(checked)
        decision_config(checked)
        pose_config(checked)
    except ValueError as exc:
        raise ParameterError(str(exc)) from None
    return checked


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


def pose_config(values: dict[str, Any]) -> PoseConfig:
    config = PoseConfig(
        min_inliers=int(values["pose.min_inliers"]),
        reprojection_threshold=float(values["pose.reprojection_threshold"]),
        max_rmse=float(values["pose.max_rmse"]), min_inlier_ratio=float(values["pose.min_inlier_ratio"]),
        min_depth=float(values["pose.min_depth"]), max_depth=float(values["pose.max_depth"]),
        depth_std_a=float(values["pose.depth_std_a"]), depth_std_b=float(values["pose.depth_std_b"]),
        match_std_px=float(values["pose.match_std_px"]), covariance_scale=float(values["pose.covariance_scale"]),
        effective_points=int(values["pose.effective_points"]), multi_keyframe=bool(values["pose.multi_keyframe"]),
    )
    try:
        config.validate()
    except ValueError as exc:
        raise ValueError(f"pose.{exc}") from None
    return config


def query_camera(values: dict[str, Any]) -> CameraModel | None:
    """The ``query_intrinsics`` fallback camera; None when empty."""
    raw = list(values["query_intrinsics"] or [])
    if not raw:
        return None
    if len(raw) != 4:
        raise ValueError(f"query_intrinsics needs 4 values [fx, fy, cx, cy] (or none), got {len(raw)}")
    camera = CameraModel.from_ros(*raw)
    try:
        camera.validate()
    except ValueError as exc:
        raise ValueError(f"query_intrinsics: {exc}") from None
    return camera


def camera_to_base(values: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``camera_to_base`` as ((x, y, z), (qx, qy, qz, qw)) with a unit quaternion; None when empty."""
    raw = [float(v) for v in values["camera_to_base"] or []]
    if not raw:
        return None
    if len(raw) != 7 or not all(math.isfinite(v) for v in raw):
        raise ValueError(f"camera_to_base needs 7 finite values [x, y, z, qx, qy, qz, qw] (or none), got {raw}")
    norm = math.sqrt(sum(v * v for v in raw[3:]))
    if abs(norm - 1.0) > 1e-3:
        raise ValueError(f"camera_to_base quaternion {raw[3:]} has norm {norm:.4f}, not 1")
    return tuple(raw[:3]), tuple(v / norm for v in raw[3:])


def keyframes_dir(values: dict[str, Any]) -> Path:
    return Path(values["keyframes_dir"] or DEFAULT_DIR).expanduser()
