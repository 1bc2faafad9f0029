"""match_node's metric pose over real DDS: camera_info in, ~/pose and /initialpose out, the pose
parameters, and building a posed depth map with ~/add_keyframe from depth and pose topics.

The synthetic scene (textured planes with exact depth) gives ground truth; the classical
matcher with the demo's thresholds (ransac.threshold 1.0, min_inliers 20) makes real matches.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import rclpy
import yaml
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rclpy.duration import Duration
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import Marker

from rosutil import RELIABLE, Probe, Spinner, wait_for
from roma_ros.ros.conversions.images import _bytes
from roma_ros.localize.pose import matrix_to_pose, pose_to_matrix, rotation_angle_deg
from roma_ros.store import KeyframeStore
from roma_ros.demo.synthetic_scene import relocalization_set
from roma_ros.demo.photo_pairs import make_pair

# The classical matcher on 240x320 renders lands within ~1 cm and 0.2 deg (test_pipeline_pose).
MAX_POSITION_ERROR_M = 0.05
MAX_ROTATION_ERROR_DEG = 1.0
SETTINGS = {"ransac.threshold": 1.0, "min_inliers": 20}


class PoseProbe(Probe):
    """The test probe plus the pose topics: camera_info, depth and keyframe_pose out; ~/pose and
    /initialpose in."""

    def __init__(self, pose_type: type = PoseStamped) -> None:
        super().__init__()
        self.poses: list[PoseWithCovarianceStamped] = []
        self.initialposes: list[PoseWithCovarianceStamped] = []
        self.create_subscription(PoseWithCovarianceStamped, "/roma_matcher/pose", self.poses.append, RELIABLE)
        self.create_subscription(PoseWithCovarianceStamped, "/initialpose", self.initialposes.append, RELIABLE)
        self.pub_info = self.create_publisher(CameraInfo, "/camera_info", RELIABLE)
        self.pub_depth = self.create_publisher(Image, "/depth", RELIABLE)
        self.pub_keyframe_pose = self.create_publisher(pose_type, "/keyframe_pose", RELIABLE)

    def next_stamp(self):
        """The stamp ``send`` gives the next query."""
        return rclpy.time.Time(seconds=1000 + self._stamp + 1).to_msg()

    def pose_for(self, cloud, timeout: float = 5.0) -> PoseWithCovarianceStamped:
        stamp = (cloud.header.stamp.sec, cloud.header.stamp.nanosec)
        return wait_for(lambda: next((p for p in self.poses if (p.header.stamp.sec, p.header.stamp.nanosec) == stamp),
                                     None), timeout, "the ~/pose of the query")

    def no_pose_for(self, cloud) -> bool:
        time.sleep(0.5)  # ~/pose goes out before the cloud; give DDS a moment anyway
        return not any(p.header.stamp == cloud.header.stamp for p in self.poses)


def camera_info_msg(view, stamp=None) -> CameraInfo:
    fx, fy, cx, cy = view.camera.to_ros()
    h, w = view.rgb.shape[:2]
    msg = CameraInfo(width=w, height=h, distortion_model="plumb_bob", d=[0.0] * 5,
                     k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
    msg.header.frame_id = "camera_optical"
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def errors(msg: PoseWithCovarianceStamped, truth) -> tuple[float, float]:
    p, o = msg.pose.pose.position, msg.pose.pose.orientation
    found = pose_to_matrix(((p.x, p.y, p.z), (o.x, o.y, o.z, o.w)))
    expected = pose_to_matrix(truth)
    return float(np.linalg.norm(found[:3, 3] - expected[:3, 3])), rotation_angle_deg(found[:3, :3], expected[:3, :3])


@pytest.fixture(scope="module")
def scene():
    return relocalization_set(seed=0, n_queries=5)


def posed_store(folder, views) -> None:
    """Keyframes with depth, intrinsics and poses, written through the store as roma-keyframes does."""
    store = KeyframeStore(folder)
    for view in views:
        fx, fy, cx, cy = view.camera.to_ros()
        store.add(view.rgb, store.load(), name=view.name, pose=view.pose, depth=view.depth,
                  intrinsics={"fx": fx, "fy": fy, "cx": cx, "cy": cy})


def start_node(folder, **overrides):
    from roma_ros.ros.node import MatchNode

    node = MatchNode(parameter_overrides=[Parameter(k, value=v) for k, v in {
        "model": "classical", "keyframes_dir": str(folder), "image_qos": "reliable",
        "diagnostics_period": 0.2, "mode": "continuous", "max_rate_hz": 0.0,
        "disagree.frames": 1, **SETTINGS, **overrides}.items()])
    with_covariance = overrides.get("keyframe_pose_type") == "pose_with_covariance_stamped"
    probe = PoseProbe(PoseWithCovarianceStamped if with_covariance else PoseStamped)
    spinner = Spinner(node, probe)
    wait_for(lambda: node.state in ("ready", "waiting for keyframes"), 60, "the node to load")
    return node, probe, spinner


@pytest.fixture
def posed(ros, tmp_path, scene):
    keyframes, _ = scene
    posed_store(tmp_path / "kf", keyframes)
    node, probe, spinner = start_node(tmp_path / "kf")
    yield node, probe
    spinner.shut_down()


def test_pose_near_ground_truth_only_with_intrinsics_and_a_match(posed, scene):
    node, probe = posed
    keyframes, queries = scene
    # No camera_info and no query_intrinsics: the match is published, the pose is not.
    cloud = probe.send(queries[0].rgb)
    assert cloud.width >= 20 and probe.no_pose_for(cloud)
    assert node.pose_status["pose_result"].startswith("no query intrinsics")
    wait_for(lambda: probe.latest_diagnostics().get("pose_result", "").startswith("no query intrinsics"), 10,
             "the pose_result in diagnostics")

    wait_for(lambda: probe.pub_info.get_subscription_count(), 20, "the camera_info subscription")
    probe.pub_info.publish(camera_info_msg(queries[0]))
    wait_for(lambda: node._camera_info is not None, 10, "camera_info at the node")
    for query in queries:
        cloud = probe.send(query.rgb)
        pose = probe.pose_for(cloud)
        assert pose.header.frame_id == "map" and pose.header.stamp == cloud.header.stamp
        position_error, rotation_error = errors(pose, query.pose)
        assert position_error < MAX_POSITION_ERROR_M and rotation_error < MAX_ROTATION_ERROR_DEG, query.name
        covariance = np.asarray(pose.pose.covariance).reshape(6, 6)
        assert np.all(np.diag(covariance) > 0) and np.allclose(covariance, covariance.T)
        # The arrow marker sits at the published pose.
        arrow = wait_for(lambda: next((m for a in probe.markers[::-1] for m in a.markers
                                       if m.type == Marker.ARROW and m.action == Marker.ADD
                                       and m.header.stamp == cloud.header.stamp), None), 10, "the pose arrow")
        assert arrow.pose.position == pose.pose.pose.position
    diagnostics = wait_for(lambda: (d := probe.latest_diagnostics()).get("poses_published") == "5" and d, 10,
                           "diagnostics counting 5 poses")
    assert diagnostics["pose_result"] == "ok" and int(diagnostics["pose_inliers"]) >= 20
    assert 0 < float(diagnostics["reprojection_rmse_px"]) < 1.5 and 0 < float(diagnostics["position_std_m"]) < 0.1
    assert diagnostics["query_intrinsics"] == "camera_info" and diagnostics["pose_frame"] == "camera optical frame"

    # A distractor: no match, so no pose (never a placeholder or the last pose).
    count = len(probe.poses)
    cloud = probe.send(make_pair("grass", seed=5, size=(240, 320)).query)
    assert cloud.width == 0 and probe.no_pose_for(cloud) and len(probe.poses) == count
    assert node.pose_status["pose_result"] == "no match"
    # Continuous mode without an estimate (no amcl_pose) and no ~/relocalize: never an initialpose.
    assert not probe.initialposes


def test_camera_to_base_covariance_floor_and_live_gates(posed, scene):
    node, probe = posed
    keyframes, queries = scene
    query = queries[2]
    assert node.set_parameters([Parameter("query_intrinsics", value=list(query.camera.to_ros()))])[0].successful
    cloud = probe.send(query.rgb)
    camera_pose = probe.pose_for(cloud)
    assert errors(camera_pose, query.pose)[0] < MAX_POSITION_ERROR_M  # the query_intrinsics fallback works
    # The covariance floor is live: x, y, z at least min_position_std^2, angles min_angle_std^2.
    assert node.set_parameters([Parameter("pose.min_position_std", value=0.05),
                                Parameter("pose.min_angle_std", value=2.0)])[0].successful
    floored = np.asarray(probe.pose_for(probe.send(query.rgb)).pose.covariance).reshape(6, 6)
    assert np.all(np.diag(floored)[:3] >= 0.05 ** 2 - 1e-12) and np.all(np.diag(floored)[3:] >= np.radians(2.0) ** 2 - 1e-12)
    assert np.all(np.linalg.eigvalsh(floored) > 0) and np.allclose(floored, floored.T)
    # The default floor (a few mm) is below the estimate's own variance; the 5 cm one lifts it.
    assert 0.003 ** 2 <= np.asarray(camera_pose.pose.covariance)[0] < floored[0, 0] + 1e-12

    # camera_to_base: the base frame's pose, T_map_base = T_map_cam inv(T_base_cam).
    base_to_camera = ((0.2, 0.0, 0.5), (-0.5, 0.5, -0.5, 0.5))  # optical frame of a forward camera
    assert node.set_parameters([Parameter("camera_to_base", value=[*base_to_camera[0], *base_to_camera[1]])])[0].successful
    base = probe.pose_for(probe.send(query.rgb))
    expected = matrix_to_pose(pose_to_matrix(query.pose) @ np.linalg.inv(pose_to_matrix(base_to_camera)))
    position_error, rotation_error = errors(base, expected)
    assert position_error < MAX_POSITION_ERROR_M and rotation_error < MAX_ROTATION_ERROR_DEG
    wait_for(lambda: probe.latest_diagnostics().get("pose_frame") == "base_link", 10, "pose_frame base_link")

    # Gates are live; bad values are refused with a reason and change nothing.
    assert node.set_parameters([Parameter("pose.min_inliers", value=100000)])[0].successful
    cloud = probe.send(query.rgb)
    assert cloud.width >= 20 and probe.no_pose_for(cloud) and "100000" in node.pose_status["pose_result"]
    for name, value in (("pose.min_depth", -1.0), ("pose.max_depth", 0.05), ("pose.min_inlier_ratio", 1.5),
                        ("pose.reprojection_threshold", 0.0), ("pose.min_inliers", 2),
                        ("query_intrinsics", [500.0, 500.0, 1.0]), ("query_intrinsics", [0.0, 500.0, 1.0, 1.0]),
                        ("camera_to_base", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]), ("sync_tolerance", -1.0)):
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful and result.reason, (name, value)
    assert node.get_parameter("pose.min_inliers").value == 100000
    assert node.set_parameters([Parameter("pose.min_inliers", value=20)])[0].successful
    assert node.set_parameters([Parameter("query_intrinsics", Parameter.Type.DOUBLE_ARRAY, [])])[0].successful
    assert node.set_parameters([Parameter("camera_to_base", Parameter.Type.DOUBLE_ARRAY, [])])[0].successful
    cloud = probe.send(query.rgb)
    assert probe.no_pose_for(cloud) and node.pose_status["pose_result"].startswith("no query intrinsics")


def depth_msg(view, stamp, encoding="16UC1") -> Image:
    if encoding == "16UC1":
        pixels = np.nan_to_num(np.rint(view.depth * 1000), nan=0).astype("<u2")
    else:
        pixels = view.depth.astype("<f4")
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, step=pixels[0].nbytes,
                data=_bytes(pixels))
    msg.header.stamp, msg.header.frame_id = stamp, "camera_optical"
    return msg


def pose_msg(pose, stamp, frame="map") -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp, frame
    (msg.pose.position.x, msg.pose.position.y, msg.pose.position.z) = pose[0]
    (msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z, msg.pose.orientation.w) = pose[1]
    return msg


def test_add_keyframe_stores_depth_intrinsics_and_pose_then_relocalizes(ros, tmp_path, scene):
    keyframes, queries = scene
    view = keyframes[0]
    node, probe, spinner = start_node(tmp_path / "kf", sync_tolerance=0.05)
    try:
        for publisher in (probe.pub_info, probe.pub_depth, probe.pub_keyframe_pose):
            wait_for(publisher.get_subscription_count, 20, f"the node's {publisher.topic_name} subscription")
        # Image at stamp t: depth 10 ms later, pose 20 ms earlier (within sync_tolerance), plus a
        # pose in another frame that must be ignored and a depth frame too far away.
        stamp = probe.next_stamp()
        t = rclpy.time.Time.from_msg(stamp)
        probe.pub_info.publish(camera_info_msg(view))
        probe.pub_depth.publish(depth_msg(view, (t - Duration(seconds=0.5)).to_msg()))
        probe.pub_depth.publish(depth_msg(view, (t + Duration(seconds=0.01)).to_msg()))
        probe.pub_keyframe_pose.publish(pose_msg(((9.0, 9.0, 9.0), (0.0, 0.0, 0.0, 1.0)), stamp, frame="odom"))
        probe.pub_keyframe_pose.publish(pose_msg(view.pose, (t - Duration(seconds=0.02)).to_msg()))
        wait_for(lambda: len(node._depth_frames) == 2 and len(node._keyframe_poses) == 1
                 and node._camera_info is not None, 10, "depth, pose and camera_info at the node")
        assert "keyframe_pose in frame 'odom'" in node.last_error
        cloud = probe.send(view.rgb)
        assert cloud.header.stamp == stamp and cloud.width == 0  # the store is empty

        response = probe.call(probe.add_client)
        assert response.success, response.message
        assert "stored: intrinsics (camera_info), depth (depth/" in response.message
        assert "pose (keyframe_pose)" in response.message and "missing" not in response.message
        entry = KeyframeStore(tmp_path / "kf").entries()[0]
        assert entry["depth"].startswith("depth/") and entry["depth"].endswith(".png")  # 16UC1 stays mm
        fx, fy, cx, cy = view.camera.to_ros()
        assert entry["intrinsics"] == {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
        reloaded = KeyframeStore(tmp_path / "kf").load()[0]
        assert np.allclose(np.concatenate(reloaded.pose), np.concatenate(view.pose), atol=1e-9)
        assert np.nanmax(np.abs(reloaded.depth - view.depth)) <= 0.0005 + 1e-5  # 16UC1: rounded to mm
        assert np.array_equal(np.isnan(reloaded.depth), np.isnan(view.depth))
        assert probe.call(probe.reload_client).success

        # The new keyframe relocalizes a query from a nearby viewpoint, in metres.
        query = queries[0]
        probe.pub_info.publish(camera_info_msg(query))
        pose = probe.pose_for(probe.send(query.rgb))
        position_error, rotation_error = errors(pose, query.pose)
        assert position_error < MAX_POSITION_ERROR_M and rotation_error < MAX_ROTATION_ERROR_DEG

        # Without a depth frame or pose near the next image, the keyframe is stored with what there
        # is, and the response says what is missing and why.
        probe.send(queries[1].rgb)
        response = probe.call(probe.add_client)
        assert response.success and "stored: intrinsics (camera_info)" in response.message
        assert "missing: depth (no depth frame within 0.05 s of the image (nearest" in response.message
        assert "pose (no keyframe_pose within 0.05 s" in response.message
        second = KeyframeStore(tmp_path / "kf").load()[1]
        assert second.depth is None and second.pose is None and second.intrinsics["fx"] == fx
    finally:
        spinner.shut_down()


def test_add_keyframe_with_float_depth_and_pose_with_covariance(ros, tmp_path, scene):
    view = scene[0][1]
    node, probe, spinner = start_node(tmp_path / "kf", keyframe_pose_type="pose_with_covariance_stamped",
                                      query_intrinsics=list(view.camera.to_ros()))
    try:
        pub_pose = probe.pub_keyframe_pose
        for publisher in (probe.pub_depth, pub_pose):
            wait_for(publisher.get_subscription_count, 20, f"the node's {publisher.topic_name} subscription")
        stamp = probe.next_stamp()
        with_covariance = PoseWithCovarianceStamped()
        with_covariance.header = pose_msg(view.pose, stamp).header
        with_covariance.pose.pose = pose_msg(view.pose, stamp).pose
        pub_pose.publish(with_covariance)
        probe.pub_depth.publish(depth_msg(view, stamp, encoding="32FC1"))
        wait_for(lambda: len(node._depth_frames) and len(node._keyframe_poses), 10, "depth and pose at the node")
        probe.send(view.rgb)
        response = probe.call(probe.add_client)
        assert response.success and "stored: intrinsics (query_intrinsics), depth (depth/" in response.message
        reloaded = KeyframeStore(tmp_path / "kf").load()[0]
        assert reloaded.depth_file.endswith(".tiff")  # 32FC1 is kept as float metres, bit for bit
        np.testing.assert_array_equal(reloaded.depth, view.depth)
        assert np.allclose(np.concatenate(reloaded.pose), np.concatenate(view.pose))
        assert reloaded.intrinsics == dict(zip(("fx", "fy", "cx", "cy"), view.camera.to_ros()))

        # A depth frame of another size is not registered to the image: not stored, and said so.
        stamp = probe.next_stamp()
        small = depth_msg(view, stamp, encoding="32FC1")
        small.height, small.data = small.height // 2, small.data[: len(small.data) // 2]
        probe.pub_depth.publish(small)
        wait_for(lambda: any(m.height == small.height for _, m in node._depth_frames._items), 10, "the small depth")
        probe.send(view.rgb)
        response = probe.call(probe.add_client)
        assert response.success and "missing: depth (the depth frame is 320x120 but the image is 320x240" in response.message
        assert KeyframeStore(tmp_path / "kf").load()[1].depth is None
    finally:
        spinner.shut_down()
