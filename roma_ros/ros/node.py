"""`match_node`: the ROS 2 face of the relocalizer, a lifecycle node. This module declares the
parameters and assembles the node from its jobs: ``lifecycle`` (transitions, autostart),
``relocalize`` (modes, ~/relocalize, the estimate, initialpose), ``inputs``, ``worker``,
``outputs``, ``diagnostics``, ``services``.

Callbacks stay short: the image callback only keeps the newest frame (when work is wanted);
one worker thread converts, matches, verifies and publishes, and counts the frames it had to
skip. Model loading (configure) happens in that worker too, so /diagnostics reports "loading"
or a weights error while the executor keeps running. Frame accounting, the log throttle and
the health level live in health.py.

Metric pose: the latest ``camera_info`` (else the ``query_intrinsics`` parameter) is the
query camera; an accepted keyframe with depth, intrinsics and a map pose gives ``~/pose``
once the pose gates and the disagreement check pass, never a placeholder. The ``depth`` and
``keyframe_pose`` topics are only buffered (a few recent messages) for ``~/add_keyframe``,
which stores them with the image in one index update.
"""
from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle.node import LifecycleNodeMixin
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from roma_ros.core.text import MESSAGE_LIMIT, printable
from roma_ros.ros import params as P
from roma_ros.ros.health import FrameAccounting, LogThrottle, SequenceGaps
from roma_ros.matching.base import Matcher
from roma_ros.localize.pipeline import Relocalizer
from roma_ros.localize.prior import Consensus
from roma_ros.localize.pose import CameraModel
from roma_ros.store import KeyframeStore
from roma_ros.mapping.sync import StampBuffer
from roma_ros.ros.diagnostics import LOG_CAUSES, LOG_THROTTLE_S, DiagnosticsMixin
from roma_ros.ros.inputs import POSE_BUFFER, InputsMixin, depth_buffer
from roma_ros.ros.lifecycle import LifecycleMixin
from roma_ros.ros.mapping_mode import MappingModeMixin, keyframe_rule
from roma_ros.ros.outputs import OutputsMixin
from roma_ros.ros.relocalize import RelocalizeMixin
from roma_ros.ros.services import SERVICE_QOS, ServicesMixin
from roma_ros.ros.worker import WorkerMixin

EXIT_BAD_PARAMETER = 2  # a start-up parameter its rules do not allow: `ros2 launch` reports the exit


