"""`match_node`: the ROS 2 face of the relocalizer. This module declares the parameters and
assembles the node from its jobs: ``inputs``, ``worker``, ``outputs``, ``diagnostics``, ``services``.

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
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from roma_ros.ros import params as P
from roma_ros.ros.health import FrameAccounting, LogThrottle, SequenceGaps
from roma_ros.matching.base import Matcher
from roma_ros.localize.pipeline import Relocalizer
from roma_ros.localize.pose import CameraModel
from roma_ros.store import KeyframeStore
from roma_ros.mapping.sync import StampBuffer
from roma_ros.ros.diagnostics import LOG_CAUSES, LOG_THROTTLE_S, DiagnosticsMixin
from roma_ros.ros.inputs import DEPTH_BUFFER, POSE_BUFFER, InputsMixin
from roma_ros.ros.outputs import OutputsMixin
from roma_ros.ros.services import ServicesMixin
from roma_ros.ros.worker import WorkerMixin

EXIT_BAD_PARAMETER = 2  # a start-up parameter its rules do not allow: `ros2 launch` reports the exit


class MatchNode(InputsMixin, WorkerMixin, OutputsMixin, DiagnosticsMixin, ServicesMixin, Node):
    """match_node: parameters and assembly here; each job lives in its own module (ros/__init__.py)."""

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
        self.store = KeyframeStore(P.keyframes_dir(self.values), lazy=True)  # no pixels held per keyframe
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
