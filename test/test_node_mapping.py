"""match_node's mapping mode over real DDS: with ``mapping.enabled`` on, the node stores a query
frame as a keyframe whenever keyframe_pose shows the camera far (distance or angle) from every
stored keyframe, with its depth, intrinsics and pose, and counts it in /diagnostics. Classical
matcher, rendered frames of the synthetic room with their true poses."""
from __future__ import annotations

import numpy as np
import pytest
import rclpy
from bagutil import MAP_WAYPOINTS, camera_run
from geometry_msgs.msg import PoseStamped
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image

from rosutil import RELIABLE, Probe, Spinner, wait_for
from roma_ros.core.transforms import pose_to_matrix, rotation_angle_deg
from roma_ros.demo.synthetic_scene import default_camera, render
from roma_ros.mapping.keyframing import KeyframeRule
from roma_ros.ros.conversions.images import _bytes
from roma_ros.store import KeyframeStore

RUN = camera_run(MAP_WAYPOINTS, 20)
SIZE = (240, 320)


class MappingProbe(Probe):
    def __init__(self) -> None:
        super().__init__()
        self.pub_info = self.create_publisher(CameraInfo, "/camera_info", RELIABLE)
        self.pub_depth = self.create_publisher(Image, "/depth", RELIABLE)
        self.pub_pose = self.create_publisher(PoseStamped, "/keyframe_pose", RELIABLE)

    def next_stamp(self):
        return rclpy.time.Time(seconds=1000 + self._stamp + 1).to_msg()


def depth_msg(depth_m: np.ndarray, stamp) -> Image:
    mm = np.where(np.isfinite(depth_m), np.rint(depth_m * 1000), 0).astype("<u2")
    msg = Image(height=mm.shape[0], width=mm.shape[1], encoding="16UC1", step=mm.shape[1] * 2, data=_bytes(mm))
    msg.header.stamp = stamp
    return msg


def info_msg(camera) -> CameraInfo:
    fx, fy, cx, cy = camera.to_ros()
    return CameraInfo(width=SIZE[1], height=SIZE[0], distortion_model="plumb_bob", d=[0.0] * 5,
                      k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])


def pose_msg(pose, stamp) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp, "map"
    (msg.pose.position.x, msg.pose.position.y, msg.pose.position.z) = pose[0]
    (msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z, msg.pose.orientation.w) = pose[1]
    return msg


@pytest.fixture
def mapping_node(ros, tmp_path):
    from roma_ros.ros.node import MatchNode

    node = MatchNode(parameter_overrides=[Parameter(k, value=v) for k, v in {
        "model": "classical", "keyframes_dir": str(tmp_path / "kf"), "image_qos": "reliable",
        "diagnostics_period": 0.2, "ransac.threshold": 1.0, "min_inliers": 20, "mapping.max_interval": 0.0,
        "mode": "continuous", "max_rate_hz": 0.0,  # every frame is matched, with mapping off too
    }.items()])
    probe = MappingProbe()
    spinner = Spinner(node, probe)
    wait_for(lambda: node.state in ("ready", "waiting for keyframes"), 60, "the node to load")
    for publisher in (probe.pub_info, probe.pub_depth, probe.pub_pose):
        wait_for(publisher.get_subscription_count, 20, f"the node's {publisher.topic_name} subscription")
    yield node, probe
    spinner.shut_down()


def send_posed(node, probe, view, pose) -> None:
    """keyframe_pose and depth at the next query's stamp, then the query itself."""
    stamp = probe.next_stamp()
    poses = len(node._keyframe_poses)
    probe.pub_pose.publish(pose_msg(pose, stamp))
    probe.pub_depth.publish(depth_msg(view.depth, stamp))
    wait_for(lambda: len(node._keyframe_poses) > poses, 10, "the keyframe_pose at the node")
    probe.send(view.rgb)


