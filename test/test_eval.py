"""`roma-eval`: a map imported from one recording, a second recording from other viewpoints
evaluated against it with the classical matcher (real SIFT on rendered images), the figures
checked against the known truth; the summary arithmetic on hand-made records; the outputs read
back (TUM by evo where it is installed, CSV, PNG)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from bagutil import MAP_WAYPOINTS, NS, QUERY_WAYPOINTS, START_NS, camera_run, write_bag

from roma_ros.cli.eval import main
from roma_ros.core.transforms import pose_to_matrix
from roma_ros.demo.synthetic_scene import default_camera, render
from roma_ros.mapping.bag import PoseSource
from roma_ros.mapping.evaluate import QueryRecord, summarize, summary_text
from roma_ros.mapping.importer import import_bag
from roma_ros.mapping.trajectory import read_tum, tum_lines

QUERY_RUN = camera_run(QUERY_WAYPOINTS, 12, start_ns=START_NS + 100 * NS)
TF = ["--tf-from", "map", "--tf-to", "camera_optical_frame"]
CLASSICAL = ["--model", "classical"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    map_bag = write_bag(root / "map_bag", camera_run(MAP_WAYPOINTS, 24), storage="sqlite3", poses="pose")
    import_bag(map_bag, root / "map", "/camera/image", PoseSource(topic="/camera_pose"), "/camera/depth",
               "/camera/camera_info")
    query_bag = write_bag(root / "query_bag", QUERY_RUN, storage="mcap", poses="tf", depth=None, compressed=True)
    return {"map": root / "map", "queries": query_bag, "root": root}


@pytest.fixture(scope="module")
def evaluated(world) -> Path:
    out = world["root"] / "eval"
    assert main([str(world["queries"]), "--dir", str(world["map"]), "--out", str(out), "--image", "/camera/image",
                 "--camera-info", "/camera/camera_info", *TF, *CLASSICAL]) == 0
    return out


def test_figures_match_the_truth(evaluated) -> None:
    summary = json.loads((evaluated / "summary.json").read_text())
    assert summary["queries"] == summary["with_ground_truth"] == 12
    assert summary["success_rate"] >= 0.9 and summary["wrong_place_rate"] == 0.0
    assert summary["recall_5cm_5deg"] >= 0.9 and summary["recall_25cm_5deg"] >= summary["recall_5cm_5deg"]
    assert summary["median_position_error_m"] < 0.02 and summary["median_rotation_error_deg"] < 0.5
    assert summary["latency_p50_s"] > 0 and summary["latency_p99_s"] >= summary["latency_p50_s"]
    assert summary["nees_count"] == summary["poses"] and summary["mean_nees"] > 0
    text = (evaluated / "summary.txt").read_text()
    assert "success rate" in text and "recall at (5 cm, 5 deg)" in text


def test_ground_truth_and_trajectory_files(evaluated) -> None:
    truth = read_tum(evaluated / "ground_truth.tum")
    expected = QUERY_RUN.truth("tf")
    assert truth.stamps.tolist() == QUERY_RUN.stamps_ns  # exact stamps: nanoseconds survive the text
    for (p, q), position in zip(expected, truth.positions):
        assert np.abs(np.array(p) - position).max() < 1e-6
    rows = list(csv.DictReader((evaluated / "queries.csv").open()))
    assert [r["stamp"] for r in rows] == [f"{s // NS}.{s % NS:09d}" for s in QUERY_RUN.stamps_ns]
    posed = [r for r in rows if r["x"]]
    trajectory = read_tum(evaluated / "trajectory.tum")
    assert len(trajectory) == len(posed) >= 11
    for row, position in zip(posed, trajectory.positions):
        assert row["keyframe"].startswith("bag_") and int(row["inliers"]) >= 50 and row["reason"] == ""
        i = QUERY_RUN.stamps_ns.index(int(row["stamp"].replace(".", "")))
        assert np.linalg.norm(position - np.array(expected[i][0])) == pytest.approx(float(row["position_error_m"]),
                                                                                   abs=1e-6)
    for name in ("top_view.png", "error_cdf.png", "success_along_run.png"):
        image = cv2.imread(str(evaluated / name))
        assert image is not None and min(image.shape[:2]) > 200, name


def test_evo_reads_the_trajectory(evaluated) -> None:
    evo = pytest.importorskip("evo.tools.file_interface", reason="evo (requirements/dev.txt) is not installed")
    from evo.core import metrics, sync

    estimate = evo.read_tum_trajectory_file(str(evaluated / "trajectory.tum"))
    truth = evo.read_tum_trajectory_file(str(evaluated / "ground_truth.tum"))
    truth, estimate = sync.associate_trajectories(truth, estimate, max_diff=1e-3)
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((truth, estimate))
    summary = json.loads((evaluated / "summary.json").read_text())
    # evo's errors are ours: same poses, same stamps (so its median equals our median).
    assert ape.get_statistic(metrics.StatisticsType.median) == pytest.approx(summary["median_position_error_m"],
                                                                            rel=1e-3, abs=1e-6)


def test_folder_of_images_with_a_tum_file(world, tmp_path) -> None:
    """The same run as files: images named by stamp, ground truth from a TUM file."""
    folder = tmp_path / "images"
    folder.mkdir()
    camera = default_camera((240, 320))
    truth = QUERY_RUN.truth("tf")[:4]
    for stamp, pose in zip(QUERY_RUN.stamps_ns, truth):
        cv2.imwrite(str(folder / f"{stamp // NS}.{stamp % NS:09d}.png"),
                    cv2.cvtColor(render(pose, camera, (240, 320)).rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "gt.tum").write_text("# stamp x y z qx qy qz qw\n" + tum_lines(QUERY_RUN.stamps_ns[:4], truth))
    fx, fy, cx, cy = camera.to_ros()
    out = tmp_path / "eval"
    assert main(["--images", str(folder), "--ground-truth", str(tmp_path / "gt.tum"), "--intrinsics", str(fx), str(fy),
                 str(cx), str(cy), "--dir", str(world["map"]), "--out", str(out), *CLASSICAL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries"] == 4 and summary["recall_5cm_5deg"] == 1.0


def test_no_camera_info_means_no_pose_and_says_why(world, tmp_path) -> None:
    out = tmp_path / "eval"
    assert main([str(world["queries"]), "--dir", str(world["map"]), "--out", str(out), "--image", "/camera/image",
                 *TF, *CLASSICAL, "--max-queries", "2"]) == 0
    rows = list(csv.DictReader((out / "queries.csv").open()))
    assert len(rows) == 2 and all(r["accepted"] == "1" and r["x"] == "" for r in rows)
    assert rows[0]["reason"] == "no query camera intrinsics (camera_info)"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success_rate"] == 0.0 and summary["reject_reasons"] == {"no query camera intrinsics (camera_info)": 2}


def record(error_m: float | None, error_deg: float = 0.0, truth: bool = True, latency: float = 0.1) -> QueryRecord:
    pose = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    posed = error_m is not None
    return QueryRecord(0, posed, "kf" if posed else "", 100 if posed else 0, pose if posed else None, None,
                       pose if truth else None, error_m if posed else None, error_deg if posed else None, None,
                       latency, "" if posed else "no keyframe verified")


def test_summary_arithmetic() -> None:
    records = [record(0.01), record(0.01, 6.0), record(0.2), record(1.5), record(0.3, 12.0), record(None),
               record(None), record(0.01, truth=False)]
    summary = summarize(records)
    assert summary["queries"] == 8 and summary["with_ground_truth"] == 7
    assert summary["success_rate"] == pytest.approx(3 / 7)  # 0.01, 0.01/6 deg, 0.2 m
    assert summary["wrong_place_rate"] == pytest.approx(2 / 7)  # 1.5 m; 12 deg
    assert summary["recall_5cm_5deg"] == pytest.approx(1 / 7)
    assert summary["recall_25cm_5deg"] == pytest.approx(2 / 7)
    assert summary["median_position_error_m"] == pytest.approx(0.2)
    assert summary["reject_reasons"] == {"no keyframe verified": 2}
    assert "42.9 %" in summary_text(summary)


def test_nees_of_a_known_error() -> None:
    from roma_ros.mapping.evaluate import nees

    truth = ((1.0, 2.0, 3.0), (0.0, 0.0, 0.0, 1.0))
    off = ((1.02, 2.0, 3.0), (0.0, 0.0, np.sin(0.005), np.cos(0.005)))  # 2 cm in x, 0.01 rad about z
    covariance = np.diag([0.01**2] * 3 + [0.01**2] * 3)
    assert nees(off, covariance, truth) == pytest.approx(4.0 + 1.0, rel=1e-4)
    assert nees(off, None, truth) is None


@pytest.mark.parametrize("args, expected", [
    (["--image", "/camera/image", *TF], "does not exist"),  # --dir names no map
    ([*TF], "BAG needs --image TOPIC"),
    (["--image", "/camera/rgb", *TF], "no image topic '/camera/rgb'"),
    (["--image", "/camera/image", "--tf-from", "map", "--tf-to", "cam"], "frame 'cam' is not in the bag's TF tree"),
])
def test_bad_input_is_one_line(args, expected, world, tmp_path, capsys) -> None:
    store = world["map"] if expected != "does not exist" else tmp_path / "nomap"
    assert main([str(world["queries"]), "--dir", str(store), "--out", str(tmp_path / "o"), *args, *CLASSICAL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("roma-eval: error: ") and expected in err
    assert not (tmp_path / "o").exists()


def test_decision_defaults_are_the_nodes() -> None:
    from roma_ros.cli.eval import build_parser, decision_config
    from roma_ros.ros import params as P

    for model in ("classical", "roma_outdoor"):
        config = decision_config(build_parser().parse_args(["--dir", "m", "--out", "o", "--model", model]))
        assert config.threshold == P.SPECS["ransac.threshold"].default_for(model)
        assert config.min_inliers == P.SPECS["min_inliers"].default_for(model)
    args = build_parser().parse_args(["--dir", "m", "--out", "o", "--model", "classical", "--min-inliers", "7"])
    assert decision_config(args).min_inliers == 7 and decision_config(args).threshold == 1.0


def test_map_without_poses_is_refused(world, tmp_path, capsys) -> None:
    from roma_ros.store import KeyframeStore

    store = KeyframeStore(tmp_path / "plain")
    store.add(render(QUERY_RUN.poses[0], default_camera((240, 320)), (240, 320)).rgb, [], name="plain")
    assert main([str(world["queries"]), "--dir", str(store.directory), "--out", str(tmp_path / "o"), "--image",
                 "/camera/image", *TF, *CLASSICAL]) == 2
    assert "no keyframe of the map has a pose, depth and intrinsics" in capsys.readouterr().err


def test_pose_to_matrix_round_trip_sanity() -> None:
    """The truth helper the checks above lean on composes like the reader (guards bagutil itself)."""
    a, b = QUERY_RUN.truth("tf")[0], QUERY_RUN.poses[0]
    assert np.abs(pose_to_matrix(a)[:3, 3] - pose_to_matrix(b)[:3, 3]).max() < 2e-3
