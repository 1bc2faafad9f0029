"""`roma-match` end to end, as a user runs it (a real subprocess of the installed script)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from roma_ros.core.imageio import save_rgb
from roma_ros.demo.photo_pairs import make_pair

SCRIPT = Path(sys.executable).with_name("roma-match")


def roma_match(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    pair = make_pair("astronaut", seed=3)
    query, candidate = folder / "query.png", folder / "candidate.jpg"
    save_rgb(query, pair.query)
    save_rgb(candidate, pair.candidate)
    return query, candidate, pair


def test_classical_end_to_end_writes_consistent_png_and_json(pair_files, tmp_path):
    query, candidate, pair = pair_files
    out_png, out_json, plot = tmp_path / "out.png", tmp_path / "out.json", tmp_path / "plot.png"
    proc = roma_match(str(query), str(candidate), "--model", "classical", "--threshold", "1.0",
                      "-o", str(out_png), "--json", str(out_json),
                      "--thresholds", "2,1,0.5,0.1", "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out_json.read_text())
    assert data["model"] == "classical"
    assert data["image_sizes"] == {"query": [480, 640], "candidate": [480, 640]}
    assert data["num_matches"] == len(data["matches"]) == len(data["inlier_mask"])
    assert data["inliers"] == sum(data["inlier_mask"]) >= 100
    assert np.asarray(data["F"]).shape == (3, 3)
    assert set(data["timings"]) >= {"load_images", "build_model", "match", "verify", "draw"}
    # The inliers are real: they agree with the ground-truth homography.
    m = np.asarray(data["matches"], dtype=np.float64)[np.asarray(data["inlier_mask"])]
    err = pair.error(m[:, :2], m[:, 2:4])
    assert np.median(err) < 1.5
    assert f"{data['num_matches']} matches, {data['inliers']} inliers" in proc.stdout
    assert "threshold_px  inliers" in proc.stdout
    counts = [int(line.split()[1]) for line in proc.stdout.splitlines() if line[:12].strip() in ("2", "1", "0.5", "0.1")]
    assert len(counts) == 4 and counts[0] >= counts[-1]
    for png in (out_png, plot):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import cv2
    picture = cv2.imread(str(out_png))
    assert picture.shape[1] == 1280 and picture.shape[0] >= 480


def test_tiny_roma_random_weights_reports_original_pixels(pair_files, tmp_path):
    query, candidate, _ = pair_files
    out_json = tmp_path / "tiny.json"
    proc = roma_match(str(query), str(candidate), "--model", "tiny_roma_outdoor", "--random-weights",
                      "--device", "cpu", "--coarse-res", "224", "--num-samples", "500", "--json", str(out_json))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out_json.read_text())
    matches = np.asarray(data["matches"])
    assert matches.shape == (500, 5)
    assert matches[:, [0, 2]].max() <= 640 and matches[:, [1, 3]].max() <= 480
    assert matches[:, 0].max() > 400  # original pixels, not the 224-px model frame


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt"])
def test_bad_image_files_give_one_line_error(pair_files, tmp_path, case):
    query = pair_files[0]
    bad = tmp_path / "bad.png"
    if case == "empty":
        bad.write_bytes(b"")
    elif case == "corrupt":
        bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    proc = roma_match(str(query), str(bad), "--model", "classical")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "roma-match: error:" in lines[0] and "bad.png" in lines[0]


def test_unknown_option_and_bad_values_exit_non_zero(pair_files):
    query, candidate, _ = pair_files
    assert roma_match(str(query), str(candidate), "--frobnicate").returncode == 2
    proc = roma_match(str(query), str(candidate), "--model", "classical", "--thresholds", "0.1,abc")
    assert proc.returncode == 2 and "comma-separated" in proc.stderr
    proc = roma_match(str(query), str(candidate), "--coarse-res", "100", "--random-weights")
    assert proc.returncode == 2 and "multiple of 14" in proc.stderr


def test_missing_weights_message_from_the_command(pair_files, tmp_path):
    query, candidate, _ = pair_files
    env_home = tmp_path / "torch_home"
    proc = subprocess.run(
        [str(SCRIPT), str(query), str(candidate), "--model", "roma_outdoor", "--weights", str(tmp_path / "nope.pth"),
         "--dinov2-weights", str(tmp_path / "dino.pth")],
        capture_output=True, text=True, timeout=120, env={"TORCH_HOME": str(env_home), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "roma_outdoor.pth" in proc.stderr and "dinov2_vitl14_pretrain.pth" in proc.stderr
    assert "nope.pth" in proc.stderr


# --- pose ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def posed_pair(tmp_path_factory):
    """A rendered keyframe with exact depth (16-bit PNG in mm and .npy in m) and a query view."""
    from roma_ros.demo import synthetic_scene as ss
    from roma_ros.store import save_depth

    folder = tmp_path_factory.mktemp("posed")
    keyframes, queries = ss.relocalization_set(seed=1, n_queries=1)
    query, keyframe = queries[0], keyframes[queries[0].keyframe]
    files = {name: folder / name for name in ("query.png", "keyframe.png", "depth.png", "depth.npy", "small.npy")}
    save_rgb(files["query.png"], query.rgb)
    save_rgb(files["keyframe.png"], keyframe.rgb)
    save_depth(files["depth.png"], keyframe.depth)
    np.save(files["depth.npy"], keyframe.depth)
    np.save(files["small.npy"], keyframe.depth[:100, :100])
    intrinsics = {"query": ",".join(map(str, query.camera.to_ros())),
                  "keyframe": ",".join(map(str, keyframe.camera.to_ros()))}
    return files, intrinsics, ss.relative_pose(keyframe, query)


def pose_args(files, intrinsics, *extra):
    return (str(files["query.png"]), str(files["keyframe.png"]), "--model", "classical", "--threshold", "1.0",
            "--query-intrinsics", intrinsics["query"], "--keyframe-intrinsics", intrinsics["keyframe"], *extra)


@pytest.mark.parametrize("depth_file", ["depth.png", "depth.npy"])
def test_metric_pose_from_keyframe_depth(posed_pair, tmp_path, depth_file):
    from roma_ros.localize.pose import matrix_from_quaternion, rotation_angle_deg

    files, intrinsics, (R, t) = posed_pair
    out = tmp_path / "pose.json"
    proc = roma_match(*pose_args(files, intrinsics, "--keyframe-depth", str(files[depth_file]), "--json", str(out)))
    assert proc.returncode == 0, proc.stderr
    pose = json.loads(out.read_text())["pose"]
    assert (pose["method"], pose["metric"], pose["reason"]) == ("pnp", True, "")
    assert np.linalg.norm(np.asarray(pose["position"]) - t) < 0.05
    assert rotation_angle_deg(matrix_from_quaternion(pose["orientation"]), R) < 0.5
    assert pose["inliers"] >= 20 and 0 < pose["reprojection_rmse_px"] < 1.5
    cov = np.asarray(pose["covariance"]).reshape(6, 6)
    assert np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
    assert "pose (pnp): query camera in the keyframe camera frame: position" in proc.stdout


def test_pose_gates_and_missing_depth_give_no_position(posed_pair, tmp_path):
    files, intrinsics, (R, t) = posed_pair
    out = tmp_path / "gate.json"
    proc = roma_match(*pose_args(files, intrinsics, "--keyframe-depth", str(files["depth.npy"]),
                                 "--pose-min-inliers", "100000", "--json", str(out)))
    assert proc.returncode == 0, proc.stderr
    pose = json.loads(out.read_text())["pose"]
    assert (pose["metric"], pose["position"], pose["covariance"]) == (False, None, None)
    assert "< min_inliers 100000" in pose["reason"] and "no metric pose" in proc.stdout
    proc = roma_match(*pose_args(files, intrinsics, "--keyframe-depth", str(files["depth.npy"]),
                                 "--pose-max-rmse", "0.01", "--json", str(out)))
    pose = json.loads(out.read_text())["pose"]
    assert (pose["metric"], pose["position"]) == (False, None) and "> max_rmse 0.01 px" in pose["reason"]
    # Intrinsics without depth: rotation and translation direction, never a position.
    proc = roma_match(*pose_args(files, intrinsics, "--json", str(out)))
    assert proc.returncode == 0, proc.stderr
    pose = json.loads(out.read_text())["pose"]
    assert (pose["method"], pose["metric"], pose["position"]) == ("essential", False, None)
    assert "non-metric" in pose["reason"]
    direction = np.asarray(pose["translation_direction"])
    assert np.degrees(np.arccos(np.clip(direction @ t / np.linalg.norm(t), -1, 1))) < 10


def test_unverified_match_reports_the_reason_and_no_pose(posed_pair, tmp_path):
    files, intrinsics, _ = posed_pair
    blank = tmp_path / "blank.png"
    save_rgb(blank, np.full((240, 320, 3), 128, np.uint8))
    out = tmp_path / "blank.json"
    args = list(pose_args(files, intrinsics, "--keyframe-depth", str(files["depth.npy"]), "--json", str(out)))
    args[0] = str(blank)
    proc = roma_match(*args)
    assert proc.returncode == 0, proc.stderr
    pose = json.loads(out.read_text())["pose"]
    assert (pose["metric"], pose["position"]) == (False, None)
    assert pose["reason"].startswith("matches not verified:")


@pytest.mark.parametrize("extra, message", [
    (("--keyframe-depth", "small.npy"), "is 100x100 but the candidate image is 320x240"),
    (("--query-intrinsics", "0,250,160,120"), "fx=0.0 must be a positive"),
    (("--keyframe-intrinsics", "250,250,160"), "takes 4 numbers, got 3"),
    (("--keyframe-intrinsics", "250,abc,1,2"), "not a comma-separated list"),
    (("--pose-min-inlier-ratio", "2"), "min_inlier_ratio=2.0"),
    (("--depth-scale", "0.001"), "--depth-scale needs --keyframe-depth"),
    (("--keyframe-depth", "missing.png"), "does not exist"),
])
def test_bad_pose_inputs_give_one_line_error(posed_pair, extra, message):
    files, intrinsics, _ = posed_pair
    extra = tuple(str(files[e]) if e in files else str(files["depth.png"].parent / e) if e.endswith(("png", "npy"))
                  else e for e in extra)
    proc = roma_match(*pose_args(files, intrinsics, *extra))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


def test_depth_without_intrinsics_is_an_error(posed_pair):
    files, _, _ = posed_pair
    proc = roma_match(str(files["query.png"]), str(files["keyframe.png"]), "--model", "classical",
                      "--keyframe-depth", str(files["depth.png"]), "--query-intrinsics", "250,250,160,120")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert "a metric pose from --keyframe-depth needs --keyframe-intrinsics" in lines[0]
