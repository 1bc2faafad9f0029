"""match_node's outputs: ~/matches, ~/pose (and initialpose, see relocalize.py), ~/markers, ~/debug_image and
the latched ~/keyframes, from one relocalization result."""
from __future__ import annotations

import math
import time

import numpy as np
from std_msgs.msg import Header

from roma_ros.ros import params as P
from roma_ros.ros.conversions import (
    floor_covariance,
    match_markers, matches_to_pointcloud2, pose_with_covariance_msg,
    poses_to_pose_array, rgb_to_image_msg,
)
from roma_ros.localize.pipeline import QueryResult
from roma_ros.localize.pose import map_pose, position_std
from roma_ros.localize.visualize import draw_matches


class OutputsMixin:
    """Publishing one result: matches, pose, markers and the debug image."""

    def _publish_pose(self, header: Header, result: QueryResult) -> tuple | None:
        """Publish ~/pose when accepted, the gates pass and the pose agrees with the estimate (or
        disagreement.frames frames in a row agree on a new place); initialpose where
        relocalize.py says so. Records the outcome for diagnostics either way. Returns the
        published pose, else None."""
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
        sent = "not sent"
        if published is not None:
            pose, covariance = published
            covariance = floor_covariance(covariance, float(self.values["pose.min_position_std"]),
                                          math.radians(float(self.values["pose.min_angle_std"])))
            verdict = self._check_disagreement(pose)
            if not verdict.publish:
                status["pose_result"] = (f"held: {verdict.streak} of {self.values['disagree.frames']} consecutive "
                                         f"frames {verdict.distance:.2f} m from the estimate")
                published = None
            else:
                std = position_std(covariance)
                status["pose_result"], status["position_std_m"] = "ok", f"{std:.4f}" if np.isfinite(std) else ""
                out_header = Header(stamp=header.stamp, frame_id=self.values["frame_id"])
                self.pub_pose.publish(pose_with_covariance_msg(out_header, pose, covariance))
                self._last_pose, self._last_pose_time = pose, time.monotonic()
                sent = self._maybe_send_initialpose(out_header, pose, covariance, verdict)
                self._poses_published += 1
        status["poses_published"] = str(self._poses_published)
        self.pose_status = status
        self._relocalize_frame_done(result, published[0] if published is not None else None, sent)
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
        """The whole map: index-aligned keyframe poses; an empty array when no keyframe has a
        pose, so a reload that drops all poses also clears what late subscribers receive.
        On load, reload and activation; after additions at most every ``keyframes_period``
        (``_keyframes_added``): at 10^5 keyframes one such message costs seconds."""
        keyframes = self.relocalizer.keyframes if self.relocalizer else []
        poses = [k.pose for k in keyframes] if any(k.pose is not None for k in keyframes) else []
        header = Header(frame_id=self.values["frame_id"], stamp=self.get_clock().now().to_msg())
        self._keyframes_state = (time.monotonic(), False)  # (last published, additions since)
        self.pub_keyframes.publish(poses_to_pose_array(header, poses))

    def _keyframes_added(self, added: list) -> None:
        """After an addition: the new keyframes' poses at once on ``~/keyframes_added`` (in order;
        they are the last of ~/keyframes' order; identity for one without a pose), and the whole
        array when ``keyframes_period`` has passed, else later by ``_flush_keyframes``."""
        if not added:
            return
        header = Header(frame_id=self.values["frame_id"], stamp=self.get_clock().now().to_msg())
        self.pub_keyframes_added.publish(poses_to_pose_array(header, [k.pose for k in added]))
        last, _ = getattr(self, "_keyframes_state", (0.0, False))
        self._keyframes_state = (last, True)
        self._flush_keyframes()

    def _flush_keyframes(self) -> None:
        """The whole array once ``keyframes_period`` has passed since the last one, when keyframes
        were added since (a timer calls this; cheap otherwise). Not while inactive: activation
        publishes it whole anyway."""
        last, pending = getattr(self, "_keyframes_state", (0.0, False))
        period = float(self.values["keyframes_period"])
        if pending and period > 0 and time.monotonic() - last >= period and self._outputs and self._active:
            self._publish_keyframes()