class MatchNode(InputsMixin, WorkerMixin, OutputsMixin, DiagnosticsMixin, ServicesMixin, RelocalizeMixin,
                MappingModeMixin, LifecycleMixin, LifecycleNodeMixin, Node):
    """match_node, a lifecycle node: parameters and assembly here; each job lives in its own
    module (ros/__init__.py), the transitions in lifecycle.py."""

    def __init__(self, matcher: Matcher | None = None, **kwargs: Any) -> None:
        """``matcher`` replaces the one the parameters describe (tests share one network)."""
        Node.__init__(self, "roma_matcher", **kwargs)
        self._injected_matcher = matcher
        try:
            self.values = self._declare_parameters()
        except P.ParameterError as exc:
            self.get_logger().fatal(f"{printable(exc, MESSAGE_LIMIT)}; the node stops: fix the parameter and "
                                    "start it again")
            Node.destroy_node(self)
            raise
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.state = "unconfigured"
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
        self._last_image: Image | CompressedImage | None = None
        self._pending: Image | CompressedImage | None = None
        self._wake = threading.Condition()
        self._jobs: list = []  # lifecycle jobs for the worker (loading)
        self._busy = threading.Lock()  # held while the worker handles a frame
        self._next_allowed = 0.0  # max_rate_hz: monotonic time the next frame may be taken
        self._stop = threading.Event()
        self._latest_header: Header | None = None
        self._camera_info: tuple[CameraInfo, CameraModel | None, str] | None = None  # msg, camera, error
        self._depth_frames: StampBuffer[Image] = depth_buffer()
        self._keyframe_poses: StampBuffer[tuple] = StampBuffer(POSE_BUFFER)
        self.pose_status = {"pose_result": "", "pose_inliers": "", "reprojection_rmse_px": "",
                            "position_std_m": "", "poses_published": "0"}
        self._poses_published = 0
        self._init_mapping()
        # Lifecycle: publishers exist from configure to cleanup, subscriptions while active.
        self._active = False
        self._activated_at = time.monotonic()
        self._outputs: list = []
        self._active_subscriptions: list = []
        # relocalize.py: the waiting ~/relocalize, the estimate, the disagreement streak, initialpose.
        self._request = None
        self._topic_estimate = None
        self._last_pose, self._last_pose_time = None, 0.0
        self._consensus = Consensus()
        self._initialpose_hold = False
        self._initialposes_sent = 0
        self.initialpose_status = "none sent"
        self.prior_status = "off"

        # /diagnostics reports in every lifecycle state, so it is a plain publisher.
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        services = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "~/add_keyframe", self._on_add_keyframe, callback_group=services,
                            qos_profile=SERVICE_QOS)
        self.create_service(Trigger, "~/reload_keyframes", self._on_reload_keyframes, callback_group=services,
                            qos_profile=SERVICE_QOS)
        # ~/relocalize waits for the worker: its own group, so other callbacks go on meanwhile.
        self.create_service(Trigger, "~/relocalize", self._on_relocalize,
                            callback_group=MutuallyExclusiveCallbackGroup(), qos_profile=SERVICE_QOS)
        # Transitions wait for loading: their own group too (not the default one of the subscriptions).
        LifecycleNodeMixin.__init__(self, callback_group=MutuallyExclusiveCallbackGroup())
        # Wall-clock period (health reports go on while a simulation is paused); stamps use the
        # node clock, so they follow /clock under use_sim_time.
        self.create_timer(self.values["diagnostics_period"], self._publish_diagnostics,
                          clock=Clock(clock_type=ClockType.STEADY_TIME),
                          callback_group=MutuallyExclusiveCallbackGroup())

        # The whole ~/keyframes after additions, at most every keyframes_period (outputs.py).
        self.create_timer(0.25, self._flush_keyframes, clock=Clock(clock_type=ClockType.STEADY_TIME),
                          callback_group=MutuallyExclusiveCallbackGroup())

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
        checked = P.check_startup(values)
        # An empty list reaches the node as "not set" (a params file's []) or as the string "null"
        # (a `ros2 param dump` file); store it as an empty double array, so the next dump writes []
        # and `ros2 param get` shows a list.
        empty = [Parameter(spec.name, Parameter.Type.DOUBLE_ARRAY, []) for spec in P.PARAMS
                 if spec.kind is list and spec.live and not isinstance(values[spec.name], (list, tuple))]
        if empty:
            self.set_parameters(empty)
        return checked

    def _on_set_parameters(self, changes: list) -> SetParametersResult:
        values = dict(self.values)
        try:
            for change in changes:
                if change.type_ == Parameter.Type.NOT_SET:  # rclpy would undeclare it for good
                    raise ValueError(f"{change.name}: a parameter cannot be unset (PARAMETER_NOT_SET): set a "
                                     "value instead (an empty list or string where the parameter allows one)")
                if change.name not in P.SPECS:
                    continue
                values[change.name] = P.check_value(change.name, change.value)
            decision = P.decision_config(values)
            pose_config = P.pose_config(values)
            keyframe_rule(values)
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.values = values
        if self.relocalizer is not None:
            self.relocalizer.set_decision(decision)
            self.relocalizer.set_pose_config(pose_config)
        return SetParametersResult(successful=True)

    def destroy_node(self) -> None:
        self._cancel_relocalize("the node is being destroyed")
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        self._worker.join(timeout=5.0)
        self._active = False
        self.relocalizer = None
        Node.destroy_node(self)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    try:
        node = MatchNode()
    except (P.ParameterError, ParameterException) as exc:
        if not isinstance(exc, P.ParameterError):  # rclpy's own parameters (use_sim_time)
            rclpy.logging.get_logger("roma_matcher").fatal(f"bad parameter, the node stops: {exc}")
        rclpy.try_shutdown()
        sys.exit(EXIT_BAD_PARAMETER)
    # Threads: a waiting ~/relocalize and a configure waiting for the model each hold one.
    executor = MultiThreadedExecutor(num_threads=4)
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
