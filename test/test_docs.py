"""The reference in docs/ is generated from the code (scripts/docs.py), so it cannot drift: a
parameter or launch argument added without regenerating the docs fails here."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("roma_docs", REPO / "scripts" / "docs.py")
docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs)


def test_generated_docs_are_current() -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "docs.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_parameter_has_a_row() -> None:
    from roma_ros.ros.params import PARAMS

    page = (REPO / "docs" / "parameters.md").read_text()
    missing = [p.name for p in PARAMS if f"| `{p.name}` |" not in page]
    assert missing == []


def test_a_missing_parameter_is_caught(monkeypatch) -> None:
    """What the check would say if someone added a parameter without regenerating the docs."""
    from roma_ros.ros import params

    extra = params.ParamSpec("new.parameter", 1.0, "a parameter added without docs", live=True)
    monkeypatch.setattr(params, "PARAMS", params.PARAMS + (extra,))
    assert docs.stale_pages(REPO / "docs") == ["docs/parameters.md"]


def test_every_launch_argument_is_documented() -> None:
    names = [name for name, _, _ in docs.launch_arguments()]
    assert len(names) == len(set(names)) and "image" in names and "params_file" in names
    page = (REPO / "docs" / "interface.md").read_text()
    assert [n for n in names if f"| `{n}` |" not in page] == []


def test_readme_is_a_front_page() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_relative_links_resolve() -> None:
    import re

    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []
