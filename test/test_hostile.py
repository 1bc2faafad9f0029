"""Issue 20's probes (reliability and security, round 2), one test per finding fixed here, each
failing on the code before the fix: a hostile publisher, user or download must cost one item,
be reported with its cause, and never run code, forge a log line or take down the node.

The keyframe-store findings (1-5, 7, 15, 16) are tested with the store."""
from __future__ import annotations

import array

import cv2
import numpy as np
import pytest
import torch
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger

from rosutil import wait_for
from roma_ros.core.camera import MAX_DISTORTION_SHIFT, CameraModel
from roma_ros.core.imageio import MAX_JPEG_SCANS, jpeg_scans
from roma_ros.core.text import FIELD_LIMIT, MESSAGE_LIMIT, printable
from roma_ros.matching.base import WeightsError
from roma_ros.matching.weights import load_checkpoints
from roma_ros.ros.conversions import (
    CameraInfoError, ImageConversionError, camera_info_to_camera, compressed_msg_to_rgb, rgb_to_compressed_msg,
    rgb_to_image_msg,
)
from test_reliability import diagnostics_when, pairs, publish, stop_after  # noqa: F401 (fixtures)
from test_node import start, write_keyframes
from test_node_pose import scene  # noqa: F401 (fixture)


# ------------------------------------------------------------------ 6. a download cannot run code
class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the payload ran')",)


def test_a_checkpoint_carrying_a_pickle_payload_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(2), "x": Payload(str(marker))}, evil)

    def download(url, dst, *args, **kwargs):  # the "official" download, replaced by an attacker
        with open(evil, "rb") as src, open(dst, "wb") as out:
            out.write(src.read())

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(WeightsError) as err:
        load_checkpoints("tiny_roma_outdoor", allow_download=True)
    assert not marker.exists(), "the downloaded pickle's payload ran"
    assert "weights_only" in str(err.value) and "tiny_roma_v1_outdoor.pth" in str(err.value)
    # now in the hub cache: the next start refuses it as well, and says what to do
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "tiny_roma_v1_outdoor.pth"
    assert cached.is_file()
    with pytest.raises(WeightsError, match="not a plain checkpoint.*Delete it"):
        load_checkpoints("tiny_roma_outdoor", allow_download=False)
    assert not marker.exists()


# ------------------------------------------------------------------ 8. no forged log lines, bounded echoes
FORGED = "rgb9\n[FATAL] [0.0] [roma_matcher]: forged line\r"


def test_publisher_strings_are_escaped_and_cut_in_logs_and_diagnostics(ros, tmp_path, pairs, stop_after, capfd):
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf")
    stop_after((node, probe, spinner))
    wait_for(lambda: probe.pub_image.get_subscription_count(), 20, "image subscription")
    capfd.readouterr()
    msg = rgb_to_image_msg(pairs["coffee"].query)
    msg.encoding = FORGED + "A" * 1_000_000
    publish(probe, msg)
    diag = diagnostics_when(probe, lambda d: d.get("bad_frames") == "1", "the bad encoding counted")
    error = diag["last_error"]
    assert "unsupported encoding 'rgb9\\n[FATAL]" in error and "\n" not in error and "\r" not in error
    assert len(error) <= MESSAGE_LIMIT + 40 and "more characters" in error
    pose = PoseStamped()
    pose.header.frame_id = FORGED * 1000
    pose.pose.orientation.w = 1.0
    node._on_keyframe_pose(pose)  # the keyframe_pose callback, as a SLAM publisher would reach it
    error = node.last_error
    assert error.startswith("ignoring keyframe_pose in frame 'rgb9\\n[FATAL]") and "\n" not in error
    assert len(error) <= MESSAGE_LIMIT + 40
    err = capfd.readouterr().err
    assert not any(line.startswith("[FATAL]") for line in err.splitlines()), err
    assert len(err) < 5 * MESSAGE_LIMIT


