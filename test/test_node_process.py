"""The installed match_node as its own process, configured by config/match.yaml, reached
only over DDS; plus the agreement of the parameter file with the node's declarations."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rclpy.parameter import Parameter

from rosutil import Probe, Spinner, stop_process, wait_for
from roma_ros.ros.conversions import pointcloud2_to_matches
from roma_ros.ros.params import PARAMS
from test_node import PLACES, start, write_keyframes
from roma_ros.demo.photo_pairs import make_pair

REPO = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO / "config" / "match.yaml"


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def yaml_parameters() -> dict:
    data = yaml.safe_load(PARAMS_FILE.read_text())
    (section,) = data.values()
    return flatten(section["ros__parameters"])


def test_params_file_and_node_declare_the_same_parameters(ros, tmp_path):
    from_file = yaml_parameters()
    # Parameters with per-model defaults stay out of the file, or every model would get one value.
    by_model = {p.name for p in PARAMS if p.model_defaults}
    assert by_model == {"ransac.threshold", "min_inliers"}
    assert set(from_file) == {p.name for p in PARAMS} - by_model
    for spec in PARAMS:
        if spec.name in by_model:
            continue
        assert from_file[spec.name] == spec.default, spec.name
        assert type(from_file[spec.name]) is type(spec.default), spec.name
    node, probe, spinner = start(ros, tmp_path)
    try:
        declared = set(node.list_parameters([], 10).names) - {"use_sim_time", "start_type_description_service"}
        assert declared == set(from_file) | by_model
        for name in declared:
            assert node.describe_parameter(name).description, f"{name} has no description"
    finally:
        spinner.shut_down()


@pytest.fixture(scope="module")
def node_process(ros, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kf")
    pairs = {name: make_pair(name, seed=11 + i) for i, name in enumerate(PLACES)}
    write_keyframes(folder, pairs)
    script = Path(sys.executable).with_name("match_node")
    proc = subprocess.Popen(
        [str(script), "--ros-args", "--params-file", str(PARAMS_FILE), "-p", "model:=classical",
         "-p", f"keyframes_dir:={folder}", "-p", "image_qos:=reliable", "-p", "ransac.threshold:=1.0",
         "-p", "min_inliers:=30", "-p", "mode:=continuous", "-p", "max_rate_hz:=0.0",
         "-r", "image:=/camera/image_raw"],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    probe = Probe(image_topic="/camera/image_raw")
    spinner = Spinner(probe)
    yield proc, probe, pairs, folder
    spinner.shut_down()
    stop_process(proc)


def test_cross_process_topics_and_services(node_process):
    proc, probe, pairs, folder = node_process
    wait_for(lambda: probe.latest_diagnostics().get("state") == "ready", 60, "the node process to be ready")
    for index, name in enumerate(PLACES):
        cloud = probe.send(pairs[name].query)
        assert cloud.width >= 30
        assert set(pointcloud2_to_matches(cloud)["keyframe_index"].tolist()) == {index}
    poses = wait_for(lambda: probe.keyframes[-1] if probe.keyframes else None, 10, "latched keyframe poses")
    assert len(poses.poses) == 3
    rocket = make_pair("rocket", seed=4).query
    assert probe.send(rocket).width == 0
    assert probe.call(probe.add_client).success
    assert len(list(folder.glob("kf_*.png"))) == 1
    assert set(pointcloud2_to_matches(probe.send(rocket))["keyframe_index"].tolist()) == {3}
    assert proc.poll() is None, "the node process died"


def test_node_process_stops_cleanly_on_sigint(node_process):
    proc = node_process[0]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    output = proc.stdout.read()
    assert "Traceback" not in output, output


def test_tiny_roma_through_the_node(ros, tmp_path):
    """Real romatch modules (random weights) behind the node. A random Tiny RoMa maps every
    pixel to one spot, which the verifier must call degenerate: an explicit "no match"."""
    pairs = {name: make_pair(name, seed=11 + i, size=(120, 160)) for i, name in enumerate(PLACES)}
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf", model="tiny_roma_outdoor", random_weights=True,
                                 device="cpu", coarse_res=168, num_samples=300, min_inliers=0)
    try:
        assert node.state == "ready", node.last_error
        wait_for(lambda: node.pub_debug.get_subscription_count() > 0, 10, "debug subscription")
        cloud = probe.send(pairs["coffee"].query, timeout=120)
        assert cloud.width == 0
        wait_for(lambda: probe.latest_diagnostics().get("processed") == "1", 10, "diagnostics")
        assert "degenerate" in probe.latest_diagnostics()["last_result"]
        debug = wait_for(lambda: probe.debug[-1] if probe.debug else None, 10, "debug image")
        assert debug.width == 320  # query beside the best keyframe, original sizes
    finally:
        spinner.shut_down()


def test_missing_weights_keep_the_node_alive_with_an_error(ros, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    node, probe, spinner = start(ros, tmp_path, model="roma_outdoor", allow_download=False, device="cpu")
    try:
        assert node.state.startswith("error")
        diag = wait_for(lambda: probe.latest_diagnostics().get("last_error"), 10, "the error in diagnostics")
        assert "roma_outdoor.pth" in diag and "dinov2_vitl14_pretrain.pth" in diag
        assert probe.latest_diagnostics()["_level"] == 2  # ERROR
        assert node.set_parameters([Parameter("min_inliers", value=5)])[0].successful  # still serving
    finally:
        spinner.shut_down()
