"""`roma-keyframes import-bag` on rosbag2 recordings of the synthetic scene (bagutil.py): both
storage formats, poses from a PoseStamped topic, an Odometry topic (+ tf_static mount) or TF
alone, raw and compressed images, 16-bit and float depth. The stored keyframes are checked
against the rendered truth; bad input is one line, exit 2, and leaves the store untouched."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from bagutil import MAP_WAYPOINTS, camera_run, write_bag

from roma_ros.cli.keyframes import main
from roma_ros.core.transforms import pose_to_matrix, rotation_angle_deg
from roma_ros.demo.synthetic_scene import default_camera, render
from roma_ros.mapping.bag import BagError, PoseSource, scan
from roma_ros.mapping.importer import import_bag
from roma_ros.mapping.keyframing import KeyframeRule, KeyframeSelector
from roma_ros.store import KeyframeStore

RUN = camera_run(MAP_WAYPOINTS, 24)
SIZE = (240, 320)
CAMERA = ["--image", "/camera/image", "--depth", "/camera/depth", "--camera-info", "/camera/camera_info"]
POSES = {"pose": ["--pose-topic", "/camera_pose"], "pose_cov": ["--pose-topic", "/camera_pose"], "tf": ["--tf-from", "map", "--tf-to", "camera_optical_frame"],
         "odom": ["--pose-topic", "/odom", "--camera-frame", "camera_optical_frame"]}
CASES = {  # name: write_bag options
    "sqlite3-pose": dict(storage="sqlite3", poses="pose"),
    "mcap-tf": dict(storage="mcap", poses="tf"),
    "sqlite3-odom-compressed-32FC1": dict(storage="sqlite3", poses="odom", compressed=True, depth="32FC1"),
    "mcap-odom": dict(storage="mcap", poses="odom"),
    "mcap-pose-with-covariance": dict(storage="mcap", poses="pose_cov", depth="32FC1"),
}


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bags")
    return {name: write_bag(root / name, RUN, **options) for name, options in CASES.items()}


def expected_selection(rule: KeyframeRule) -> list[int]:
    """Brute force over the truth: frame i is kept when it is far (distance or angle) from every kept one."""
    kept: list[int] = []
    for i, pose in enumerate(RUN.poses):
        T = pose_to_matrix(pose)
        near = any(np.linalg.norm(T[:3, 3] - pose_to_matrix(RUN.poses[k])[:3, 3]) < rule.min_distance and
                   rotation_angle_deg(T[:3, :3], pose_to_matrix(RUN.poses[k])[:3, :3]) < rule.min_angle_deg
                   for k in kept)
        if not near:
            kept.append(i)
    return kept


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_stores_the_truth(case, bags, tmp_path, capsys) -> None:
    store_dir = tmp_path / "map"
    poses = POSES[CASES[case]["poses"]]
    assert main(["import-bag", str(bags[case]), "--dir", str(store_dir), *CAMERA, *poses]) == 0
    out = capsys.readouterr().out
    keyframes = KeyframeStore(store_dir).load()
    chosen = expected_selection(KeyframeRule())
    assert 6 <= len(chosen) < len(RUN.poses)
    assert [k.name for k in keyframes] == [f"bag_{RUN.stamps_ns[i]}" for i in chosen]
    assert f"{len(chosen)} keyframes written ({len(chosen)} selected from 24 frames" in out
    assert f"frames skipped: {24 - len(chosen)} near a keyframe" in out
    camera = default_camera(SIZE)
    fx, fy, cx, cy = camera.to_ros()
    poses = RUN.truth(CASES[case]["poses"])
    for keyframe, i in zip(keyframes, chosen):
        truth = render(poses[i], camera, SIZE)
        T, T_true = pose_to_matrix(keyframe.pose), pose_to_matrix(poses[i])
        assert np.abs(T[:3, 3] - T_true[:3, 3]).max() < 1e-6
        assert rotation_angle_deg(T[:3, :3], T_true[:3, :3]) < 1e-4
        assert keyframe.intrinsics == {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
        np.testing.assert_array_equal(keyframe.image, truth.rgb)  # PNG: lossless either way
        valid = np.isfinite(truth.depth)
        assert np.array_equal(np.isfinite(keyframe.depth), valid)
        assert np.abs(keyframe.depth[valid] - truth.depth[valid]).max() <= (1e-6 if CASES[case].get("depth") == "32FC1" else 5e-4 + 1e-5)  # 16UC1: mm


def test_the_thresholds_change_the_selection(bags, tmp_path) -> None:
    rule = KeyframeRule(min_distance=1.0, min_angle_deg=30.0)
    summary = import_bag(bags["sqlite3-pose"], tmp_path / "map", "/camera/image", PoseSource(topic="/camera_pose"),
                         rule=rule)
    assert summary.keyframes_written == len(expected_selection(rule)) < len(expected_selection(KeyframeRule()))
    # The time rule alone: a keyframe at least every 0.5 s of a 2.4 s run at 10 Hz, however near.
    summary = import_bag(bags["sqlite3-pose"], tmp_path / "timed", "/camera/image", PoseSource(topic="/camera_pose"),
                         rule=KeyframeRule(min_distance=100.0, min_angle_deg=180.0, max_interval_s=0.5))
    assert summary.keyframes_written == 5  # frames 0, 5, 10, 15, 20


def test_selector_is_against_every_keyframe() -> None:
    """Coming back to the first place adds nothing, though it is far from the last keyframe."""
    selector = KeyframeSelector(KeyframeRule(min_distance=0.5, min_angle_deg=15.0, max_interval_s=0.0))
    q = (0.0, 0.0, 0.0, 1.0)
    for x in (0.0, 1.0, 2.0):
        assert selector.decide(int(x * 1e9), ((x, 0.0, 0.0), q)) == ""
        selector.add(int(x * 1e9), ((x, 0.0, 0.0), q))
    assert selector.decide(10**10, ((0.1, 0.0, 0.0), q)) == "near a keyframe"
    turned = (0.0, 0.0, np.sin(np.radians(10)), np.cos(np.radians(10)))  # 20 deg about z
    assert selector.decide(10**10, ((0.1, 0.0, 0.0), turned)) == ""
    with pytest.raises(ValueError, match="both 0"):
        KeyframeRule(0.0, 0.0).validate()


def test_interrupted_import_resumes_without_duplicates(bags, tmp_path, capsys) -> None:
    store_dir = tmp_path / "map"

    def interrupted(stream, total):
        for n, item in enumerate(stream):
            if n == 3:
                raise KeyboardInterrupt
            yield item

    with pytest.raises(KeyboardInterrupt):
        import_bag(bags["mcap-tf"], store_dir, "/camera/image", PoseSource(tf_from="map", tf_to="camera_optical_frame"),
                   "/camera/depth", "/camera/camera_info", progress=interrupted)
    assert len(KeyframeStore(store_dir).load()) == 3
    args = ["import-bag", str(bags["mcap-tf"]), "--dir", str(store_dir), *CAMERA, *POSES["tf"]]
    assert main(args) == 0
    out = capsys.readouterr().out
    names = [k.name for k in KeyframeStore(store_dir).load()]
    chosen = expected_selection(KeyframeRule())
    assert names == [f"bag_{RUN.stamps_ns[i]}" for i in chosen]
    assert f"{len(chosen) - 3} keyframes written" in out and "3 already imported" in out
    assert main(args) == 0  # a third run writes nothing
    assert "0 keyframes written" in capsys.readouterr().out
    assert len(KeyframeStore(store_dir).load()) == len(chosen)
    assert sorted(p.name for p in (store_dir / "depth").iterdir()) == sorted(f"{n}.png" for n in names)


def test_keyframes_stored_before_count_as_stored(bags, tmp_path) -> None:
    """A place already in the map (another recording of it) is not added again."""
    first = import_bag(bags["sqlite3-pose"], tmp_path / "map", "/camera/image", PoseSource(topic="/camera_pose"))
    again = import_bag(bags["mcap-odom"], tmp_path / "map", "/camera/image",
                       PoseSource(topic="/odom", camera_frame="camera_optical_frame"))
    assert first.keyframes_written > 0 and again.keyframes_written == 0  # same stamps, same names: all imported


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("roma-keyframes: error: "), err
    return err


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("problem, args, expected", [
    ("missing topic", ["--image", "/camera/rgb", *POSES["tf"]],
     "no image topic '/camera/rgb'; its topics: /camera/camera_info (sensor_msgs/msg/CameraInfo)"),
    ("unknown frame", ["--image", "/camera/image", "--tf-from", "map", "--tf-to", "camera_color_optical_frame"],
     "frame 'camera_color_optical_frame' is not in the bag's TF tree; frames present: base_link, camera_link, "
     "camera_optical_frame, map, odom"),
    ("body frame", ["--image", "/camera/image", "--tf-from", "map", "--tf-to", "base_link"],
     "camera frame 'base_link' has its z axis pointing up"),
    ("pose source twice", ["--image", "/camera/image", "--pose-topic", "/odom", *POSES["tf"]], "not both"),
    ("depth never paired", [*CAMERA, *POSES["tf"], "--depth-tolerance", "0.001"],
     "no image on '/camera/image' was paired with a depth frame on '/camera/depth' within 0.001 s (nearest "
     "offset 0.005 s)"),
    ("pose gap", [*CAMERA, *POSES["tf"], "--max-pose-gap", "0.05"], "gap of 0.100 s > max gap 0.05 s"),
])
def test_bad_input_is_one_line_and_writes_nothing(problem, args, expected, bags, tmp_path, capsys) -> None:
    store_dir = tmp_path / "map"
    assert main(["import-bag", str(bags["mcap-tf"]), "--dir", str(store_dir), *args]) == 2, problem
    assert expected in one_error(capsys)
    assert not store_dir.exists()


@pytest.mark.parametrize("case", ["sqlite3-pose", "mcap-tf"])
def test_truncated_bag_is_one_line_and_leaves_the_store_as_it_was(case, bags, tmp_path, capsys) -> None:
    store_dir = tmp_path / "map"
    assert main(["import-bag", str(bags["sqlite3-pose"]), "--dir", str(store_dir), "--min-distance", "3",
                 "--min-angle", "90", *CAMERA, *POSES["pose"]]) == 0
    capsys.readouterr()
    before = store_contents(store_dir)
    broken = shutil.copytree(bags[case], tmp_path / "broken")
    data = next(p for p in broken.iterdir() if p.suffix in (".db3", ".mcap"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    assert main(["import-bag", str(broken), "--dir", str(store_dir), *CAMERA, *POSES[CASES[case]["poses"]]]) == 2
    assert "is truncated or corrupt" in one_error(capsys)
    assert store_contents(store_dir) == before


def store_contents(folder: Path) -> tuple[dict, list]:
    """Every file's bytes but the SQLite index's (opening it may checkpoint its WAL), and the
    index's entries: what "the store as it was" means."""
    files = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.name.startswith("keyframes.db")}
    return files, KeyframeStore(folder).entries()


