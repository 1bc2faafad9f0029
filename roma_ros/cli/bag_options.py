"""Pose-source options shared by `roma-keyframes import-bag` and `roma-eval`."""
from __future__ import annotations

import argparse

from roma_ros.mapping.bag import PoseSource


def add_pose_source_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "poses", "the camera optical frame's pose (x right, y down, z forward): a pose topic, or TF between two "
        "frames")
    group.add_argument("--pose-topic", metavar="TOPIC",
                       help="PoseStamped, PoseWithCovarianceStamped or Odometry topic")
    group.add_argument("--camera-frame", metavar="FRAME",
                       help="with --pose-topic: the camera optical frame, when the topic gives another frame "
                            "(Odometry's child_frame_id); the rest of the way comes from /tf_static")
    group.add_argument("--tf-from", metavar="FRAME", help="the map frame of the poses (TF)")
    group.add_argument("--tf-to", metavar="FRAME", help="the camera optical frame (TF)")
    group.add_argument("--max-pose-gap", type=float, default=0.2, metavar="S",
                       help="interpolate only between poses at most this far apart (default: %(default)s s)")
    group.add_argument("--no-optical-check", dest="check_optical", action="store_false",
                       help="accept a camera frame whose z axis points up (default: refused as a body frame)")


def pose_source(args: argparse.Namespace) -> PoseSource:
    return PoseSource(topic=args.pose_topic, tf_from=args.tf_from, tf_to=args.tf_to, camera_frame=args.camera_frame,
                      max_gap_s=args.max_pose_gap, check_optical=args.check_optical)
