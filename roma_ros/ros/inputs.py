"""match_node's inputs: the image subscription (newest frame kept for the worker), camera_info
(the query camera), and the depth and keyframe_pose topics, only buffered for ~/add_keyframe."""
from __future__ import annotations


import numpy as np
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from roma_ros.ros import params as P
from roma_ros.ros.conversions import (
    CameraInfoError, camera_info_to_camera, msg_to_pose,
)
from roma_ros.localize.pose import CameraModel
from roma_ros.core.text import printable
from roma_ros.mapping.sync import StampBuffer

try:  # Iron and newer: a two-argument callback also gets the MessageInfo (Humble has none)
    from rclpy.subscription import MessageInfo  # noqa: F401
    HAS_MESSAGE_INFO = True
except ImportError:
    HAS_MESSAGE_INFO = False

# Recent depth frames / keyframe poses kept for ~/add_keyframe: ~1 s of a 30 Hz depth camera
# (18 MB of 640x480 16UC1, 37 MB of 32FC1), a few seconds of a SLAM pose stream.
# Bounded by bytes too: a publisher choosing 4000x4000 32FC1 would otherwise add 1.9 GB.
# A depth frame over max_image_pixels, or over the whole byte budget, is refused (cause "depth").
DEPTH_BUFFER = 30
DEPTH_BUFFER_BYTES = 64 * 2**20
POSE_BUFFER = 200


def depth_buffer() -> StampBuffer[Image]:
    """The depth frames kept for ~/add_keyframe: at most DEPTH_BUFFER frames and DEPTH_BUFFER_BYTES."""
    return StampBuffer(DEPTH_BUFFER, DEPTH_BUFFER_BYTES, lambda msg: len(msg.data))


class InputsMixin:
    """Subscriptions and their callbacks; callbacks stay short, the worker does the work."""

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
            camera, error = camera_info_to_camera(msg, self.values["camera_info_rectified"]), ""
        except CameraInfoError as exc:
            camera, error = None, str(exc)
            self._record_error("camera_info", f"ignoring camera_info: {exc}")
        self._camera_info = (msg, camera, error)

    def _on_depth(self, msg: Image) -> None:
        pixels, limit = int(msg.width) * int(msg.height), int(self.values["max_image_pixels"])
        try:
            if pixels > limit:
                raise ValueError(f"{msg.width}x{msg.height} is more than max_image_pixels {limit}")
            self._depth_frames.add(msg.header.stamp, msg)
        except ValueError as exc:
            self._record_error("depth", f"ignoring a depth frame: {exc}; publish depth registered to the "
                                        "colour image, at its size")

    def _on_keyframe_pose(self, msg: PoseStamped | PoseWithCovarianceStamped) -> None:
        frame = msg.header.frame_id
        if frame and frame != self.values["frame_id"]:
            self._record_error("keyframe_pose", f"ignoring keyframe_pose in frame '{printable(frame)}': keyframe poses "
                               f"must be in frame_id '{self.values['frame_id']}'")
            return
        try:
            pose = msg_to_pose(msg.pose.pose if isinstance(msg, PoseWithCovarianceStamped) else msg.pose)
        except ValueError as exc:
            self._record_error("keyframe_pose", f"ignoring keyframe_pose: {exc}")
            return
        self._keyframe_poses.add(msg.header.stamp, pose)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Keep the newest frame for the worker when work is wanted (relocalize.py), else only count it."""
        self._last_image = msg  # for ~/add_keyframe in any mode
        with self._wake:
            if not self._wants_frames():
                self.frames.receive(replacing=False, wanted=False)
                return
            self.frames.receive(replacing=self._pending is not None)
            self._pending = msg
            self._wake.notify()

    def _query_camera(self, rgb: np.ndarray) -> tuple[CameraModel | None, str]:
        """The latest camera_info (its size must be the image's), else query_intrinsics; or why none."""
        if self._camera_info is not None:
            msg, camera, error = self._camera_info
            if error:
                return None, error
            if (msg.width, msg.height) != (rgb.shape[1], rgb.shape[0]):  # 0x0 is refused on arrival
                return None, (f"camera_info is {msg.width}x{msg.height} but the image is "
                              f"{rgb.shape[1]}x{rgb.shape[0]}")
            return camera, ""
        camera = P.query_camera(self.values)
        return camera, "" if camera else "no query intrinsics: no camera_info received and query_intrinsics is empty"
