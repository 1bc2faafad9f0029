"""docs/mapping.md's commands, run as written on recordings of the synthetic room with the
docs' topic and frame names. Only the model changes: ``--model classical`` is added to the
commands that match (RoMa's weights cannot be downloaded here). ``evo_ape`` runs where evo is
installed."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from bagutil import MAP_WAYPOINTS, NS, QUERY_WAYPOINTS, START_NS, camera_run, write_bag

from roma_ros.cli import eval as eval_cli
from roma_ros.cli import keyframes as keyframes_cli
from roma_ros.demo.synthetic_scene import default_camera, render
from roma_ros.mapping.trajectory import tum_lines

DOC = Path(__file__).resolve().parents[1] / "docs" / "mapping.md"
NAMES = {"image": "/camera/color/image_raw", "depth": "/camera/aligned_depth_to_color/image_raw",
         "info": "/camera/color/camera_info", "optical": "camera_color_optical_frame"}
PROGRAMS = {"roma-keyframes": keyframes_cli.main, "roma-eval": eval_cli.main}


def commands() -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.strip()]


def test_the_doc_has_the_commands() -> None:
    programs = [c[0] for c in commands()]
    assert programs.count("roma-keyframes") >= 3 and programs.count("roma-eval") == 2 and "evo_ape" in programs


def test_documented_commands_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_bag(Path("map_run"), camera_run(MAP_WAYPOINTS, 24), poses="tf", names=NAMES)
    write_bag(Path("odom_run"), camera_run(MAP_WAYPOINTS, 24), poses="odom", storage="mcap", names=NAMES)
    second = camera_run(QUERY_WAYPOINTS, 6, start_ns=START_NS + 100 * NS)
    write_bag(Path("second_run"), second, poses="tf", storage="mcap", depth=None, names=NAMES)
    Path("queries").mkdir()
    truth = second.truth("tf")
    for stamp, pose in zip(second.stamps_ns, truth):
        cv2.imwrite(f"queries/{stamp // NS}.{stamp % NS:09d}.png",
                    cv2.cvtColor(render(pose, default_camera(), (240, 320)).rgb, cv2.COLOR_RGB2BGR))
    Path("queries.tum").write_text(tum_lines(second.stamps_ns, truth))
    for command in commands():
        program, args = command[0], command[1:]
        if program == "evo_ape":
            evo = shutil.which("evo_ape") or str(Path(sys.executable).parent / "evo_ape")
            if not Path(evo).exists():
                continue
            done = subprocess.run([evo, *args], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0 and "rmse" in done.stdout, done.stderr
            continue
        if program == "roma-eval" or "--build-cache" in args:
            args += ["--model", "classical"]
        assert PROGRAMS[program](args) == 0, command
    out = capsys.readouterr().out
    assert "keyframes written" in out and "success rate" in out
    for folder in ("eval/second_run", "eval/files"):
        summary = json.loads(Path(folder, "summary.json").read_text())
        assert summary["queries"] == 6 and summary["recall_5cm_5deg"] >= 5 / 6, folder
    assert len(list(Path("maps/odom").glob("bag_*.png"))) == len(list(Path("maps/lab").glob("bag_*.png"))) > 5


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_help_runs(program, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        PROGRAMS[program](["--help"] if program == "roma-eval" else ["import-bag", "--help"])
    assert exit_.value.code == 0 and "--tf-from" in capsys.readouterr().out
