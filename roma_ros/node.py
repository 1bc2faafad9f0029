"""`match_node`: the ROS 2 face of the relocalizer (the only module that imports rclpy).

Callbacks stay short: the image callback only keeps the newest frame; one worker
thread converts, matches, verifies and publishes, and counts the frames it had to
skip. Model loading happens in that worker too, so /diagnostics reports "loading"
or a weights error while the executor keeps running. Frame accounting, the log
throttle and the health level live in health.py.

Metric pose: the latest ``camera_info`` (else the ``query_intrinsics`` parameter) is the
query camera; an accepted keyframe with depth, intrinsics and a map pose gives ``~/pose``
(and ``/initialpose`` when enabled) once the pose gates pass, never a placeholder. The
``depth`` and ``keyframe_pose`` topics are only buffered (a few recent messages) for
``~/add_keyframe``, which stores them with the image in one index update.
"""
from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray, PoseStamped, PoseWithCovarianceStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from roma_ros import params as P
from roma_ros.conversions import (
    FRAME_FAULTS, MIN_IMAGE_SIDE, CameraInfoError, ImageConversionError, camera_info_intrinsics,
    camera_info_to_camera, compressed_msg_to_rgb, depth_msg_to_array, floor_initialpose_covariance,
    image_msg_to_rgb, match_markers, matches_to_pointcloud2, msg_to_pose, pose_with_covariance_msg,
    poses_to_pose_array, rgb_to_image_msg,
)
from roma_ros.health import FrameAccounting, Level, LogThrottle, Outcome, SequenceGaps
from roma_ros.matching.base import Matcher, build_matcher
from roma_ros.pipeline import QueryResult, Relocalizer
from roma_ros.pose import CameraModel, map_pose, position_std
from roma_ros.store import INTRINSICS_KEYS, DepthFileError, KeyframeStore, check_registered, valid_fraction
from roma_ros.store.cache import cache_for
from roma_ros.sync import StampBuffer
from roma_ros.visualize import draw_matches

LOG_THROTTLE_S = 10.0
LOG_CAUSES = ("model", "keyframes", "processing", "camera_info", "keyframe_pose",
              *(f"bad_frame:{kind}" for kind in FRAME_FAULTS))

try:  # Iron and newer: a two-argument callback also gets the MessageInfo (Humble has none)
    from rclpy.subscription import MessageInfo  # noqa: F401
    HAS_MESSAGE_INFO = True
except ImportError:
    HAS_MESSAGE_INFO = False

EXIT_BAD_PARAMETER = 2  # a start-up parameter its rules do not allow: `ros2 launch` reports the exit
# Recent depth frames / keyframe poses kept for ~/add_keyframe: ~1 s of a 30 Hz depth camera
# (18 MB of 640x480 16UC1, 37 MB of 32FC1), a few seconds of a SLAM pose stream.
DEPTH_BUFFER = 30
POSE_BUFFER = 200


