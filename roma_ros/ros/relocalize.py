"""When match_node works and what it tells AMCL: the two modes, ``~/relocalize``, the robot's
estimate (prior and disagreement check) and the ``initialpose`` decision.

- on_demand: a frame is matched only while a ``~/relocalize`` call waits. The call (its own
  callback group, so the executor goes on) waits until the worker publishes a pose or
  ``relocalize_timeout`` passes, and answers with keyframe, inliers and pose, or why not.
- continuous: every frame (at most ``max_rate_hz``), while anyone subscribes to ~/pose, ~/matches,
  ~/markers, ~/debug_image or initialpose (AMCL does); /diagnostics and ~/keyframes do not count.

``initialpose`` goes out after an answered ``~/relocalize`` and, in continuous mode, once when
``disagree.frames`` consecutive poses disagree with ``estimate_topic`` (then not again until a new
estimate arrives). Always base_frame's pose: without ``camera_to_base`` it is refused.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from roma_ros.localize.pipeline import QueryResult
from roma_ros.localize.pose import Pose
from roma_ros.localize.prior import Disagreement, within_radius, yaw
from roma_ros.ros.conversions import initialpose_covariance, msg_to_pose, pose_with_covariance_msg

NO_BASE = ("camera_to_base is empty, so the pose is the camera optical frame's (z forward): AMCL would "
           "get a yaw about 90 degrees off; set camera_to_base to the static tf base_frame -> camera "
           "optical frame")


@dataclass
class RelocalizeRequest:
    """One waiting ``~/relocalize`` call; the worker fills ``answer`` and sets ``done``."""

    deadline: float  # time.monotonic()
    done: threading.Event = field(default_factory=threading.Event)
    answer: tuple[bool, str] | None = None
    frames: int = 0
    last_reason: str = "no frame arrived on the image topic"


class RelocalizeMixin:
    """Mode gating, the estimate, the disagreement check and ``initialpose``."""

    # ----- which frames are worked on -----------------------------------------------------------
    def _wants_frames(self) -> bool:
        if not self._active or self.relocalizer is None:
            return False
        if self._request is not None or self.values["mapping.enabled"]:  # mapping stores frames as they come
            return True
        return self.values["mode"] == "continuous" and self._has_listeners()

    def _has_listeners(self) -> bool:
        """Anyone subscribed to an output that the matching feeds (AMCL subscribes initialpose)."""
        return any(p.get_subscription_count() > 0 for p in self._outputs
                   if p is not self.pub_keyframes and p is not self.pub_keyframes_added)

    # ----- ~/relocalize ------------------------------------------------------------------------
    def _on_relocalize(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if not self._active or self.relocalizer is None:
            response.success = False
            not_active = f"not active (lifecycle state {self._lifecycle_label()}): activate the node first"
            loading_failed = self.relocalizer is None and self.state.startswith("error")
            response.message = self._not_ready() if loading_failed else not_active
            return response
        timeout = float(self.values["relocalize_timeout"])
        waiting = RelocalizeRequest(deadline=time.monotonic() + timeout)
        with self._wake:
            self._request = waiting
        waiting.done.wait(timeout)
        with self._wake:
            if self._request is waiting:
                self._request = None
            if waiting.answer is None:
                waiting.answer = (False, (f"no pose within {timeout:g} s ({waiting.frames} frames matched); "
                                          f"last: {waiting.last_reason}"))
            if self._pending is not None and not self._wants_frames():
                self._pending = None
                self.frames.drop()
        response.success, response.message = waiting.answer
        if response.success:  # one severity per call site (rclpy's rule)
            self.get_logger().info(f"~/relocalize: {response.message}")
        else:
            self.get_logger().warning(f"~/relocalize: {response.message}")
        return response

    def _cancel_relocalize(self, why: str) -> None:
        with self._wake:
            waiting, self._request = self._request, None
            if waiting is not None and waiting.answer is None:
                waiting.answer = (False, f"cancelled: {why}")
        if waiting is not None:
            waiting.done.set()

    def _relocalize_frame_done(self, result: QueryResult, published: Pose | None, sent: str) -> None:
        """After each matched frame: answer a waiting ~/relocalize when the frame gave a pose."""
        waiting = self._request
        if waiting is None or waiting.answer is not None:
            return
        waiting.frames += 1
        if published is None:
            if result.accepted and result.best is not None:
                name = result.keyframes[result.best.index].name
                waiting.last_reason = (f"keyframe '{name}' matched ({result.best.inliers} inliers) but no pose: "
                                       f"{self.pose_status['pose_result']}")
            else:
                waiting.last_reason = f"no match: {result.reason}"
            return
        best = result.best
        (x, y, z), q = published
        frame = self.values["base_frame"] if self.values["camera_to_base"] else "camera optical frame"
        message = (f"keyframe '{result.keyframes[best.index].name}' (index {best.index}), {best.inliers} inliers; "
                   f"{frame} in {self.values['frame_id']}: x={x:.3f} y={y:.3f} z={z:.3f} "
                   f"yaw={math.degrees(yaw(q)):.1f} deg, position std {self.pose_status['position_std_m']} m; "
                   f"initialpose {sent}")
        with self._wake:  # the call may have timed out meanwhile: its answer stands
            if self._request is waiting:
                self._request = None
            if waiting.answer is None:
                waiting.answer = (True, message)
        waiting.done.set()

    # ----- the robot's estimate ----------------------------------------------------------------
    def _create_estimate_subscription(self) -> None:
        # Best effort and volatile match any publisher (AMCL's amcl_pose is reliable, transient local).
        self.create_subscription(PoseWithCovarianceStamped, self.values["estimate_topic"], self._on_estimate,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))

    def _on_estimate(self, msg: PoseWithCovarianceStamped) -> None:
        frame = msg.header.frame_id
        if frame != self.values["frame_id"]:
            self._record_error("estimate", f"ignoring {self.values['estimate_topic']} in frame '{frame}': the "
                                           f"estimate must be in frame_id '{self.values['frame_id']}'")
            return
        try:
            pose = msg_to_pose(msg.pose.pose)
        except ValueError as exc:
            self._record_error("estimate", f"ignoring {self.values['estimate_topic']}: {exc}")
            return
        self._topic_estimate = pose
        self._initialpose_hold = False  # AMCL answered (or moved on): a new disagreement may be reported

    def _estimate(self) -> tuple[Pose, str] | None:
        """The estimate_topic pose when one arrived, else the last published pose, else None."""
        if self._topic_estimate is not None:
            return self._topic_estimate, self.values["estimate_topic"]
        max_age = float(self.values["last_pose_max_age"])
        if self._last_pose is not None and (max_age <= 0 or time.monotonic() - self._last_pose_time <= max_age):
            return self._last_pose, "the last published pose"
        return None

    def _prior(self):
        """The keyframe mask for Relocalizer.process, or None (no radius or no estimate)."""
        radius = float(self.values["prior.radius"])
        estimate = self._estimate()
        if radius <= 0 or estimate is None:
            self.prior_status = "off" if radius <= 0 else "no estimate yet"
            return None
        pose, source = estimate

        def eligible(positions):
            mask = within_radius(positions, pose, radius)
            self.prior_status = f"{int(mask.sum())} of {len(mask)} keyframes within {radius:g} m of {source}"
            return mask

        return eligible

    def _check_disagreement(self, pose: Pose) -> Disagreement:
        estimate = self._estimate()
        angle = float(self.values["disagree.angle"]) if self.values["camera_to_base"] else None
        return self._consensus.observe(pose, estimate[0] if estimate else None, float(self.values["disagree.distance"]),
                                       angle, int(self.values["disagree.frames"]))

    # ----- initialpose -------------------------------------------------------------------------
    def _maybe_send_initialpose(self, header: Header, pose: Pose, covariance: np.ndarray,
                                verdict: Disagreement) -> str:
        """Send initialpose when a ~/relocalize waits or (continuous) the estimate is sustainedly
        wrong; returns what happened, for the ~/relocalize answer."""
        relocalizing = self._request is not None
        disagreeing = (self.values["mode"] == "continuous" and verdict.sustained and self._topic_estimate is not None
                       and not self._initialpose_hold)
        if not (relocalizing or disagreeing):
            return "not sent"
        if not self.values["publish_initialpose"]:
            return "not sent (publish_initialpose is false)"
        if not self.values["camera_to_base"]:
            self.initialpose_status = f"refused: {NO_BASE}"
            self._record_error("initialpose", f"not sending initialpose: {NO_BASE}")
            return f"refused: {NO_BASE}"
        std = float(self.values["initialpose.min_position_std"])
        angle_std = math.radians(float(self.values["initialpose.min_angle_std"]))
        self.pub_initialpose.publish(pose_with_covariance_msg(
            header, pose, initialpose_covariance(covariance, std, angle_std)))
        self._initialpose_hold = disagreeing or self._topic_estimate is not None
        self._initialposes_sent += 1
        why = "~/relocalize" if relocalizing else (f"{verdict.streak} frames {verdict.distance:.2f} m from "
                                                   f"{self.values['estimate_topic']}")
        self.initialpose_status = f"sent {self._initialposes_sent} (last: {why})"
        self.get_logger().info(f"initialpose sent ({why})")
        return "sent"

    def _initialpose_topic(self) -> str:
        return self.pub_initialpose.topic_name if self._outputs else "initialpose"
