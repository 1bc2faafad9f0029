"""match_node in a nav2 robot, over real DDS: lifecycle transitions through the lifecycle
services, ~/relocalize, initialpose (when, in which frame, what AMCL accepts), the
estimate's prior, live array parameters as `ros2 param set` sends them, a `ros2 param dump`
round trip, rectified camera_info and a stale camera.

The synthetic scene (posed depth keyframes, queries with ground truth) and the classical
matcher make real matches; a fake AMCL is a publisher of /amcl_pose.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, ListParameters, SetParameters
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from rosutil import RELIABLE, Spinner, stop_process, wait_for
from roma_ros.demo.photo_pairs import make_pair
from roma_ros.localize.pose import matrix_to_pose, pose_to_matrix
from roma_ros.localize.prior import yaw
from roma_ros.ros.conversions import rgb_to_image_msg
from roma_ros.store import KeyframeStore
from test_node_pose import (
    MAX_POSITION_ERROR_M, MAX_ROTATION_ERROR_DEG, SETTINGS, PoseProbe, camera_info_msg, errors, posed_store,
)

# The optical frame of a forward-looking camera 0.2 m ahead of and 0.5 m above base_link.
BASE_TO_CAMERA = ((0.2, 0.0, 0.5), (-0.5, 0.5, -0.5, 0.5))
CAMERA_TO_BASE = [*BASE_TO_CAMERA[0], *BASE_TO_CAMERA[1]]
NAV2_COVARIANCE_MAX = 1e9  # nav2 (Lyrical) rejects an initial pose with any element < 0 or > 1e9


def base_pose(camera_pose):
    """base_link in the map from the optical frame's pose: T_map_base = T_map_cam inv(T_base_cam)."""
    return matrix_to_pose(pose_to_matrix(camera_pose) @ np.linalg.inv(pose_to_matrix(BASE_TO_CAMERA)))


def amcl_accepts(msg: PoseWithCovarianceStamped, global_frame: str = "map") -> None:
    """What AMCL's handleInitialPose checks before it re-initialises its filter (nav2 amcl_node.cpp),
    plus Lyrical's covariance bounds: the frame is the global frame, the quaternion is unit length,
    the covariance is finite and every element within [0, 1e9]."""
    assert msg.header.frame_id == global_frame, msg.header.frame_id
    o = msg.pose.pose.orientation
    assert abs(math.sqrt(o.x ** 2 + o.y ** 2 + o.z ** 2 + o.w ** 2) - 1.0) < 1e-6
    p = msg.pose.pose.position
    assert all(math.isfinite(v) for v in (p.x, p.y, p.z))
    covariance = np.asarray(msg.pose.covariance, float).reshape(6, 6)
    assert np.isfinite(covariance).all()
    assert covariance.min() >= 0.0 and covariance.max() <= NAV2_COVARIANCE_MAX
    assert np.count_nonzero(covariance - np.diag(np.diag(covariance))) == 0  # diagonal


def pose_msg_at(pose, frame="map") -> PoseWithCovarianceStamped:
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = frame
    (msg.pose.pose.position.x, msg.pose.pose.position.y, msg.pose.pose.position.z) = pose[0]
    o = msg.pose.pose.orientation
    (o.x, o.y, o.z, o.w) = pose[1]
    msg.pose.covariance = [0.25 if i in (0, 7) else 0.07 if i == 35 else 0.0 for i in range(36)]
    return msg


