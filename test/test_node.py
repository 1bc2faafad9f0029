"""match_node in-process over real DDS: topics, services, parameters and bad input."""
from __future__ import annotations

import gc
import time

import numpy as np
import pytest
import yaml
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image

from rosutil import Probe, Spinner, wait_for
from roma_ros.ros.conversions import pointcloud2_to_matches, rgb_to_compressed_msg, rgb_to_image_msg
from roma_ros.core.imageio import save_rgb
from roma_ros.demo.photo_pairs import make_pair
from roma_ros.store import KeyframeStore

PLACES = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def pairs():
    return {name: make_pair(name, seed=11 + i) for i, name in enumerate(PLACES)}


def write_keyframes(folder, pairs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, name in enumerate(PLACES):
        save_rgb(folder / f"{name}.png", pairs[name].candidate)
        entries.append({"name": name, "image": f"{name}.png",
                        "pose": {"position": [float(i), 0.0, 0.0], "orientation": [0.0, 0.0, 0.0, 1.0]}})
    (folder / "keyframes.yaml").write_text(yaml.safe_dump({"keyframes": entries}))


def start(ros, folder, matcher=None, **overrides):
    values = {"model": "classical", "keyframes_dir": str(folder), "image_qos": "reliable",
              "min_inliers": 30, "ransac.threshold": 1.0, "diagnostics_period": 0.2,
              "mode": "continuous", "max_rate_hz": 0.0}  # every frame sent is matched
    values.update(overrides)
    from roma_ros.ros.node import MatchNode

    node = MatchNode(matcher=matcher, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    probe = Probe()
    spinner = Spinner(node, probe)
    wait_for(lambda: node.state in ("ready", "waiting for keyframes") or node.state.startswith("error"), 120,
             "the node to load")
    return node, probe, spinner


@pytest.fixture
def running(ros, tmp_path, pairs):
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf")
    yield node, probe
    spinner.shut_down()


def test_right_keyframe_wins_and_outputs_are_complete(running, pairs):
    node, probe = running
    for index, name in enumerate(PLACES):
        cloud = probe.send(pairs[name].query)
        data = pointcloud2_to_matches(cloud)
        assert [f.name for f in cloud.fields] == ["u_query", "v_query", "u_keyframe", "v_keyframe",
                                                  "certainty", "keyframe_index"]
        assert cloud.header.frame_id == "camera"
        assert cloud.width >= 30, f"{name}: only {cloud.width} inliers"
        assert set(data["keyframe_index"].tolist()) == {index}
        # Inliers are real correspondences: they follow the known homography.
        err = pairs[name].error(np.column_stack([data["u_query"], data["v_query"]]),
                                np.column_stack([data["u_keyframe"], data["v_keyframe"]]))
        assert np.median(err) < 1.0
        # Topics are independent: the marker may land just after the cloud.
        label = wait_for(lambda: next((m.text for a in probe.markers[::-1] for m in a.markers
                                       if m.text and name in m.text), None), 10, f"the {name} marker")
        assert "no match" not in label
    # A photo of no stored place: an explicit, empty answer.
    distractor = make_pair("grass", seed=5).query
    cloud = probe.send(distractor)
    assert cloud.width == 0
    wait_for(lambda: any("no match" in m.text for m in probe.markers[-1].markers), 10, "the no-match marker")
    wait_for(lambda: probe.latest_diagnostics().get("processed") == "4", 10, "diagnostics to count 4 queries")
    diag = probe.latest_diagnostics()
    assert diag["state"] == "ready" and diag["model"] == "classical" and diag["keyframes"] == "3"
    assert diag["accepted"] == "3" and float(diag["latency_mean_ms"]) > 0 and diag["replaced"] == "0"
    assert diag["_level"] == 0


def test_keyframe_poses_are_latched(running):
    node, probe = running
    poses = wait_for(lambda: probe.keyframes[-1] if probe.keyframes else None, 10, "the keyframe PoseArray")
    assert poses.header.frame_id == "map"
    assert [p.position.x for p in poses.poses] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("period", [3600.0, 0.5])
def test_an_addition_publishes_only_the_new_pose_and_the_whole_array_at_most_every_period(ros, tmp_path, pairs,
                                                                                           period):
    """issue 19: ~/keyframes is not republished whole after each addition (seconds at 10^5
    keyframes): the added poses go out on ~/keyframes_added, the whole array after at most
    keyframes_period, and always on a reload."""
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf", keyframes_period=period)
    try:
        wait_for(lambda: probe.keyframes, 10, "the latched keyframe PoseArray")
        wait_for(lambda: node.pub_keyframes_added.get_subscription_count() > 0, 10, "the added subscription")
        probe.send(make_pair("rocket", seed=2).query)
        for _ in range(2):
            assert probe.call(probe.add_client).success
        added = wait_for(lambda: probe.keyframes_added[1:2], 10, "two ~/keyframes_added messages")
        assert [len(m.poses) for m in probe.keyframes_added] == [1, 1] and added[0].header.frame_id == "map"
        if period > 100:
            time.sleep(1.5)  # the throttle timer runs every 0.25 s: nothing whole goes out
            assert len(probe.keyframes) == 1 and len(probe.keyframes[0].poses) == 3
        else:  # both additions within one period: one whole array after it, not one per addition
            whole = wait_for(lambda: probe.keyframes[1:2], 10, "the throttled whole array")
            assert len(whole[0].poses) == 5 and [p.position.x for p in whole[0].poses][:3] == [0.0, 1.0, 2.0]
            time.sleep(1.5)
            assert len(probe.keyframes) == 2
        assert probe.call(probe.reload_client).success
        reloaded = wait_for(lambda: [m for m in probe.keyframes[1:] if len(m.poses) == 5], 10, "the array on reload")
        assert reloaded
    finally:
        spinner.shut_down()


def test_debug_image_only_when_subscribed(running, pairs):
    node, probe = running
    wait_for(lambda: node.pub_debug.get_subscription_count() > 0, 10, "debug subscription")
    probe.send(pairs["coffee"].query)
    image = wait_for(lambda: probe.debug[-1] if probe.debug else None, 10, "a debug image")
    assert image.encoding == "rgb8" and image.width == 1280 and image.height > 480


def test_add_keyframe_then_reload(running, tmp_path, pairs):
    node, probe = running
    assert not probe.call(probe.add_client).success  # no query seen yet
    novel = make_pair("rocket", seed=2)
    first = probe.send(novel.query)
    assert first.width == 0  # rocket is not stored yet
    response = probe.call(probe.add_client)
    assert response.success, response.message
    stored = sorted((tmp_path / "kf").glob("kf_*.png"))
    assert len(stored) == 1 and stored[0].name in response.message
    index = KeyframeStore(tmp_path / "kf").entries()
    assert [e["name"] for e in index][:3] == list(PLACES) and len(index) == 4
    again = probe.send(novel.query)
    assert again.width >= 30 and set(pointcloud2_to_matches(again)["keyframe_index"].tolist()) == {3}
    reload = probe.call(probe.reload_client)
    assert reload.success and "loaded 4 keyframes" in reload.message
    assert set(pointcloud2_to_matches(probe.send(novel.query))["keyframe_index"].tolist()) == {3}


def test_keyframes_added_by_another_process_are_used_without_reload(running, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    node, probe = running
    novel = make_pair("rocket", seed=2)
    assert probe.send(novel.query).width == 0
    save_rgb(tmp_path / "rocket.png", novel.candidate)
    cli = Path(sys.executable).with_name("roma-keyframes")
    proc = subprocess.run([str(cli), "add", str(tmp_path / "rocket.png"), "--dir", str(tmp_path / "kf")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "(index 3)" in proc.stdout, proc.stderr
    cloud = probe.send(novel.query)  # no ~/reload_keyframes: the worker checks the index between queries
    assert cloud.width >= 30 and set(pointcloud2_to_matches(cloud)["keyframe_index"].tolist()) == {3}
    assert len(node.relocalizer.keyframes) == 4


def test_live_parameter_changes(running, pairs):
    node, probe = running
    ok = node.set_parameters([Parameter("min_inliers", value=100000)])[0]
    assert ok.successful
    assert probe.send(pairs["astronaut"].query).width == 0  # takes effect on the next query
    for name, value in (("ransac.method", "magic"), ("ransac.threshold", -1.0), ("ransac.confidence", 1.5),
                        ("debug.max_lines", -7)):
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful and result.reason
    assert node.get_parameter("ransac.method").value == "usac_magsac"
    assert not node.set_parameters([Parameter("model", value="roma_indoor")])[0].successful  # start-up only
    assert node.set_parameters([Parameter("min_inliers", value=30)])[0].successful
    assert probe.send(pairs["astronaut"].query).width >= 30


def test_bad_frames_are_skipped_and_counted(running, pairs):
    node, probe = running
    good = pairs["chelsea"].query
    bad = []
    msg = rgb_to_image_msg(good)
    msg.encoding = "yuv422"
    bad.append(msg)
    msg = rgb_to_image_msg(good)
    msg.step = 10  # shorter than a row
    bad.append(msg)
    msg = rgb_to_image_msg(good)
    msg.data = msg.data[:1000]  # truncated
    bad.append(msg)
    bad.append(Image(encoding="rgb8"))  # empty
    for msg in bad:
        msg.header.stamp = probe.next_header_stamp()
        probe.pub_image.publish(msg)
        time.sleep(0.3)
    wait_for(lambda: probe.latest_diagnostics().get("bad_frames") == "4", 15, "4 bad frames counted")
    assert "skipped a frame" in probe.latest_diagnostics()["last_error"]
    assert probe.send(good).width >= 30  # still alive and matching


def test_corrupt_jpeg_on_the_compressed_transport(ros, tmp_path, pairs):
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf", image_transport="compressed")
    try:
        corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 definitely not a jpeg")
        corrupt.header.stamp = probe.next_header_stamp()
        wait_for(lambda: probe.pub_compressed.get_subscription_count(), 20, "compressed subscription")
        probe.pub_compressed.publish(corrupt)
        wait_for(lambda: probe.latest_diagnostics().get("bad_frames") == "1", 15, "the corrupt JPEG counted")
        cloud = probe.send(msg=rgb_to_compressed_msg(pairs["coffee"].query, quality=95))
        assert set(pointcloud2_to_matches(cloud)["keyframe_index"].tolist()) == {1}
    finally:
        spinner.shut_down()


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def test_burst_drops_stale_frames_with_steady_memory(running, pairs):
    node, probe = running
    frames = [pairs[name].query for name in PLACES]

    def burst(n: int) -> None:
        for i in range(n):
            msg = rgb_to_image_msg(frames[i % 3])
            msg.header.stamp = probe.next_header_stamp()
            probe.pub_image.publish(msg)
            time.sleep(0.02)  # faster than matching, slow enough for the executor to see each frame

    def settle() -> None:
        """Wait until the worker has been idle for a second."""
        last = (-1, -1)
        while True:
            time.sleep(1.0)
            counts = node.frames.counts()
            now = (counts["processed"], counts["replaced"])
            if now == last:
                return
            last = now

    wait_for(lambda: probe.pub_image.get_subscription_count(), 20, "image subscription")
    burst(40)
    settle()
    gc.collect()
    before = rss_mb()
    first = node.frames.counts()
    burst(40)
    settle()
    gc.collect()
    processed = node.frames.counts()["processed"] - first["processed"]
    dropped = node.frames.counts()["replaced"] - first["replaced"]
    # The worker never queues: frames that arrive while it is busy replace the waiting one.
    assert 1 <= processed < 40 and dropped > 0 and processed + dropped <= 40, (processed, dropped)
    assert rss_mb() - before < 150
    assert probe.send(frames[0]).width >= 30


def test_empty_keyframe_folder_waits(ros, tmp_path, pairs):
    node, probe, spinner = start(ros, tmp_path / "missing")
    try:
        assert node.state == "waiting for keyframes"
        wait_for(lambda: probe.latest_diagnostics().get("state") == "waiting for keyframes", 10, "diagnostics")
        assert probe.latest_diagnostics()["_level"] == 1  # WARN
        assert probe.send(pairs["coffee"].query).width == 0
        assert probe.call(probe.add_client).success
        assert (tmp_path / "missing" / "keyframes.db").is_file()
        assert probe.send(pairs["coffee"].query).width >= 30
    finally:
        spinner.shut_down()
