"""The commands shown in README.md and docs/ stay true: every `roma-match`, `roma-keyframes` (and
other roma_ros program) line in a shell block parses with that program's own argument parser, so
a renamed or removed option fails here. The README's quick-start map commands also run for real
on generated files."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# program -> module with build_parser()
PROGRAMS = {"roma-match": "roma_ros.cli.match", "roma-keyframes": "roma_ros.cli.keyframes",
            "roma-eval": "roma_ros.cli.eval"}


def shell_commands(page: Path) -> list[str]:
    """Each command of the page's ```bash blocks, with continuation lines joined and comments cut."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.extend(part.strip() for part in re.split(r"&&|;", line) if part.strip())
    return commands


DOCUMENTED = [(page.relative_to(REPO).as_posix(), command) for page in PAGES for command in shell_commands(page)
              if command.split()[0] in PROGRAMS]


def test_the_pages_show_program_commands() -> None:
    """The extraction works: the README's quick start and the keyframes page are found."""
    assert any(page == "README.md" and cmd.startswith("roma-keyframes add") for page, cmd in DOCUMENTED)
    assert any(cmd.startswith("roma-match") for _, cmd in DOCUMENTED)


@pytest.mark.parametrize(("page", "command"), DOCUMENTED)
def test_documented_command_parses(page: str, command: str) -> None:
    words = shlex.split(command.replace("[", "").replace("]", ""))
    module = PROGRAMS[words[0]]
    try:
        parser = importlib.import_module(module).build_parser()
    except ModuleNotFoundError:
        pytest.fail(f"{page} documents {words[0]}, which does not exist ({module})")
    try:
        parser.parse_args(words[1:])
    except SystemExit as exc:
        pytest.fail(f"{page}: `{command}` does not parse (exit {exc.code})")


def test_readme_quick_start_map_commands_run(tmp_path, monkeypatch, capsys) -> None:
    """README's `roma-keyframes add ... --depth ...` and `list`, on a generated image and depth."""
    import cv2

    from roma_ros.cli.keyframes import main

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    cv2.imwrite("kitchen.png", rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    cv2.imwrite("kitchen_depth.png", np.full((480, 640), 1500, np.uint16))
    readme = [cmd for page, cmd in DOCUMENTED if page == "README.md"
              and cmd.startswith(("roma-keyframes add", "roma-keyframes list"))]
    assert len(readme) >= 2
    for command in readme:
        words = [w.replace("~/keyframes", str(tmp_path / "keyframes")) for w in shlex.split(command)]
        assert main(words[1:]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "kitchen" in out and (tmp_path / "keyframes" / "depth").is_dir()