class Nav2Probe(PoseProbe):
    """PoseProbe plus a fake AMCL (amcl_pose out), the lifecycle services, ~/relocalize and a camera
    that streams one image at 10 Hz (as a driver would) while ``streaming`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.pub_amcl = self.create_publisher(PoseWithCovarianceStamped, "/amcl_pose", RELIABLE)
        self.change_state = self.create_client(ChangeState, "/roma_matcher/change_state")
        self.get_state = self.create_client(GetState, "/roma_matcher/get_state")
        self.relocalize_client = self.create_client(Trigger, "/roma_matcher/relocalize")
        self.streaming: np.ndarray | None = None
        self.create_timer(0.1, self._stream)

    def _stream(self) -> None:
        if self.streaming is not None:
            msg = rgb_to_image_msg(self.streaming)
            msg.header.stamp, msg.header.frame_id = self.next_header_stamp(), "camera"
            self.pub_image.publish(msg)

    def lifecycle(self) -> tuple[int, str]:
        wait_for(self.get_state.service_is_ready, 20, "get_state")
        future = self.get_state.call_async(GetState.Request())
        state = wait_for(lambda: future.result() if future.done() else None, 30, "get_state").current_state
        return state.id, state.label

    def transition(self, transition_id: int) -> bool:
        wait_for(self.change_state.service_is_ready, 20, "change_state")
        future = self.change_state.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
        return wait_for(lambda: future if future.done() else None, 60, "change_state").result().success

    def relocalize(self, timeout: float = 60.0) -> Trigger.Response:
        return self.call(self.relocalize_client, timeout)

    def publish_estimate(self, pose) -> None:
        wait_for(self.pub_amcl.get_subscription_count, 20, "the node's amcl_pose subscription")
        self.pub_amcl.publish(pose_msg_at(pose))


@pytest.fixture(scope="module")
def scene():
    from roma_ros.demo.synthetic_scene import relocalization_set

    return relocalization_set(seed=0, n_queries=5)


def start(folder, wait=True, **overrides):
    from roma_ros.ros.node import MatchNode

    values = {"model": "classical", "keyframes_dir": str(folder), "image_qos": "reliable",
              "diagnostics_period": 0.2, **SETTINGS, **overrides}
    node = MatchNode(parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    probe = Nav2Probe()
    spinner = Spinner(node, probe)
    if wait:
        wait_for(lambda: node.state in ("ready", "waiting for keyframes"), 60, "the node to be active")
    return node, probe, spinner


@pytest.fixture
def store(tmp_path, scene):
    posed_store(tmp_path / "kf", scene[0])
    return tmp_path / "kf"


def test_lifecycle_transitions_through_the_lifecycle_services(ros, store, scene):
    query = scene[1][0]
    node, probe, spinner = start(store, wait=False, autostart=False, mode="continuous", max_rate_hz=0.0)
    try:
        assert probe.lifecycle() == (State.PRIMARY_STATE_UNCONFIGURED, "unconfigured")
        assert node.relocalizer is None and probe.count_subscribers("/image") == 0
        answer = probe.relocalize()
        assert not answer.success and "not active (lifecycle state unconfigured)" in answer.message

        assert probe.transition(Transition.TRANSITION_CONFIGURE)
        assert probe.lifecycle() == (State.PRIMARY_STATE_INACTIVE, "inactive")
        assert node.relocalizer is not None and len(node.relocalizer.keyframes) == len(scene[0])
        assert probe.count_subscribers("/image") == 0  # inactive: no input, no work
        wait_for(lambda: probe.latest_diagnostics().get("lifecycle") == "inactive", 10, "diagnostics: inactive")

        assert probe.transition(Transition.TRANSITION_ACTIVATE)
        assert probe.lifecycle()[1] == "active" and node.state == "ready"
        assert probe.send(query.rgb).width >= 20  # active: frames are matched
        wait_for(lambda: node.frames.counts()["in_flight"] == 0, 10, "the frame to be counted")
        processed = node.frames.counts()["processed"]
        assert processed == 1

        assert probe.transition(Transition.TRANSITION_DEACTIVATE)
        assert probe.lifecycle()[1] == "inactive" and node.relocalizer is not None  # not unloaded
        wait_for(lambda: probe.count_subscribers("/image") == 0, 10, "the image subscription to go")
        for _ in range(5):
            probe.pub_image.publish(rgb_to_image_msg(query.rgb))
        time.sleep(1.0)
        assert node.frames.counts()["processed"] == processed  # no work while inactive
        assert "not active (lifecycle state inactive)" in probe.relocalize().message

        assert probe.transition(Transition.TRANSITION_ACTIVATE)  # again, without reloading
        assert probe.send(query.rgb).width >= 20
        waiting = probe.relocalize_client.call_async(Trigger.Request())  # no frames come: it waits ...
        wait_for(lambda: node._request is not None, 10, "the call at the node")
        assert probe.transition(Transition.TRANSITION_DEACTIVATE)  # ... until deactivate answers it
        answer = wait_for(lambda: waiting.result() if waiting.done() else None, 10, "the cancelled call")
        assert not answer.success and answer.message == "cancelled: the node was deactivated"
        assert probe.transition(Transition.TRANSITION_CLEANUP)
        assert probe.lifecycle()[1] == "unconfigured" and node.relocalizer is None  # the model is freed
        assert probe.count_publishers("/roma_matcher/pose") == 0
        assert probe.transition(Transition.TRANSITION_CONFIGURE)  # loads again
        assert probe.transition(Transition.TRANSITION_ACTIVATE)
        assert probe.send(query.rgb).width >= 20
        assert probe.transition(Transition.TRANSITION_DEACTIVATE) and probe.transition(Transition.TRANSITION_CLEANUP)
        assert probe.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert probe.lifecycle()[1] == "finalized"
        assert not probe.transition(Transition.TRANSITION_CONFIGURE)  # finalized is final
    finally:
        spinner.shut_down()


def test_a_model_that_does_not_load_fails_configure(ros, store):
    node, probe, spinner = start(store, wait=False, autostart=False, model="roma_outdoor",
                                 weights="/nonexistent/roma.pth", allow_download=False)
    try:
        assert not probe.transition(Transition.TRANSITION_CONFIGURE)
        assert probe.lifecycle()[1] == "unconfigured" and node.state.startswith("error")
        diagnostics = wait_for(lambda: (d := probe.latest_diagnostics()).get("_level") == 2 and d, 10, "ERROR")
        assert "/nonexistent/roma.pth" in diagnostics["last_error"]
    finally:
        spinner.shut_down()


def test_relocalize_on_demand_answers_with_a_pose_and_sends_one_initialpose(ros, store, scene):
    query = scene[1][0]
    node, probe, spinner = start(store, camera_to_base=CAMERA_TO_BASE, max_rate_hz=5.0)
    try:
        assert node.values["mode"] == "on_demand"  # the default
        wait_for(lambda: probe.pub_info.get_subscription_count(), 20, "the camera_info subscription")
        probe.pub_info.publish(camera_info_msg(query))
        probe.streaming = query.rgb
        wait_for(lambda: node.frames.counts()["skipped"] >= 5, 20, "frames to arrive")
        assert node.frames.counts()["processed"] == 0 and not probe.poses  # nothing runs until asked

        answer = probe.relocalize()
        assert answer.success, answer.message
        expected = base_pose(query.pose)
        assert f"keyframe '{scene[0][query.keyframe].name}'" in answer.message and "inliers" in answer.message
        said = dict(re.findall(r"\b([xyz])=(-?[0-9.]+)", answer.message))
        assert np.linalg.norm([float(said[k]) for k in "xyz"] - np.asarray(expected[0])) < MAX_POSITION_ERROR_M
        assert "initialpose sent" in answer.message
        pose = wait_for(lambda: probe.poses[-1] if probe.poses else None, 10, "~/pose")
        initial = wait_for(lambda: probe.initialposes[-1] if probe.initialposes else None, 10, "initialpose")
        amcl_accepts(initial)
        assert initial.header.stamp == pose.header.stamp and initial.pose.pose == pose.pose.pose
        position_error, rotation_error = errors(initial, expected)  # base_link, not the optical frame
        assert position_error < MAX_POSITION_ERROR_M and rotation_error < MAX_ROTATION_ERROR_DEG
        assert abs(math.degrees(yaw((initial.pose.pose.orientation.x, initial.pose.pose.orientation.y,
                                     initial.pose.pose.orientation.z, initial.pose.pose.orientation.w))
                                - yaw(expected[1]))) < 1.0
        covariance = np.asarray(initial.pose.covariance).reshape(6, 6)
        assert covariance[0, 0] >= 0.1 ** 2 and covariance[5, 5] >= math.radians(3.0) ** 2  # floored

        # Answered: the node is idle again, frames keep arriving but nothing is matched or sent.
        wait_for(lambda: node.frames.counts()["in_flight"] == 0, 10, "the answering frame to be counted")
        processed = node.frames.counts()["processed"]
        skipped = node.frames.counts()["skipped"]
        wait_for(lambda: node.frames.counts()["skipped"] >= skipped + 5, 20, "more frames")
        assert node.frames.counts()["processed"] == processed and len(probe.initialposes) == 1

        # A place that is not in the map: no pose within the timeout, and why.
        assert node.set_parameters([Parameter("relocalize_timeout", value=2.0)])[0].successful
        probe.streaming = make_pair("grass", seed=5, size=(240, 320)).query
        future = probe.relocalize_client.call_async(Trigger.Request())
        # The call waits without blocking the node: diagnostics go on and say so meanwhile.
        wait_for(lambda: probe.latest_diagnostics().get("mode") == "on_demand (relocalizing)", 10,
                 "diagnostics during the call")
        answer = wait_for(lambda: future.result() if future.done() else None, 30, "the answer")
        assert not answer.success and answer.message.startswith("no pose within 2 s")
        assert "last: no match" in answer.message and len(probe.initialposes) == 1

        # ~/add_keyframe stores the newest frame although on_demand mode matched none of them.
        wait_for(lambda: node.frames.counts()["in_flight"] == 0, 10, "the last matched frame to be counted")
        processed = node.frames.counts()["processed"]
        response = probe.call(probe.add_client)
        assert response.success and "stored: intrinsics (camera_info)" in response.message, response.message
        stored = KeyframeStore(store).load()[-1]
        assert stored.image.shape == probe.streaming.shape and node.frames.counts()["processed"] == processed
    finally:
        probe.streaming = None
        spinner.shut_down()


def test_initialpose_refused_without_a_base_transform(ros, store, scene):
    query = scene[1][0]
    node, probe, spinner = start(store, query_intrinsics=list(query.camera.to_ros()))
    try:
        probe.streaming = query.rgb
        answer = probe.relocalize()
        assert answer.success and "initialpose refused: camera_to_base is empty" in answer.message
        assert probe.poses and not probe.initialposes  # ~/pose (the camera's) yes, AMCL nothing
        diagnostics = wait_for(lambda: (d := probe.latest_diagnostics()).get("initialpose", "").startswith("refused")
                               and d, 10, "the refusal in diagnostics")
        assert diagnostics["_level"] == 1 and "initialpose refused" in diagnostics["_message"]
        assert "camera_to_base" in node.last_error
    finally:
        probe.streaming = None
        spinner.shut_down()


def test_continuous_mode_sends_initialpose_once_after_n_disagreeing_frames(ros, store, scene):
    query = scene[1][0]
    truth = base_pose(query.pose)
    node, probe, spinner = start(store, mode="continuous", max_rate_hz=0.0, camera_to_base=CAMERA_TO_BASE,
                                 query_intrinsics=list(query.camera.to_ros()), **{"disagree.frames": 3})
    try:
        probe.publish_estimate(truth)  # AMCL agrees with us
        wait_for(lambda: node._topic_estimate is not None, 10, "the estimate at the node")
        for _ in range(4):
            probe.pose_for(probe.send(query.rgb))
        assert not probe.initialposes  # agreeing frames: never an initialpose, although every frame is matched

        (x, y, _), q = truth
        probe.publish_estimate(((x + 3.0, y - 2.0, 0.0), q))  # AMCL went wrong by 3.6 m
        wait_for(lambda: node._topic_estimate[0][0] == pytest.approx(x + 3.0), 10, "the wrong estimate")
        clouds = [probe.send(query.rgb) for _ in range(2)]
        assert all(probe.no_pose_for(c) for c in clouds) and not probe.initialposes  # held: maybe a look-alike
        assert node.pose_status["pose_result"].startswith("held: 2 of 3 consecutive frames 3.6")
        third = probe.send(query.rgb)
        probe.pose_for(third)
        initial = wait_for(lambda: probe.initialposes[-1] if probe.initialposes else None, 10, "initialpose")
        amcl_accepts(initial)
        assert initial.header.stamp == third.header.stamp and errors(initial, truth)[0] < MAX_POSITION_ERROR_M
        for _ in range(4):  # still disagreeing, but AMCL has not answered yet: not again
            probe.pose_for(probe.send(query.rgb))
        assert len(probe.initialposes) == 1
        assert probe.latest_diagnostics()["initialpose"].startswith("sent 1 (last: 3 frames 3.6")

        probe.publish_estimate(truth)  # AMCL re-initialised where we said
        wait_for(lambda: node._topic_estimate[0][0] == pytest.approx(x), 10, "the corrected estimate")
        for _ in range(4):
            probe.pose_for(probe.send(query.rgb))
        assert len(probe.initialposes) == 1 and len(probe.poses) == 4 + 1 + 4 + 4
    finally:
        spinner.shut_down()


def test_continuous_mode_does_no_work_without_subscribers(ros, store, scene):
    from roma_ros.ros.node import MatchNode

    query = scene[1][0]
    node = MatchNode(parameter_overrides=[Parameter(k, value=v) for k, v in {
        "model": "classical", "keyframes_dir": str(store), "mode": "continuous", "image_qos": "reliable",
        "max_rate_hz": 0.0, **SETTINGS}.items()])
    from rclpy.node import Node

    camera = Node("roma_test_camera")  # publishes, subscribes to nothing
    publisher = camera.create_publisher(type(rgb_to_image_msg(query.rgb)), "/image", RELIABLE)
    spinner = Spinner(node, camera)
    try:
        wait_for(lambda: node.state == "ready" and publisher.get_subscription_count(), 60, "the node")
        for i in range(5):  # one at a time: the subscription keeps only the newest
            publisher.publish(rgb_to_image_msg(query.rgb))
            wait_for(lambda n=i + 1: node.frames.counts()["received"] == n, 10, f"frame {i + 1}")
        assert node.frames.counts()["skipped"] == 5 and node.frames.counts()["processed"] == 0
        probe = Nav2Probe()  # subscribes to ~/pose, ~/matches, ...: now frames are matched
        spinner.executor.add_node(probe)
        wait_for(lambda: node._has_listeners(), 20, "the probe's subscriptions at the node")
        assert probe.send(query.rgb).width >= 20
        probe.destroy_node()
    finally:
        spinner.shut_down()


def test_prior_excludes_a_look_alike_keyframe(ros, tmp_path, scene):
    keyframes, queries = scene
    query = next(q for q in queries if q.keyframe == 1)
    # A look-alike of keyframe 1 (same picture and depth) 20 m away, stored first so it wins a tie.
    (x, y, z), q = keyframes[1].pose
    twin = type(keyframes[1])(**{**keyframes[1].__dict__, "name": "look_alike", "pose": ((x + 20.0, y, z), q)})
    posed_store(tmp_path / "kf", [twin, *keyframes])
    node, probe, spinner = start(tmp_path / "kf", mode="continuous", max_rate_hz=0.0,
                                 query_intrinsics=list(query.camera.to_ros()), **{"disagree.frames": 1})
    try:
        probe.publish_estimate((tuple(query.pose[0][:2]) + (0.0,), (0.0, 0.0, 0.0, 1.0)))
        wait_for(lambda: node._topic_estimate is not None, 10, "the estimate")
        teleported = probe.pose_for(probe.send(query.rgb))
        assert errors(teleported, query.pose)[0] == pytest.approx(20.0, abs=0.1)  # no prior: the trap works

        assert node.set_parameters([Parameter("prior.radius", value=5.0)])[0].successful
        pose = probe.pose_for(probe.send(query.rgb))
        assert errors(pose, query.pose)[0] < MAX_POSITION_ERROR_M
        assert node.last_result.startswith(keyframes[1].name)
        wait_for(lambda: "keyframes within 5 m of amcl_pose" in probe.latest_diagnostics().get("prior", ""), 10,
                 "the prior in diagnostics")

        # No prior, but the guard: the look-alike's pose is 20 m from the estimate, so it is held.
        assert node.set_parameters([Parameter("prior.radius", value=0.0),
                                    Parameter("disagree.frames", value=3)])[0].successful
        assert probe.no_pose_for(probe.send(query.rgb))
        assert node.pose_status["pose_result"].startswith("held: 1 of 3")
    finally:
        spinner.shut_down()


def set_parameters_request(name: str, values) -> SetParameters.Request:
    """What `ros2 param set /roma_matcher NAME "[...]"` sends: a DOUBLE_ARRAY ParameterValue."""
    value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=values)
    return SetParameters.Request(parameters=[ParameterMsg(name=name, value=value)])


def test_live_array_parameters_set_through_the_set_parameters_service(ros, store, scene):
    query = scene[1][0]
    node, probe, spinner = start(store, mode="continuous", max_rate_hz=0.0)
    client = probe.create_client(SetParameters, "/roma_matcher/set_parameters")
    try:
        wait_for(client.service_is_ready, 20, "set_parameters")

        def set_remote(name, values):
            future = client.call_async(set_parameters_request(name, values))
            return wait_for(lambda: future.result() if future.done() else None, 20, "set_parameters").results[0]

        result = set_remote("query_intrinsics", list(query.camera.to_ros()))
        assert result.successful, result.reason
        assert node.values["query_intrinsics"] == pytest.approx(list(query.camera.to_ros()))
        assert type(node.values["query_intrinsics"]) is list
        assert set_remote("camera_to_base", CAMERA_TO_BASE).successful
        pose = probe.pose_for(probe.send(query.rgb))
        assert errors(pose, base_pose(query.pose))[0] < MAX_POSITION_ERROR_M  # both took effect
        bad = set_remote("query_intrinsics", [525.0, 525.0, 319.5])
        assert not bad.successful and "needs 4 values" in bad.reason
        assert set_remote("camera_to_base", []).successful and node.values["camera_to_base"] == []
    finally:
        spinner.shut_down()


def dump_parameters(probe, node_name: str = "/roma_matcher") -> dict:
    """`ros2 param dump NODE` over the parameter services: every parameter's value, NOT_SET as None
    (YAML null), dotted names nested, under the node's name, as ros2param writes it."""
    lister = probe.create_client(ListParameters, f"{node_name}/list_parameters")
    getter = probe.create_client(GetParameters, f"{node_name}/get_parameters")
    wait_for(lambda: lister.service_is_ready() and getter.service_is_ready(), 20, "the parameter services")
    future = lister.call_async(ListParameters.Request())
    names = sorted(wait_for(lambda: future.result() if future.done() else None, 20, "list").result.names)
    future = getter.call_async(GetParameters.Request(names=names))
    values = wait_for(lambda: future.result() if future.done() else None, 20, "get").values
    fields = {ParameterType.PARAMETER_BOOL: "bool_value", ParameterType.PARAMETER_INTEGER: "integer_value",
              ParameterType.PARAMETER_DOUBLE: "double_value", ParameterType.PARAMETER_STRING: "string_value",
              ParameterType.PARAMETER_BYTE_ARRAY: "byte_array_value",
              ParameterType.PARAMETER_BOOL_ARRAY: "bool_array_value",
              ParameterType.PARAMETER_INTEGER_ARRAY: "integer_array_value",
              ParameterType.PARAMETER_DOUBLE_ARRAY: "double_array_value",
              ParameterType.PARAMETER_STRING_ARRAY: "string_array_value"}
    tree: dict = {}
    for name, value in zip(names, values):
        raw = getattr(value, fields[value.type]) if value.type in fields else None
        if raw is not None and not isinstance(raw, (bool, int, float, str)):
            raw = [v for v in raw]
        *parents, leaf = name.split(".")
        branch = tree
        for part in parents:
            branch = branch.setdefault(part, {})
        branch[leaf] = raw
    return {node_name: {"ros__parameters": tree}}


