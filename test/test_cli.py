"""`roma-match` end to end, as a user runs it (a real subprocess of the installed script)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from roma_ros.imageio import save_rgb
from roma_ros.testdata import make_pair

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
