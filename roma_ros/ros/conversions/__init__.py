"""sensor_msgs <-> numpy, and matching results -> standard ROS messages.

No rclpy here (message packages only), so everything is testable without a running ROS graph.
``images``: Image / CompressedImage <-> numpy with the size guards, depth images;
``matches``: the ~/matches PointCloud2; ``poses``: pose messages, markers, CameraInfo.
"""

from roma_ros.ros.conversions.images import (
    DEPTH_ENCODINGS, FRAME_FAULTS, MIN_IMAGE_SIDE, SUPPORTED_ENCODINGS, ImageConversionError, compressed_msg_to_rgb,
    depth_msg_to_array, depth_msg_to_metres, image_msg_to_rgb, mono_to_image_msg, rgb_to_compressed_msg,
    rgb_to_image_msg,
)
from roma_ros.ros.conversions.matches import MATCH_FIELDS, matches_to_pointcloud2, pointcloud2_to_matches
from roma_ros.ros.conversions.poses import (
    COVARIANCE_MAX, CameraInfoError, camera_info_intrinsics, camera_info_to_camera,
    floor_covariance, initialpose_covariance, match_markers, msg_to_pose, pose_with_covariance_msg, poses_to_pose_array,
)

__all__ = [
    "COVARIANCE_MAX",
    "CameraInfoError",
    "DEPTH_ENCODINGS",
    "FRAME_FAULTS",
    "ImageConversionError",
    "MATCH_FIELDS",
    "MIN_IMAGE_SIDE",
    "SUPPORTED_ENCODINGS",
    "camera_info_intrinsics",
    "camera_info_to_camera",
    "compressed_msg_to_rgb",
    "depth_msg_to_array",
    "depth_msg_to_metres",
    "floor_covariance",
    "initialpose_covariance",
    "image_msg_to_rgb",
    "match_markers",
    "matches_to_pointcloud2",
    "mono_to_image_msg",
    "msg_to_pose",
    "pointcloud2_to_matches",
    "pose_with_covariance_msg",
    "poses_to_pose_array",
    "rgb_to_compressed_msg",
    "rgb_to_image_msg",
]
