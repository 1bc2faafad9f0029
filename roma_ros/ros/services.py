"""match_node's services: ~/add_keyframe (the latest image with its depth, pose and intrinsics,
stored in one index update) and ~/reload_keyframes."""
from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from roma_ros.ros.conversions import (
    ImageConversionError, camera_info_intrinsics,
    depth_msg_to_array,
)
from roma_ros.core.text import MESSAGE_LIMIT, printable
from roma_ros.store import INTRINSICS_KEYS, DepthFileError, check_registered, valid_fraction

# Requests waiting while a service callback runs: rclpy's default keeps 10, so of 30 clients
# calling ~/reload_keyframes at once 20 were never answered. 100 waiting requests cost nothing.
SERVICE_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


class ServicesMixin:
    """The Trigger services; they run in their own callback group, beside the worker."""

    def _on_add_keyframe(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        rgb, header = self._latest_image()
        if self.relocalizer is None:
            response.success, response.message = False, self._not_ready()
        elif rgb is None:
            response.success, response.message = False, "no query image received yet: publish on `image` first"
        else:
            inputs, stored, missing = self._keyframe_inputs(rgb, header)
            try:
                keyframe = self.store.add(rgb, self.relocalizer.keyframes, **inputs)
            except (OSError, ValueError, sqlite3.Error) as exc:
                response.success, response.message = False, printable(
                    f"could not write to {self.store.directory}: {exc}", MESSAGE_LIMIT)
                return response
            index = self.relocalizer.add_keyframe(keyframe)
            self.state = self._ready_state()
            self._keyframes_added([keyframe])
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
            inputs["intrinsics"] = camera_info_intrinsics(self._camera_info[0], self.values["camera_info_rectified"])
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
        warnings = (f"; warnings: {printable(' | '.join(self.store.warnings), MESSAGE_LIMIT)}"
                    if self.store.warnings else "")
        response.success = True
        response.message = f"loaded {count} keyframes from {self.store.directory}{warnings}"
        return response