def test_mapping_mode_adds_keyframes_far_from_every_stored_one(mapping_node, tmp_path) -> None:
    node, probe = mapping_node
    camera = default_camera(SIZE)
    probe.pub_info.publish(info_msg(camera))
    views = [render(pose, camera, SIZE) for pose in RUN.poses]
    send_posed(node, probe, views[0], RUN.poses[0])  # mapping off: nothing stored
    wait_for(lambda: probe.latest_diagnostics().get("mapping") == "off", 10, "diagnostics with mapping off")
    assert node.mapping_added == 0 and not (tmp_path / "kf").exists()

    assert node.set_parameters([Parameter("mapping.min_distance", value=0.0)])[0].successful
    refused = node.set_parameters([Parameter("mapping.min_angle", value=0.0)])[0]
    assert not refused.successful and "every frame would be a keyframe" in refused.reason
    assert node.set_parameters([Parameter("mapping.min_distance", value=0.5)])[0].successful
    assert node.set_parameters([Parameter("mapping.enabled", value=True)])[0].successful
    for view, pose in zip(views, RUN.poses):
        send_posed(node, probe, view, pose)
    expected = []  # brute force over the truth, as test_bag_import does
    rule = KeyframeRule()
    for i, pose in enumerate(RUN.poses):
        T = pose_to_matrix(pose)
        if not any(np.linalg.norm(T[:3, 3] - pose_to_matrix(RUN.poses[k])[:3, 3]) < rule.min_distance and
                   rotation_angle_deg(T[:3, :3], pose_to_matrix(RUN.poses[k])[:3, :3]) < rule.min_angle_deg
                   for k in expected):
            expected.append(i)
    assert 3 <= len(expected) < len(views)
    wait_for(lambda: node.mapping_added == len(expected), 30, f"{len(expected)} keyframes added")
    keyframes = KeyframeStore(tmp_path / "kf").load()
    assert len(keyframes) == len(expected) == len(node.relocalizer.keyframes)
    for keyframe, i in zip(keyframes, expected):
        assert np.allclose(keyframe.pose[0], RUN.poses[i][0]) and keyframe.posable
        np.testing.assert_array_equal(keyframe.image, views[i].rgb)
    diagnostics = wait_for(lambda: (d := probe.latest_diagnostics()).get("mapping_keyframes_added") ==
                           str(len(expected)) and d, 10, "the additions in /diagnostics")
    assert diagnostics["mapping"] == "on" and diagnostics["keyframes"] == str(len(expected))

    # The same place again: nothing new. No pose at the stamp: nothing, and diagnostics say why.
    send_posed(node, probe, views[0], RUN.poses[0])
    probe.send(views[-1].rgb)
    wait_for(lambda: "no keyframe added: no keyframe_pose within" in node.mapping_last, 10, "the reason")
    assert node.mapping_added == len(expected)


def test_mapping_mode_stores_frames_in_on_demand_mode_too(ros, tmp_path) -> None:
    """on_demand matches nothing until ~/relocalize, but a mapping run must not need one."""
    from roma_ros.ros.node import MatchNode

    node = MatchNode(parameter_overrides=[Parameter(k, value=v) for k, v in {
        "model": "classical", "keyframes_dir": str(tmp_path / "kf"), "image_qos": "reliable",
        "mode": "on_demand", "max_rate_hz": 0.0, "mapping.enabled": True, "mapping.max_interval": 0.0,
    }.items()])
    probe = MappingProbe()
    spinner = Spinner(node, probe)
    try:
        wait_for(lambda: node.state in ("ready", "waiting for keyframes"), 60, "the node to load")
        for publisher in (probe.pub_info, probe.pub_depth, probe.pub_pose):
            wait_for(publisher.get_subscription_count, 20, f"the node's {publisher.topic_name} subscription")
        camera = default_camera(SIZE)
        probe.pub_info.publish(info_msg(camera))
        send_posed(node, probe, render(RUN.poses[0], camera, SIZE), RUN.poses[0])
        wait_for(lambda: node.mapping_added == 1, 30, "the first keyframe")
        assert len(KeyframeStore(tmp_path / "kf").load()) == 1
    finally:
        spinner.shut_down()