def node_process(params_file, *extra):
    from pathlib import Path

    script = Path(sys.executable).with_name("match_node")
    return subprocess.Popen([str(script), "--ros-args", "--params-file", str(params_file), *extra],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_param_dump_loads_back(ros, tmp_path, store):
    from pathlib import Path

    config = Path(__file__).resolve().parent.parent / "config" / "match.yaml"
    first = node_process(config, "-p", "model:=classical", "-p", f"keyframes_dir:={store}")
    probe = Nav2Probe()
    spinner = Spinner(probe)
    try:
        wait_for(lambda: probe.latest_diagnostics().get("state") == "ready", 60, "the first node")
        dumped = dump_parameters(probe)
        assert stop_process(first) == 0
        section = dumped["/roma_matcher"]["ros__parameters"]
        assert section["query_intrinsics"] == [] and section["camera_to_base"] == []  # lists, even empty
        assert section["pose"]["min_inliers"] == 20 and section["model"] == "classical"
        dump_file = tmp_path / "dump.yaml"
        dump_file.write_text(yaml.safe_dump(dumped))
        # An older node dumped empty lists as null (NOT_SET): such a file must load too.
        old_dump = tmp_path / "old_dump.yaml"
        old_dump.write_text(yaml.safe_dump(dumped).replace("camera_to_base: []", "camera_to_base: null")
                            .replace("query_intrinsics: []", "query_intrinsics: null"))
        assert "query_intrinsics: null" in old_dump.read_text()

        for params_file in (dump_file, old_dump):
            probe.diagnostics.clear()
            second = node_process(params_file)
            try:
                diagnostics = wait_for(lambda: (d := probe.latest_diagnostics()).get("state") == "ready" and d, 60,
                                       f"the node started from {params_file.name}")
                assert diagnostics["model"] == "classical" and diagnostics["pose_frame"] == "camera optical frame"
                assert dump_parameters(probe) == dumped  # the same values, the empty lists still empty
            finally:
                assert stop_process(second) == 0, second.stdout.read()
    finally:
        if first.poll() is None:
            stop_process(first)
        spinner.shut_down()


def rectified_camera_info(view):
    """What a driver + image_proc publish next to image_rect: K and D of the raw lens (here a
    different focal length and strong barrel distortion), P of the rectified image (the truth)."""
    msg = camera_info_msg(view)
    fx, fy, cx, cy = view.camera.to_ros()
    msg.k = [fx * 0.9, 0.0, cx + 4.0, 0.0, fy * 0.9, cy - 3.0, 0.0, 0.0, 1.0]
    msg.d = [-0.3, 0.1, 0.0, 0.0, 0.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def test_rectified_camera_info_gives_the_same_pose_as_unrectified(ros, store, tmp_path, scene):
    query = scene[1][0]
    poses = {}
    for rectified in (False, True):
        node, probe, spinner = start(store, mode="continuous", max_rate_hz=0.0, camera_info_rectified=rectified)
        try:
            wait_for(lambda: probe.pub_info.get_subscription_count(), 20, "camera_info subscription")
            if not rectified:  # the plain pinhole camera_info of the image (no distortion)
                probe.pub_info.publish(camera_info_msg(query))
                wait_for(lambda: node._camera_info is not None, 10, "camera_info")
                poses["plain"] = probe.pose_for(probe.send(query.rgb))
            probe.pub_info.publish(rectified_camera_info(query))
            wait_for(lambda: node._camera_info is not None and node._camera_info[0].d[0] == -0.3, 10, "camera_info")
            poses[rectified] = probe.pose_for(probe.send(query.rgb))
            if rectified:  # ~/add_keyframe stores the same camera: P, no distortion
                assert probe.call(probe.add_client).success
                stored = KeyframeStore(store).load()[-1].intrinsics
                fx, fy, cx, cy = query.camera.to_ros()
                assert stored == {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
        finally:
            spinner.shut_down()
    p, o = poses["plain"].pose.pose.position, poses["plain"].pose.pose.orientation
    plain = ((p.x, p.y, p.z), (o.x, o.y, o.z, o.w))
    assert errors(poses[True], plain)[0] < 1e-6 and errors(poses[True], plain)[1] < 1e-4  # the same camera model
    assert errors(poses[True], query.pose)[0] < MAX_POSITION_ERROR_M
    assert errors(poses[False], query.pose)[0] > 3 * errors(poses[True], query.pose)[0]  # K + D on a rectified image


def test_stale_camera_warns_with_the_input_rate(ros, store, scene):
    node, probe, spinner = start(store, mode="continuous", max_rate_hz=0.0, stale_timeout=0.6)
    try:
        probe.send(scene[1][0].rgb)
        diagnostics = wait_for(lambda: (d := probe.latest_diagnostics()).get("_level") == 1
                               and "no image for" in d["_message"] and d, 10, "the stale WARN")
        assert "Hz" in diagnostics["_message"] and float(diagnostics["input_rate_hz"]) >= 0.0
        assert float(diagnostics["seconds_since_image"]) >= 0.6
        probe.streaming = scene[1][0].rgb  # the camera is back: OK again
        wait_for(lambda: (d := probe.latest_diagnostics()).get("_level") == 0 and float(d["input_rate_hz"]) > 0,
                 20, "OK with frames arriving")
        assert node.set_parameters([Parameter("stale_timeout", value=0.0)])[0].successful  # live; 0 = off
    finally:
        probe.streaming = None
        spinner.shut_down()


def test_namespaced_node_publishes_a_relative_initialpose(ros, store, scene):
    from roma_ros.ros.node import MatchNode

    node = MatchNode(namespace="robot1", parameter_overrides=[Parameter(k, value=v) for k, v in {
        "model": "classical", "keyframes_dir": str(store), **SETTINGS}.items()])
    spinner = Spinner(node)
    try:
        wait_for(lambda: node.state == "ready", 60, "the node")
        assert node.pub_initialpose.topic_name == "/robot1/initialpose"
        assert node.pub_pose.topic_name == "/robot1/roma_matcher/pose"
    finally:
        spinner.shut_down()


# A helper thread must not outlive its test.
def test_no_worker_threads_left():
    assert not [t for t in threading.enumerate() if t.name == "roma_worker" and t.is_alive()]