def test_printable_escapes_control_characters_and_states_what_it_cut():
    assert printable("a\nb\tc\x1b[31m\u202e") == "a\\nb\\tc\\x1b[31m\\u202e"
    assert printable(printable("x\ny")) == "x\\ny"
    cut = printable("\n" * 1000)
    assert len(cut) <= FIELD_LIMIT + 30 and cut.endswith(f"({1000 - FIELD_LIMIT // 2} more characters)")


# ------------------------------------------------------------------ 9. libjpeg warnings stay off stderr
def test_libjpeg_warnings_are_caught_not_printed_raw(pairs, capfd):
    data = bytearray(rgb_to_compressed_msg(pairs["coffee"].query).data)
    app0 = data.find(b"JFIF\x00")
    assert app0 > 0
    data[app0 + 5] = 3  # JFIF version 3.01: libjpeg warns "unknown JFIF revision number" and decodes
    capfd.readouterr()
    rgb = compressed_msg_to_rgb(CompressedImage(format="jpeg", data=array.array("B", bytes(data))))
    assert rgb.shape == pairs["coffee"].query.shape
    err = capfd.readouterr().err
    assert "JFIF" not in err, err


# ------------------------------------------------------------------ 10. decode work per frame is bounded
def scan_bomb(rgb: np.ndarray, copies: int) -> bytes:
    """A progressive JPEG with its last scan repeated ``copies`` times: each extra scan is
    another decoding pass over the whole image, for a few bytes each."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    data = buf.tobytes()
    last_scan = data[data.rfind(b"\xff\xda"):-2]
    return data[:-2] + last_scan * copies + b"\xff\xd9"


def test_progressive_jpeg_scan_bomb_is_a_bad_frame_with_its_reason(ros, tmp_path, pairs, stop_after):
    flat = np.full((768, 1024, 3), 128, np.uint8)
    bomb = scan_bomb(flat, 2000)
    assert len(bomb) < 50_000 and jpeg_scans(bomb) == 2010
    with pytest.raises(ImageConversionError, match="2010 scans") as err:
        compressed_msg_to_rgb(CompressedImage(format="jpeg", data=array.array("B", bomb)))
    assert err.value.kind == "too_large"
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf", image_transport="compressed")
    stop_after((node, probe, spinner))
    wait_for(lambda: probe.pub_compressed.get_subscription_count(), 20, "compressed subscription")
    publish(probe, CompressedImage(format="jpeg", data=array.array("B", bomb)))
    diag = diagnostics_when(probe, lambda d: d.get("bad_frames") == "1", "the scan bomb counted")
    assert f"> {MAX_JPEG_SCANS}" in diag["last_error"] and diag["processed"] == "0"
    assert probe.send(msg=rgb_to_compressed_msg(pairs["coffee"].query, quality=95)).width >= 30


def test_a_keyframe_file_that_is_a_scan_bomb_is_an_image_file_error(tmp_path):
    from roma_ros.core.imageio import ImageFileError, load_rgb

    path = tmp_path / "bomb.jpg"
    path.write_bytes(scan_bomb(np.full((64, 64, 3), 128, np.uint8), 500))
    with pytest.raises(ImageFileError, match="510 scans"):
        load_rgb(path)


def test_scan_count_skips_segment_payloads_and_counts_ordinary_files():
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    baseline = cv2.imencode(".jpg", rgb)[1].tobytes()
    progressive = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert jpeg_scans(baseline) == 1 and 1 < jpeg_scans(progressive) <= MAX_JPEG_SCANS
    payload = b"\xff\xda" * 500  # SOS-looking bytes inside an APP1 segment (e.g. an EXIF thumbnail)
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    assert jpeg_scans(baseline[:2] + app1 + baseline[2:]) == 1


# ------------------------------------------------------------------ 11. buffered depth is bounded by bytes
def depth_msg(width: int, height: int, data: array.array, stamp: int) -> Image:
    msg = Image(width=width, height=height, encoding="32FC1", step=4 * width)
    msg.data = data
    msg.header.stamp.sec = stamp
    return msg


def test_buffered_depth_frames_are_bounded_by_bytes(ros, tmp_path, pairs, stop_after):
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf")
    stop_after((node, probe, spinner))
    side = 2000  # 16 MB of 32FC1, within max_image_pixels
    data = array.array("B", bytes(4 * side * side))  # shared by the messages: the test itself stays small
    for i in range(12):
        node._on_depth(depth_msg(side, side, data, 100 + i))
    held = [msg for _, msg in node._depth_frames._items]
    assert sum(len(msg.data) for msg in held) <= 64 * 2**20 and held[-1].header.stamp.sec == 111
    huge = 5000  # 25 MP > max_image_pixels: refused with the reason, the buffer keeps what it had
    node._on_depth(depth_msg(huge, huge, array.array("B", bytes(8)), 200))
    assert [m.header.stamp.sec for _, m in node._depth_frames._items][-1] == 111
    diag = diagnostics_when(probe, lambda d: "depth frame" in d.get("last_error", ""), "the refused depth frame")
    assert "5000x5000" in diag["last_error"] and "max_image_pixels" in diag["last_error"]


# ------------------------------------------------------------------ 12. concurrent service calls all answered
def test_thirty_concurrent_reload_calls_are_all_answered(ros, tmp_path, pairs, stop_after):
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf")
    stop_after((node, probe, spinner))
    clients = [probe.create_client(Trigger, "/roma_matcher/reload_keyframes") for _ in range(30)]
    wait_for(lambda: all(c.service_is_ready() for c in clients), 30, "30 service clients")
    futures = [c.call_async(Trigger.Request()) for c in clients]
    try:
        wait_for(lambda: all(f.done() for f in futures), 120, "all 30 answers")
    finally:
        answered = sum(f.done() for f in futures)
    assert answered == 30 and all(f.result().success for f in futures)


# ------------------------------------------------------------------ 13. and 18. camera models that cannot be right
def camera_info(width=640, height=480, d=(0.0,) * 5) -> CameraInfo:
    return CameraInfo(width=width, height=height, distortion_model="plumb_bob", d=list(d),
                      k=[500.0, 0.0, 319.5, 0.0, 500.0, 239.5, 0.0, 0.0, 1.0])


def test_absurd_distortion_is_refused_with_a_reason_before_any_pose():
    with pytest.raises(CameraInfoError, match=f"more than {MAX_DISTORTION_SHIFT:.0%} of its diagonal"):
        camera_info_to_camera(camera_info(d=(1e6, 1e6, 0.0, 0.0, 1e6)))
    with pytest.raises(CameraInfoError, match="cannot be inverted"):
        camera_info_to_camera(camera_info(d=(-2.0, 0.0, 0.0, 0.0, 0.0)))
    assert camera_info_to_camera(camera_info(d=(-0.3, 0.1, 0.001, -0.001, 0.0))).distorted  # a real wide lens
    # a keyframe's intrinsics get the same gate, against its image size
    from roma_ros.localize.pipeline import relative_pose
    from roma_ros.localize.pose import PoseConfig
    from roma_ros.store.folder import Keyframe

    keyframe = Keyframe("kf", "kf.png", np.zeros((480, 640, 3), np.uint8), pose=((0, 0, 0), (0, 0, 0, 1)),
                        intrinsics={"fx": 500.0, "fy": 500.0, "cx": 319.5, "cy": 239.5,
                                    "distortion": [1e6, 1e6, 0.0, 0.0, 1e6]},
                        depth=np.ones((480, 640), np.float32))
    best = type("Best", (), {})()  # never reached: the gate answers first
    estimate = relative_pose(best, keyframe, CameraModel(500.0, 500.0, 320.0, 240.0), PoseConfig())
    assert not estimate.ok and "bad intrinsics for keyframe 'kf'" in estimate.reason
    assert "diagonal" in estimate.reason


def test_absurd_or_sizeless_camera_info_gives_no_pose_and_says_why(ros, tmp_path, scene, stop_after):
    from test_node_pose import camera_info_msg, posed_store, start_node

    keyframes, queries = scene
    posed_store(tmp_path / "kf", keyframes)
    node, probe, spinner = start_node(tmp_path / "kf")
    stop_after((node, probe, spinner))
    wait_for(lambda: probe.pub_info.get_subscription_count(), 20, "the camera_info subscription")
    good = camera_info_msg(queries[0])
    probe.pub_info.publish(good)
    assert probe.pose_for(probe.send(queries[0].rgb))  # the scene gives a pose with a sane camera
    for change, reason in (({"d": [1e6, 1e6, 0.0, 0.0, 1e6]}, "diagonal"), ({"width": 0, "height": 0}, "0x0")):
        bad = camera_info_msg(queries[0])
        for field, value in change.items():
            setattr(bad, field, value)
        probe.pub_info.publish(bad)
        wait_for(lambda: node._camera_info is not None and node._camera_info[0].d.tolist() == list(bad.d)
                 and node._camera_info[0].width == bad.width, 10, "the bad camera_info at the node")
        cloud = probe.send(queries[1].rgb)
        assert cloud.width >= 20 and probe.no_pose_for(cloud)
        assert reason in node.pose_status["pose_result"], node.pose_status
        diag = diagnostics_when(probe, lambda d: reason in d.get("last_error", ""), "the camera_info reason")
        assert "camera_info" in diag["last_error"]


def test_roma_match_refuses_absurd_distortion_in_one_line(tmp_path, pairs, capsys):
    from roma_ros.cli.match import main
    from roma_ros.core.imageio import save_rgb

    save_rgb(tmp_path / "q.png", pairs["coffee"].query)
    save_rgb(tmp_path / "c.png", pairs["coffee"].candidate)
    code = main([str(tmp_path / "q.png"), str(tmp_path / "c.png"), "--model", "classical",
                 "--query-intrinsics", "500,500,320,240", "--keyframe-intrinsics", "500,500,320,240",
                 "--query-distortion", "1e6,1e6,0,0,1e6"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--query-distortion" in err and "diagonal" in err


def test_zero_size_camera_info_is_refused():
    with pytest.raises(CameraInfoError, match="camera_info is 0x0"):
        camera_info_to_camera(camera_info(width=0, height=0))


# ------------------------------------------------------------------ 14. parameters cannot be undeclared
def test_setting_a_live_parameter_to_not_set_is_rejected(ros, tmp_path, pairs, stop_after):
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf")
    stop_after((node, probe, spinner))
    client = probe.create_client(SetParameters, "/roma_matcher/set_parameters")
    wait_for(client.service_is_ready, 20, "set_parameters")
    reasons = {}
    for name in ("query_intrinsics", "model", "use_sim_time"):  # live, start-up only, rclpy's own
        future = client.call_async(SetParameters.Request(parameters=[ParameterMsg(name=name)]))
        (result,) = wait_for(lambda: future.result() if future.done() else None, 20, "the answer").results
        assert not result.successful and node.has_parameter(name), name
        reasons[name] = result.reason
    assert "PARAMETER_NOT_SET" in reasons["query_intrinsics"]
    assert node.set_parameters([Parameter("query_intrinsics", value=[500.0, 500.0, 320.0, 240.0])])[0].successful


# ------------------------------------------------------------------ 17. roma-match: one line and exit 2
@pytest.mark.parametrize("flag", [["-o", "{folder}"], ["--json", "/proc/version"], ["--plot", "{folder}"]])
def test_roma_match_unwritable_outputs_are_one_line_errors(tmp_path, pairs, capsys, flag):
    from roma_ros.cli.match import main
    from roma_ros.core.imageio import save_rgb

    save_rgb(tmp_path / "q.png", pairs["coffee"].query)
    save_rgb(tmp_path / "c.png", pairs["coffee"].candidate)
    folder = tmp_path / "out"
    folder.mkdir()
    extra = [f.format(folder=folder) for f in flag] + (["--thresholds", "0.5"] if flag[0] == "--plot" else [])
    code = main([str(tmp_path / "q.png"), str(tmp_path / "c.png"), "--model", "classical", *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("roma-match: error:") and extra[1] in err, err
    assert list(folder.iterdir()) == []
