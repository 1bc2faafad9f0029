"""`make demo` end to end: the real node in a child process, real DDS on loopback, real photos.

Runs the demo with the classical matcher (no weights needed) and checks its table: every stored
place found under strong viewpoint change, both distractors rejected, debug images written, and a
metric ~/pose near the true pose for every query of the synthetic 3D scene.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from roma_ros.demo import run as demo
from roma_ros.core.imageio import load_rgb

REPO = Path(__file__).resolve().parent.parent


def _table_rows(stdout: str) -> dict[str, dict[str, str]]:
    """Rows of the demo's table (columns separated by two or more spaces), by query name."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"query\s{2,}expected\s{2,}matched", line)]
    assert starts, f"no result table in the demo output:\n{stdout}"
    header = re.split(r"\s{2,}", lines[starts[-1]].strip())
    rows = {}
    for line in lines[starts[-1] + 1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(header):
            break
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_demo_relocalizes_every_place_rejects_distractors_and_poses_the_scene(tmp_path):
    out = tmp_path / "demo_output"
    # A domain of its own, so the demo's roma_matcher never meets a node of this test session.
    domain = 1 + (int(os.environ["ROS_DOMAIN_ID"]) + 50) % 100
    proc = subprocess.run(
        [sys.executable, "-m", "roma_ros.demo", "--model", "classical", "--output", str(out),
         "--domain-id", str(domain)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    report = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert "matcher: classical" in proc.stdout, report

    rows = _table_rows(proc.stdout)
    scene_queries = [f"scene_q{i:02d}" for i in range(demo.SCENE_QUERIES)]
    expected_queries = ([f"query_{p}" for p, _ in demo.PLACES] + [f"distractor_{p}" for p, _ in demo.DISTRACTORS]
                        + scene_queries)
    assert sorted(rows) == sorted(expected_queries), report
    for photo, _ in demo.PLACES:
        row = rows[f"query_{photo}"]
        assert row["expected"] == photo and row["matched"] == photo and row["correct"] == "yes", report
        assert int(row["inliers"]) >= 25, report
        assert float(row["latency_ms"]) > 0, report
        assert row["pose"] == row["pos_err_m"] == "-", report  # photo places have no depth
    for photo, _ in demo.DISTRACTORS:
        row = rows[f"distractor_{photo}"]
        assert row["expected"] == "none" and row["matched"] == "no match", report
        assert row["correct"] == "yes" and row["inliers"] == "0", report
    for name in scene_queries:
        row = rows[name]
        assert row["correct"] == "yes" and row["expected"].startswith("scene_kf"), report
        # The classical matcher lands within about 1 cm and 0.2 deg here (test_pipeline_pose).
        assert row["pose"] == "yes" and float(row["pos_err_m"]) < 0.05 and float(row["rot_err_deg"]) < 1.0, report
    n = len(expected_queries)
    assert f"correct {n}/{n}; poses within 5 cm and 5 deg of the truth: {len(scene_queries)}/{len(scene_queries)}" \
        in proc.stdout, report

    # The keyframe folder the node read, in the order the table's names come from.
    import yaml

    listed = yaml.safe_load((out / "keyframes" / "keyframes.yaml").read_text())["keyframes"]
    assert [k["name"] for k in listed][:len(demo.PLACES)] == [p for p, _ in demo.PLACES]
    assert all((out / "keyframes" / k["image"]).is_file() for k in listed)
    assert all((out / "keyframes" / k["depth"]).is_file() for k in listed if k["name"].startswith("scene_"))

    # A debug image for every matched query at least: the node's side-by-side picture.
    debug = out / "debug"
    assert str(debug) in proc.stdout, report
    for photo, _ in demo.PLACES:
        path = debug / f"query_{photo}.png"
        assert path.is_file(), f"{path} missing\n{report}"
        picture = load_rgb(path)
        assert picture.shape[0] >= demo.IMAGE_SIZE[0] and picture.shape[1] >= demo.IMAGE_SIZE[1]
        assert picture.std() > 10
    assert not list(debug.glob(".*.tmp")), "half-written debug images left behind"
    assert "node stopped" in proc.stdout, report


def test_demo_data_and_table_without_ros(tmp_path):
    from roma_ros.store import KeyframeStore

    data = demo.build_demo_data(tmp_path)
    places = len(demo.PLACES)
    assert data.keyframe_names[:places] == [p for p, _ in demo.PLACES]
    photo_queries = data.queries[:places + len(demo.DISTRACTORS)]
    assert [q.expected for q in photo_queries] == [p for p, _ in demo.PLACES] + [None] * len(demo.DISTRACTORS)
    for q in photo_queries:
        assert q.image.shape == (*demo.IMAGE_SIZE, 3) and q.image.dtype == np.uint8 and q.true_pose is None
    scene_queries = data.queries[len(photo_queries):]
    assert len(scene_queries) == demo.SCENE_QUERIES
    assert all(q.expected in data.keyframe_names and q.true_pose is not None for q in scene_queries)
    for q in data.queries:
        assert (tmp_path / "queries" / f"{q.name}.png").is_file()
    # The folder the node reads: photo places without depth, scene keyframes with all a pose needs.
    store = KeyframeStore(data.keyframes_dir)
    keyframes = store.load()
    assert [k.name for k in keyframes] == data.keyframe_names and store.warnings == []
    assert [k.posable for k in keyframes] == [False] * places + [True] * (len(keyframes) - places)
    # Re-running starts from a clean keyframe folder.
    (data.keyframes_dir / "stale.png").write_bytes(b"x")
    data = demo.build_demo_data(tmp_path)
    assert not (data.keyframes_dir / "stale.png").exists()

    results = [
        demo.QueryResult("query_a", "a", answered=True, matched="a", inliers=120, latency_ms=35.2),
        demo.QueryResult("distractor_b", None, answered=True, matched=None, inliers=0, latency_ms=20.0),
        demo.QueryResult("query_c", "c", answered=True, matched="a", inliers=40, latency_ms=30.0),
        demo.QueryResult("query_d", "d"),
    ]
    results.append(demo.QueryResult("scene_q00", "scene_kf0", answered=True, matched="scene_kf0", inliers=300,
                                    latency_ms=12.0, posed=True, position_error_m=0.0123, rotation_error_deg=0.456))
    results.append(demo.QueryResult("scene_q01", "scene_kf1", answered=True, matched="scene_kf1", inliers=30,
                                    latency_ms=12.0, posed=True))
    rows = _table_rows(demo.format_table(results))
    assert rows["query_a"] == {"query": "query_a", "expected": "a", "matched": "a", "correct": "yes",
                               "inliers": "120", "latency_ms": "35", "pose": "-", "pos_err_m": "-",
                               "rot_err_deg": "-"}
    assert (rows["scene_q00"]["pose"], rows["scene_q00"]["pos_err_m"], rows["scene_q00"]["rot_err_deg"]) == \
        ("yes", "0.012", "0.46")
    assert rows["scene_q01"]["pose"] == "none"  # a pose was expected and none came
    assert rows["distractor_b"]["matched"] == "no match" and rows["distractor_b"]["correct"] == "yes"
    assert rows["query_c"]["correct"] == "no"
    assert rows["query_d"]["matched"] == "NO ANSWER" and rows["query_d"]["latency_ms"] == "-"
    assert demo.summary_line(results) == \
        "correct 4/6 (1 without answer); poses within 5 cm and 5 deg of the truth: 1/2"
    assert demo.summary_line(results[:4]) == "correct 2/4 (1 without answer)"


def test_model_choice_falls_back_and_says_what_is_missing(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    choice = demo.choose_model(None, "cpu")
    assert choice.model == "classical"
    text = "\n".join(choice.notes)
    for name in ("roma_outdoor.pth", "dinov2_vitl14_pretrain.pth", "tiny_roma_v1_outdoor.pth"):
        assert name in text and str(tmp_path / "hub" / "checkpoints" / name) in text
    assert "https://" in text

    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "tiny_roma_v1_outdoor.pth").write_bytes(b"")
    assert demo.choose_model(None, "cpu").model == "tiny_roma_outdoor"
    for name in ("roma_outdoor.pth", "dinov2_vitl14_pretrain.pth"):
        (tmp_path / "hub" / "checkpoints" / name).write_bytes(b"")
    choice = demo.choose_model(None, "cpu")
    assert choice.model == "roma_outdoor"
    assert choice.params["coarse_res"] == 280 and choice.params["upsample_res"] == 0
    assert demo.choose_model("classical", "cpu").model == "classical"