class MatchNode(Node):
    def __init__(self, matcher: Matcher | None = None, **kwargs: Any) -> None:
        """``matcher`` replaces the one the parameters describe (tests share one network)."""
        super().__init__("roma_matcher", **kwargs)
        self._injected_matcher = matcher
        try:
            self.values = self._declare_parameters()
        except P.ParameterError as exc:
            self.get_logger().fatal(f"{exc}; the node stops: fix the parameter and start it again")
            super().destroy_node()
            raise
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.state = "starting"
        self.last_error = ""
        self.relocalizer: Relocalizer | None = None
        self.store = KeyframeStore(P.keyframes_dir(self.values))
        self.frames = FrameAccounting()
        self.transport_gaps = SequenceGaps()
        self.accepted = 0
        self.latencies: collections.deque[float] = collections.deque(maxlen=100)
        self.processed_times: collections.deque[float] = collections.deque(maxlen=100)
        self.last_result = ""
        self._throttle = LogThrottle(LOG_CAUSES, LOG_THROTTLE_S)
        self._latest_rgb: np.ndarray | None = None
        self._pending: Image | CompressedImage | None = None
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._latest_header: Header | None = None
        self._camera_info: tuple[CameraInfo, CameraModel | None, str] | None = None  # msg, camera, error
        self._depth_frames: StampBuffer[Image] = StampBuffer(DEPTH_BUFFER)
        self._keyframe_poses: StampBuffer[tuple] = StampBuffer(POSE_BUFFER)
        self.pose_status = {"pose_result": "", "pose_inliers": "", "reprojection_rmse_px": "",
                            "position_std_m": "", "poses_published": "0"}
        self._poses_published = 0
        self._pub_initialpose = None  # created when publish_initialpose is first on (AMCL sees no idle publisher)

        self.pub_matches = self.create_publisher(PointCloud2, "~/matches", 10)
        self.pub_debug = self.create_publisher(Image, "~/debug_image", 1)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.pub_keyframes = self.create_publisher(PoseArray, "~/keyframes", latched)
        self.pub_markers = self.create_publisher(MarkerArray, "~/markers", 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, "~/pose", 10)
        self._initialpose_publisher()

        self._create_image_subscription()
        self._create_pose_input_subscriptions()
        services = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "~/add_keyframe", self._on_add_keyframe, callback_group=services)
        self.create_service(Trigger, "~/reload_keyframes", self._on_reload_keyframes, callback_group=services)
        # Wall-clock period (health reports go on while a simulation is paused); stamps use the
        # node clock, so they follow /clock under use_sim_time.
        self.create_timer(self.values["diagnostics_period"], self._publish_diagnostics,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))

        self._worker = threading.Thread(target=self._run_worker, name="roma_worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> dict[str, Any]:
        """Declare every parameter (model first: some defaults depend on it) and return the
        values, checked by their rules. Types are checked by those rules too, so a bad value
        gets one clear line instead of rclpy's type exception."""
        values: dict[str, Any] = {}
        for spec in sorted(P.PARAMS, key=lambda spec: spec.name != "model"):
            descriptor = ParameterDescriptor(
                description=spec.description + ("" if spec.live else " (start-up only)"),
                read_only=not spec.live, additional_constraints=spec.allowed(), dynamic_typing=True)
            default = spec.default_for(values.get("model", ""))
            values[spec.name] = self.declare_parameter(spec.name, default, descriptor).value
        return P.check_startup(values)

    def _on_set_parameters(self, changes: list) -> SetParametersResult:
        values = dict(self.values)
        try:
            for change in changes:
                if change.name not in P.SPECS:
                    continue
                values[change.name] = P.check_value(change.name, change.value)
            decision = P.decision_config(values)
            pose_config = P.pose_config(values)
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.values = values
        if self.relocalizer is not None:
            self.relocalizer.set_decision(decision)
            self.relocalizer.set_pose_config(pose_config)
        self._initialpose_publisher()  # before the first pose, so subscribers have matched by then
        return SetParametersResult(successful=True)

    def _initialpose_publisher(self):
        """The /initialpose publisher while publish_initialpose is on (created once, when first on)."""
        if self.values["publish_initialpose"] and self._pub_initialpose is None:
            self._pub_initialpose = self.create_publisher(PoseWithCovarianceStamped, "/initialpose", 10)
        return self._pub_initialpose if self.values["publish_initialpose"] else None

    # ------------------------------------------------------------------ input
    def _create_image_subscription(self) -> None:
        reliable = self.values["image_qos"] == "reliable"
        qos = QoSProfile(
            depth=1, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        )
        callback = self._on_image_with_info if HAS_MESSAGE_INFO else self._on_image
        if self.values["image_transport"] == "compressed":
            self.create_subscription(CompressedImage, "image/compressed", callback, qos)
        else:
            self.create_subscription(Image, "image", callback, qos)

    def _on_image_with_info(self, msg: Image | CompressedImage, info: dict) -> None:
        """Counts the publication sequence numbers' gaps: frames lost before the callback."""
        gid = info.get("publisher_gid")  # Kilted and newer
        publisher = bytes(gid["data"]) if isinstance(gid, dict) and "data" in gid else None
        self.transport_gaps.observe(info.get("publication_sequence_number"), publisher)
        self._on_image(msg)

    def _create_pose_input_subscriptions(self) -> None:
        """camera_info (query intrinsics) with the image's reliability; depth and keyframe_pose,
        only buffered for ~/add_keyframe (best effort matches any publisher)."""
        reliable = self.values["image_qos"] == "reliable"
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos)
        self.create_subscription(Image, "depth", self._on_depth, QoSProfile(
            depth=5, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT))
        with_covariance = self.values["keyframe_pose_type"] == "pose_with_covariance_stamped"
        self.create_subscription(PoseWithCovarianceStamped if with_covariance else PoseStamped, "keyframe_pose",
                                 self._on_keyframe_pose,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            camera, error = camera_info_to_camera(msg), ""
        except CameraInfoError as exc:
            camera, error = None, str(exc)
            self._record_error("camera_info", f"ignoring camera_info: {exc}")
        self._camera_info = (msg, camera, error)

    def _on_depth(self, msg: Image) -> None:
        self._depth_frames.add(msg.header.stamp, msg)

    def _on_keyframe_pose(self, msg: PoseStamped | PoseWithCovarianceStamped) -> None:
        frame = msg.header.frame_id
        if frame and frame != self.values["frame_id"]:
            self._record_error("keyframe_pose", f"ignoring keyframe_pose in frame '{frame}': keyframe poses "
                               f"must be in frame_id '{self.values['frame_id']}'")
            return
        try:
            pose = msg_to_pose(msg.pose.pose if isinstance(msg, PoseWithCovarianceStamped) else msg.pose)
        except ValueError as exc:
            self._record_error("keyframe_pose", f"ignoring keyframe_pose: {exc}")
            return
        self._keyframe_poses.add(msg.header.stamp, pose)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        with self._wake:
            self.frames.receive(replacing=self._pending is not None)
            self._pending = msg
            self._wake.notify()

    def _next_frame(self) -> Image | CompressedImage | None:
        with self._wake:
            while self._pending is None and not self._stop.is_set():
                self._wake.wait(timeout=0.5)
            msg, self._pending = self._pending, None
            return msg

    # ------------------------------------------------------------------ worker
    def _run_worker(self) -> None:
        if not self._load():
            return
        while not self._stop.is_set():
            msg = self._next_frame()
            if msg is None:
                continue
            try:
                outcome = self._handle(msg)
            except Exception as exc:  # the node must outlive any single bad frame
                outcome = Outcome.FAILED
                self._record_error("processing", f"processing a frame failed: {type(exc).__name__}: {exc}")
            self.frames.finish(outcome)

    def _load(self) -> bool:
        self.state = "loading model"
        try:
            config = P.matcher_config(self.values)
            self.get_logger().info(f"loading {config.model} on {config.device} ...")
            matcher = self._injected_matcher or build_matcher(config)
            self.relocalizer = Relocalizer(matcher, P.decision_config(self.values), P.pose_config(self.values))
            if self.values["warmup"] and config.model != "classical":
                dummy = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
                matcher.match(dummy, dummy)
        except Exception as exc:  # anything (a wrong checkpoint's RuntimeError too) must reach diagnostics
            self.state = "error: model not loaded"
            files = ", ".join(f"{k} '{self.values[k]}'" for k in ("weights", "dinov2_weights"))
            self._record_error("model", f"cannot load the matcher {self.values['model']} ({files}): "
                                        f"{type(exc).__name__}: {exc}")
            return False
        self.get_logger().info(f"matcher {matcher.name} ready on {matcher.device}")
        self._try_reload()
        return True

    def _try_reload(self) -> int | None:
        """``_reload``, with any failure reported in diagnostics instead of killing the thread."""
        try:
            return self._reload()
        except Exception as exc:
            self.state = "error: keyframes not loaded"
            self._record_error("keyframes", f"cannot load the keyframes from {self.store.directory}: "
                                            f"{type(exc).__name__}: {exc}")
            return None

    def _reload(self) -> int:
        self.state = "loading keyframes"
        keyframes = self.store.load()
        for warning in self.store.warnings:
            self.get_logger().warning(warning)
        assert self.relocalizer is not None
        cache = cache_for(self.relocalizer.matcher, self.store.directory)
        self.relocalizer.set_keyframes(keyframes, cache)
        if cache is not None:
            for warning in cache.stats.warnings:
                self.get_logger().warning(warning)
            where = cache.folder or "nowhere (kept in memory only)"
            self.get_logger().info(f"keyframe features: {cache.stats.loaded} from {where}, "
                                   f"{cache.stats.computed} computed")
        self._publish_keyframes()
        self.state = "ready" if keyframes else "waiting for keyframes"
        self.get_logger().info(f"{len(keyframes)} keyframes from {self.store.directory}")
        return len(keyframes)

    def _convert(self, msg: Image | CompressedImage) -> np.ndarray | None:
        limits = {"max_pixels": int(self.values["max_image_pixels"]), "min_side": MIN_IMAGE_SIDE}
        try:
            if isinstance(msg, CompressedImage):
                return compressed_msg_to_rgb(msg, **limits)
            return image_msg_to_rgb(msg, **limits)
        except ImageConversionError as exc:
            self._record_error(f"bad_frame:{exc.kind}", f"skipped a frame: {exc}")
            return None

    def _handle(self, msg: Image | CompressedImage) -> Outcome:
        start = time.perf_counter()
        rgb = self._convert(msg)
        if rgb is None:
            return Outcome.BAD
        assert self.relocalizer is not None  # the worker handles frames only once loaded
        self._latest_header, self._latest_rgb = msg.header, rgb
        camera, camera_problem = self._query_camera(rgb)
        result = self.relocalizer.process(rgb, camera)
        if result.pose is not None and camera is None:
            result.pose.reason = camera_problem
        latency = time.perf_counter() - start
        self._publish_result(msg.header, rgb, result, latency)
        self.latencies.append(latency)
        self.processed_times.append(time.monotonic())
        self.accepted += int(result.accepted)
        return Outcome.PROCESSED

    def _query_camera(self, rgb: np.ndarray) -> tuple[CameraModel | None, str]:
        """The latest camera_info (its size must be the image's), else query_intrinsics; or why none."""
        if self._camera_info is not None:
            msg, camera, error = self._camera_info
            if error:
                return None, error
            if (msg.width, msg.height) != (rgb.shape[1], rgb.shape[0]) and msg.width and msg.height:
                return None, (f"camera_info is {msg.width}x{msg.height} but the image is "
                              f"{rgb.shape[1]}x{rgb.shape[0]}")
            return camera, ""
        camera = P.query_camera(self.values)
        return camera, "" if camera else "no query intrinsics: no camera_info received and query_intrinsics is empty"

    # ------------------------------------------------------------------ output
    def _publish_pose(self, header: Header, result: QueryResult) -> tuple | None:
        """Publish ~/pose (and /initialpose) when accepted and the gates pass; record the outcome
        for diagnostics either way. Returns the published pose, else None."""
        estimate = result.pose
        status = {"pose_result": "no match" if not result.accepted else "", "pose_inliers": "",
                  "reprojection_rmse_px": "", "position_std_m": ""}
        published = None
        if estimate is not None:
            status["pose_inliers"] = str(estimate.inliers) if estimate.method == "pnp" else ""
            status["reprojection_rmse_px"] = f"{estimate.rmse_px:.3f}" if estimate.rmse_px is not None else ""
            keyframe = result.keyframes[result.best.index]
            if not estimate.ok:
                status["pose_result"] = estimate.reason or "no pose"
            elif keyframe.pose is None:
                status["pose_result"] = f"keyframe '{keyframe.name}' has no map pose"
            else:
                try:
                    published = map_pose(keyframe.pose, estimate, P.camera_to_base(self.values))
                except ValueError as exc:
                    status["pose_result"] = str(exc)
        if published is not None:
            pose, covariance = published
            std = position_std(covariance)
            status["pose_result"], status["position_std_m"] = "ok", f"{std:.4f}" if np.isfinite(std) else ""
            out_header = Header(stamp=header.stamp, frame_id=self.values["frame_id"])
            self.pub_pose.publish(pose_with_covariance_msg(out_header, pose, covariance))
            initialpose = self._initialpose_publisher()
            if initialpose is not None:
                initialpose.publish(pose_with_covariance_msg(out_header, pose, floor_initialpose_covariance(covariance)))
            self._poses_published += 1
        status["poses_published"] = str(self._poses_published)
        self.pose_status = status
        return published[0] if published is not None else None

    def _publish_result(self, header: Header, rgb: np.ndarray, result: QueryResult, latency: float) -> None:
        best, keyframes = result.best, result.keyframes
        if result.accepted and best is not None:
            inl = best.verification.inlier_mask
            m = best.matches
            cloud = matches_to_pointcloud2(header, m.kpts_query[inl], m.kpts_candidate[inl], m.certainty[inl],
                                           best.index)
            name = keyframes[best.index].name
            summary = f"{name}: {best.inliers} inliers, {latency * 1000:.0f} ms"
        else:
            cloud = matches_to_pointcloud2(header, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), 0)
            name = keyframes[best.index].name if best is not None else ""
            summary = f"no match ({result.reason}), {latency * 1000:.0f} ms"
        self.last_result = summary
        query_pose = self._publish_pose(header, result)  # before the cloud: its status is set when the cloud lands
        self.pub_matches.publish(cloud)
        pose = keyframes[best.index].pose if best is not None else None
        self.pub_markers.publish(match_markers(self.values["frame_id"], header.stamp, name, pose,
                                               result.accepted, summary, query_pose,
                                               optical=not self.values["camera_to_base"]))
        if self.values["debug.publish_image"] and self.pub_debug.get_subscription_count() > 0:
            banner = f"{summary} | {self._pose_text()}" if result.accepted else summary
            self.pub_debug.publish(rgb_to_image_msg(self._debug_image(rgb, result, banner), header))

    def _pose_text(self) -> str:
        """Short pose outcome for the debug image banner (diagnostics carry the details)."""
        status = self.pose_status
        if status["pose_result"] != "ok":
            return f"no pose: {status['pose_result']}"
        std, rmse = status["position_std_m"], status["reprojection_rmse_px"]
        return ("pose ok" + (f", sd {100 * float(std):.1f} cm" if std else "")
                + (f", {float(rmse):.2f} px" if rmse else ""))

    def _debug_image(self, rgb: np.ndarray, result: QueryResult, summary: str) -> np.ndarray:
        best = result.best
        if best is None:
            return draw_matches(rgb, np.zeros_like(rgb), np.zeros((0, 2)), np.zeros((0, 2)), text=summary)
        m = best.matches
        keyframe = result.keyframes[best.index]
        order = np.argsort(-m.certainty, kind="stable")
        return draw_matches(rgb, keyframe.image, m.kpts_query, m.kpts_candidate, best.verification.inlier_mask,
                            max_lines=int(self.values["debug.max_lines"]), text=summary, line_order=order)

    def _publish_keyframes(self) -> None:
        """Index-aligned keyframe poses; an empty array when no keyframe has a pose, so a
        reload that drops all poses also clears what late subscribers receive."""
        keyframes = self.relocalizer.keyframes if self.relocalizer else []
        poses = [k.pose for k in keyframes] if any(k.pose is not None for k in keyframes) else []
        header = Header(frame_id=self.values["frame_id"], stamp=self.get_clock().now().to_msg())
        self.pub_keyframes.publish(poses_to_pose_array(header, poses))

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        recent = [t for t in self.processed_times if now - t < 10.0]
        rate = len(recent) / 10.0
        lat = list(self.latencies)
        level = Level.OK
        if self.state.startswith("error"):
            level = Level.ERROR
        elif self.state != "ready":
            level = Level.WARN
        health, health_text = self.frames.level()
        level = max(level, health)  # DiagnosticStatus's numbers
        counts = self.frames.counts()
        values = {
            "state": self.state,
            "model": self.values["model"],
            "device": getattr(self.relocalizer.matcher, "device", "") if self.relocalizer else self.values["device"],
            "keyframes": str(len(self.relocalizer.keyframes) if self.relocalizer else 0),
            "keyframes_dir": str(self.store.directory),
            **{key: str(count) for key, count in counts.items()},
            "lost_in_transport": str(self.transport_gaps.lost) if self.transport_gaps.seen else
            "unknown: no publication sequence numbers (ROS 2 Humble, or an RMW without them)",
            "accepted": str(self.accepted),
            "rate_hz": f"{rate:.2f}",
            "latency_mean_ms": f"{1000 * float(np.mean(lat)):.1f}" if lat else "",
            "latency_max_ms": f"{1000 * max(lat):.1f}" if lat else "",
            "dropped_frames": str(counts["replaced"]),  # deprecated alias of replaced
            "last_result": self.last_result,
            "last_error": self.last_error,
            **self.pose_status,
            "pose_frame": self.values["base_frame"] if self.values["camera_to_base"] else "camera optical frame",
            "query_intrinsics": self._intrinsics_source(),
        }
        message = f"{self.state}; {health_text}" if health_text else self.state
        status = DiagnosticStatus(level=bytes([level]), name=f"{self.get_fully_qualified_name()}: relocalization",
                                  message=message, hardware_id=values["device"],
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        self.pub_diag.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))

    def _intrinsics_source(self) -> str:
        if self._camera_info is not None:
            return f"camera_info ({self._camera_info[2]})" if self._camera_info[2] else "camera_info"
        return "query_intrinsics parameter" if self.values["query_intrinsics"] else "none"

    def _record_error(self, cause: str, message: str) -> None:
        """Remember the full message for diagnostics; log it at most once per cause (one of
        LOG_CAUSES) per 10 s, saying how many lines of that cause were held back."""
        self.last_error = message
        suppressed = self._throttle.allow(cause)
        if suppressed is not None:
            more = f" ({suppressed} more like it in the last {LOG_THROTTLE_S:.0f} s)" if suppressed else ""
            self.get_logger().error(message + more)

    def _not_ready(self) -> str:
        reason = self.last_error if self.state.startswith("error") and self.last_error else self.state
        return f"matcher not ready: {reason}"

    # ------------------------------------------------------------------ services
    def _on_add_keyframe(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        rgb, header = self._latest_rgb, self._latest_header
        if self.relocalizer is None:
            response.success, response.message = False, self._not_ready()
        elif rgb is None:
            response.success, response.message = False, "no query image received yet: publish on `image` first"
        else:
            inputs, stored, missing = self._keyframe_inputs(rgb, header)
            try:
                keyframe = self.store.add(rgb, self.relocalizer.keyframes, **inputs)
            except (OSError, ValueError) as exc:
                response.success, response.message = False, f"could not write to {self.store.directory}: {exc}"
                return response
            index = self.relocalizer.add_keyframe(keyframe)
            self.state = "ready"
            self._publish_keyframes()
            response.success = True
            response.message = f"added keyframe '{keyframe.name}' (index {index}) as {self.store.directory / keyframe.image_file}"
            if keyframe.depth is not None:
                stored = [f"depth ({keyframe.depth_file}, {valid_fraction(keyframe.depth):.0%} valid)"
                          if s == "depth" else s for s in stored]
            response.message += f"; stored: {', '.join(stored) or 'image only'}"
            response.message += f"; missing: {'; '.join(missing)}" if missing else ""
            self.get_logger().info(response.message)
        return response

    def _keyframe_inputs(self, rgb: np.ndarray, header: Header) -> tuple[dict[str, Any], list[str], list[str]]:
        """What ~/add_keyframe stores with the image: intrinsics (camera_info, else query_intrinsics),
        the depth frame and the keyframe pose nearest the image stamp within sync_tolerance.
        Returns (KeyframeStore.add keyword arguments, what was found, what is missing and why)."""
        inputs: dict[str, Any] = {}
        stored: list[str] = []
        missing: list[str] = []
        tolerance = float(self.values["sync_tolerance"])
        camera, problem = self._query_camera(rgb)
        if camera is None:
            missing.append(f"intrinsics ({problem})")
        elif self._camera_info is not None:
            inputs["intrinsics"] = camera_info_intrinsics(self._camera_info[0])
            stored.append("intrinsics (camera_info)")
        else:
            inputs["intrinsics"] = dict(zip(INTRINSICS_KEYS, map(float, self.values["query_intrinsics"])))
            stored.append("intrinsics (query_intrinsics)")
        found = self._depth_frames.nearest(header.stamp, tolerance)
        if found.item is None:
            missing.append(f"depth ({found.why_missing('depth frame', tolerance)})")
        else:
            try:
                depth = depth_msg_to_array(found.item)
                check_registered(depth.shape, rgb.shape, "the depth frame",
                                 fix="publish depth registered to the colour image")
            except (ImageConversionError, DepthFileError) as exc:
                missing.append(f"depth ({exc})")
            else:
                inputs["depth"] = depth
                stored.append("depth")
        found = self._keyframe_poses.nearest(header.stamp, tolerance)
        if found.item is None:
            missing.append(f"pose ({found.why_missing('keyframe_pose', tolerance)})")
        else:
            inputs["pose"] = found.item
            stored.append("pose (keyframe_pose)")
        return inputs, stored, missing

    def _on_reload_keyframes(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.relocalizer is None:
            response.success, response.message = False, self._not_ready()
            return response
        count = self._try_reload()
        if count is None:
            response.success, response.message = False, self.last_error
            return response
        warnings = f"; warnings: {' | '.join(self.store.warnings)}" if self.store.warnings else ""
        response.success = True
        response.message = f"loaded {count} keyframes from {self.store.directory}{warnings}"
        return response

    def destroy_node(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    try:
        node = MatchNode()
    except (P.ParameterError, ParameterException) as exc:
        if not isinstance(exc, P.ParameterError):  # rclpy's own parameters (use_sim_time)
            rclpy.logging.get_logger("roma_matcher").fatal(f"bad parameter, the node stops: {exc}")
        rclpy.try_shutdown()
        sys.exit(EXIT_BAD_PARAMETER)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