def test_not_a_bag(tmp_path, capsys) -> None:
    assert main(["import-bag", str(tmp_path), "--dir", str(tmp_path / "map"), *CAMERA, *POSES["tf"]]) == 2
    assert "is not a rosbag2 folder (no metadata.yaml)" in one_error(capsys)
    with pytest.raises(BagError, match="does not exist"):
        scan(tmp_path / "nothing", "/camera/image", PoseSource(topic="/p"))


def test_an_image_left_by_a_crash_is_replaced_not_duplicated(bags, tmp_path) -> None:
    """A crash between an add's image write and its index write leaves ``bag_<stamp>.png`` without
    an entry (load sees a pose-less keyframe): the resumed import stores that frame properly."""
    import cv2

    chosen = expected_selection(KeyframeRule())
    store_dir = tmp_path / "map"
    store_dir.mkdir()
    leftover = f"bag_{RUN.stamps_ns[chosen[1]]}"
    cv2.imwrite(str(store_dir / f"{leftover}.png"), np.zeros((240, 320, 3), np.uint8))
    summary = import_bag(bags["sqlite3-pose"], store_dir, "/camera/image", PoseSource(topic="/camera_pose"))
    keyframes = KeyframeStore(store_dir).load()
    assert summary.keyframes_written == len(chosen) == len(keyframes)
    again = next(k for k in keyframes if k.name == leftover)
    assert again.pose is not None and again.image.any()
    assert sorted(p.name for p in store_dir.glob("*.png")) == sorted(f"{k.name}.png" for k in keyframes)


def test_ctrl_c_says_how_to_resume(bags, tmp_path, capsys, monkeypatch) -> None:
    import roma_ros.mapping.importer as importer

    real, calls = importer._store, []

    def store_then_interrupt(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(importer, "_store", store_then_interrupt)
    args = ["import-bag", str(bags["sqlite3-pose"]), "--dir", str(tmp_path / "map"), *CAMERA, *POSES["pose"]]
    assert main(args) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert len(KeyframeStore(tmp_path / "map").load()) == 2
    monkeypatch.setattr(importer, "_store", real)
    assert main(args) == 0 and len(KeyframeStore(tmp_path / "map").load()) == len(expected_selection(KeyframeRule()))
