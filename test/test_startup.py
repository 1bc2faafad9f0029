"""Start-up parameters: the rules of roma_ros.ros.params, and match_node started as its own process
the way `ros2 launch` starts it (params file, -p overrides, namespace, remaps, use_sim_time)."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path

import pytest
from rcl_interfaces.srv import GetParameters
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from rosgraph_msgs.msg import Clock

from rosutil import Probe, Spinner, stop_process, wait_for
from roma_ros.ros import params as P

REPO = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO / "config" / "match.yaml"
MATCH_NODE = Path(sys.executable).with_name("match_node")
SIM_START_S = 12345  # far from wall-clock time, so a stamp shows which clock made it


# ------------------------------------------------------------------ the rules, without ROS
def test_every_default_obeys_its_rules():
    for spec in P.PARAMS:
        for model in P.SPECS["model"].choices:
            assert spec.problem(spec.default_for(model)) is None, (spec.name, model)
    assert P.check_startup({s.name: s.default for s in P.PARAMS})["ransac.threshold"] == 0.2


def test_list_parameters_take_numbers_and_their_own_rules():
    """An empty list in a params file reaches the node as "not set" (rcl has no empty arrays)."""
    assert P.check_value("query_intrinsics", None) == []
    assert P.check_value("query_intrinsics", [525, 525.0, 319.5, 239.5]) == [525.0, 525.0, 319.5, 239.5]
    with pytest.raises(P.ParameterError, match=r"^query_intrinsics=\[1.0, 2.0, 3.0\] is not allowed: .*4 values"):
        P.check_value("query_intrinsics", [1, 2, 3])
    with pytest.raises(P.ParameterError, match="focal length fx=-5.0 must be a positive"):
        P.check_value("query_intrinsics", [-5, 525, 319.5, 239.5])
    with pytest.raises(P.ParameterError, match="quaternion .* has norm"):
        P.check_value("camera_to_base", [0, 0, 0, 0, 0, 0, 2])
    values = {spec.name: spec.default for spec in P.PARAMS}
    with pytest.raises(P.ParameterError, match="max_depth=1.0 must be greater than min_depth=2.0"):
        P.check_startup({**values, "pose.min_depth": 2.0, "pose.max_depth": 1.0})


def test_every_parameter_rejects_a_value_of_another_type():
    """Holds for parameters added later too: the type comes from the default."""
    wrong = {bool: "yes", int: 1.5, float: "fast", str: 3, list: ["fast"]}
    for spec in P.PARAMS:
        with pytest.raises(P.ParameterError, match=f"^{spec.name}=.* is not allowed: expected "):
            P.check_value(spec.name, wrong[spec.kind])


@pytest.mark.parametrize("name, value, allowed", [
    ("model", "nonexistent", "one of roma_outdoor, roma_indoor, tiny_roma_outdoor, classical"),
    ("image_qos", "relaible", "one of sensor_data, reliable"),
    ("image_transport", "compresed", "one of raw, compressed"),
    ("device", "tpu", "auto, cpu, cuda or cuda:N"),
    ("device", "cuda:", "auto, cpu, cuda or cuda:N"),
    ("diagnostics_period", -1.0, "a number from 0.01 to 60"),
    ("diagnostics_period", 0.0, "a number from 0.01 to 60"),
    ("diagnostics_period", 1e9, "a number from 0.01 to 60"),
    ("coarse_res", 100, "an integer from 14 to 1120, a multiple of 14"),
    ("coarse_res", True, "an integer"),
    ("upsample_res", 0.0, "a multiple of 8, or 0"),
    ("ransac.threshold", 0.0, "a number > 0"),
    ("ransac.threshold", float("nan"), "a number > 0"),
    ("ransac.confidence", 1.0, "a number > 0 and < 1"),
    ("min_overlap", 1.5, "a number from 0 to 1"),
    ("debug.max_lines", -2, "an integer >= -1"),
    ("frame_id", "", "a frame name"),
    ("frame_id", "/map", "no leading '/'"),
    ("symmetric", 1, "true or false"),
])
def test_bad_values_are_named_with_what_is_allowed(name, value, allowed):
    with pytest.raises(P.ParameterError) as info:
        P.check_value(name, value)
    message = str(info.value)
    assert message.startswith(f"{name}={value!r} is not allowed: expected ") and allowed in message
    assert "\n" not in message


def test_special_values_and_integers_for_floats_are_accepted():
    assert P.check_value("upsample_res", 0) == 0
    assert P.check_value("debug.max_lines", -1) == -1
    assert P.check_value("top_k", 0) == 0
    value = P.check_value("ransac.threshold", 2)  # `-p ransac.threshold:=2` arrives as an integer
    assert value == 2.0 and type(value) is float
    assert P.check_value("device", "cuda:1") == "cuda:1"


def test_rules_between_parameters_are_checked_at_start_up():
    values = {s.name: s.default for s in P.PARAMS} | {"coarse_res": 560, "upsample_res": 280}
    with pytest.raises(P.ParameterError, match=r"upsample_res=280 must be >= coarse_res=560"):
        P.check_startup(values)


def test_model_defaults():
    threshold, min_inliers = P.SPECS["ransac.threshold"], P.SPECS["min_inliers"]
    assert (threshold.default_for("classical"), min_inliers.default_for("classical")) == (1.0, 20)
    for model in ("roma_outdoor", "roma_indoor", "tiny_roma_outdoor"):
        assert (threshold.default_for(model), min_inliers.default_for(model)) == (0.2, 50)


# ------------------------------------------------------------------ match_node processes
def node_command(*ros_args: str) -> list[str]:
    return [str(MATCH_NODE), "--ros-args", "--params-file", str(PARAMS_FILE), *ros_args]


BAD_STARTS = {
    # name: (-p overrides, text the one FATAL line must hold)
    "unknown model": (["model:=nonexistent"], "model='nonexistent' is not allowed: expected one of roma_outdoor"),
    "image_qos typo": (["image_qos:=relaible"], "image_qos='relaible' is not allowed: expected one of sensor_data"),
    "image_transport typo": (["image_transport:=compresed"], "image_transport='compresed' is not allowed"),
    "device for classical": (["model:=classical", "device:=tpu"], "device='tpu' is not allowed: expected auto, cpu"),
    "negative period": (["diagnostics_period:=-1.0"], "diagnostics_period=-1.0 is not allowed: expected a number"),
    "zero period": (["diagnostics_period:=0.0"], "diagnostics_period=0.0 is not allowed"),
    # Not a parameter of the params file: rcl drops an override whose type differs from the file's.
    "wrong type": (["min_inliers:=many"], "min_inliers='many' is not allowed: expected an integer >= 0"),
    "not a multiple": (["coarse_res:=100"], "coarse_res=100 is not allowed: expected an integer from 14 to 1120"),
    "live rule at start-up": (["model:=classical", "ransac.threshold:=0.0"], "ransac.threshold=0.0 is not allowed"),
    "rule between two": (["upsample_res:=280"], "upsample_res=280 must be >= coarse_res=560"),
    "rclpy's own parameter": (["use_sim_time:=maybe"], "use_sim_time"),
}


@pytest.fixture(scope="module")
def bad_starts(tmp_path_factory):
    """Every bad start, four processes at a time (each is mostly imports, ~0.7 GB):
    name -> (exit code, output). A node that does not stop is killed after 180 s."""
    folder = tmp_path_factory.mktemp("kf")

    def start(name):
        args = [f"keyframes_dir:={folder}", "allow_download:=false", *BAD_STARTS[name][0]]
        try:
            proc = subprocess.run(node_command(*[a for o in args for a in ("-p", o)]), env=dict(os.environ),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
        except subprocess.TimeoutExpired as exc:
            return None, exc.output or ""
        return proc.returncode, proc.stdout

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(BAD_STARTS, pool.map(start, BAD_STARTS)))


@pytest.mark.parametrize("case", list(BAD_STARTS))
def test_bad_start_up_value_stops_the_node(bad_starts, case):
    code, output = bad_starts[case]
    expected = BAD_STARTS[case][1]
    assert code == 2, f"exit code {code}, output:\n{output}"
    fatal = [line for line in output.splitlines() if "[FATAL]" in line]
    assert len(fatal) == 1 and expected in fatal[0], output
    assert "Traceback" not in output, output


def get_parameters(probe, node: str, names: list[str]) -> dict:
    client = probe.create_client(GetParameters, f"{node}/get_parameters")
    try:
        wait_for(client.service_is_ready, 30, f"{node}/get_parameters")
        future = client.call_async(GetParameters.Request(names=names))
        response = wait_for(lambda: future.result() if future.done() else None, 30, "get_parameters")
        return {n: parameter_value_to_python(v) for n, v in zip(names, response.values)}
    finally:
        probe.destroy_client(client)


@pytest.fixture(scope="module")
def launched(ros, tmp_path_factory):
    """match_node as `ros2 launch roma_ros match.launch.py namespace:=robot1 model:=classical
    use_sim_time:=true` starts it: the params file, overrides, a namespace and the image remap."""
    folder = tmp_path_factory.mktemp("kf")
    proc = subprocess.Popen(
        node_command("-p", "model:=classical", "-p", f"keyframes_dir:={folder}", "-p", "use_sim_time:=true",
                     "-p", "diagnostics_period:=0.2", "-r", "__node:=roma_matcher", "-r", "__ns:=/robot1",
                     "-r", "image:=camera/image_raw", "-r", "image/compressed:=camera/image_raw/compressed"),
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    probe = Probe(target="/robot1/roma_matcher", image_topic="/robot1/camera/image_raw")
    clock = probe.create_publisher(Clock, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                                                 durability=DurabilityPolicy.VOLATILE))
    ticks = count()  # simulated time runs at wall speed from SIM_START_S
    probe.create_timer(0.05, lambda: clock.publish(
        Clock(clock=Time(nanoseconds=SIM_START_S * 10**9 + next(ticks) * 50_000_000).to_msg())))
    spinner = Spinner(probe)
    yield proc, probe
    spinner.shut_down()
    stop_process(proc)


def test_namespace_puts_the_input_under_it(launched):
    proc, probe = launched

    def subscribers(topic):
        return [(i.node_namespace, i.node_name) for i in probe.get_subscriptions_info_by_topic(topic)]

    wait_for(lambda: ("/robot1", "roma_matcher") in subscribers("/robot1/camera/image_raw"), 30,
             "roma_matcher in /robot1 subscribing /robot1/camera/image_raw")
    assert ("/robot1", "roma_matcher") not in subscribers("/camera/image_raw")
    assert ("/robot1", "roma_matcher") not in subscribers("/image")
    published = dict(probe.get_publisher_names_and_types_by_node("roma_matcher", "/robot1"))
    assert "/robot1/roma_matcher/matches" in published and "/diagnostics" in published
    assert proc.poll() is None


def test_classical_by_model_name_gets_its_thresholds(launched):
    proc, probe = launched
    values = get_parameters(probe, "/robot1/roma_matcher", ["model", "ransac.threshold", "min_inliers"])
    assert values == {"model": "classical", "ransac.threshold": 1.0, "min_inliers": 20}


def test_stamps_follow_sim_time(launched):
    proc, probe = launched
    diag = wait_for(lambda: next((d for d in reversed(probe.diagnostics)
                                  if any("/robot1/roma_matcher" in s.name for s in d.status)
                                  and d.header.stamp.sec >= SIM_START_S), None), 30,
                    "diagnostics stamped with /clock's time")
    assert diag.header.stamp.sec < SIM_START_S + 600, "stamped with the wall clock, not /clock"
    assert probe.latest_diagnostics()["state"] == "waiting for keyframes"


def test_user_values_beat_model_defaults(ros, tmp_path):
    from roma_ros.ros.node import MatchNode

    overrides = {"model": "classical", "keyframes_dir": str(tmp_path), "min_inliers": 35}
    node = MatchNode(parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    try:
        assert node.values["min_inliers"] == 35 and node.values["ransac.threshold"] == 1.0
        # `ros2 param describe` states each rule.
        assert node.describe_parameter("coarse_res").additional_constraints == P.SPECS["coarse_res"].allowed()
    finally:
        node.destroy_node()
