#!/usr/bin/env python3
"""Regenerate the reference tables in docs/ from the code, or check that they are current.

    .venv/bin/python scripts/docs.py          # rewrite the generated blocks
    .venv/bin/python scripts/docs.py --check  # exit 1 and name the stale blocks (test_docs.py)

A generated block sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` in a
docs page; everything around it is written by hand. Blocks:

- ``parameters``: every ParamSpec of roma_ros/ros/params.py (name, default, live, allowed, meaning);
- ``launch-arguments``: every DeclareLaunchArgument of launch/match.launch.py, read as source
  (the ROS 2 launch packages are not on PyPI).
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def _code(value) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value == "" else f"`{value}`"
    if isinstance(value, (list, tuple)):
        return f"`{list(value)}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def parameters_table() -> str:
    from roma_ros.ros.params import PARAMS

    rows = ["| parameter | default | live | allowed | meaning |", "|---|---|---|---|---|"]
    for spec in PARAMS:
        default = _code(spec.default)
        if spec.model_defaults:
            default += "; " + "; ".join(f"{_code(v)} for `{m}`" for m, v in spec.model_defaults.items())
        rows.append(f"| `{spec.name}` | {default} | {'yes' if spec.live else ''} | "
                    f"{_cell(spec.allowed())} | {_cell(spec.description)} |")
    return "\n".join(rows) + "\n"


def launch_arguments() -> list[tuple[str, str, str]]:
    """(name, default, description) of each launch argument, from the launch file's source."""
    path = REPO / "launch" / "match.launch.py"
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument" \
                and isinstance(node.args[0], ast.Constant):
            kw = {k.arg: k.value for k in node.keywords}
            default = kw.get("default_value")
            default_text = default.value if isinstance(default, ast.Constant) else ""
            description = kw.get("description")
            found.append((node.args[0].value, default_text,
                          description.value if isinstance(description, ast.Constant) else ""))
    overrides = next((n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                      and getattr(n.targets[0], "id", "") == "OVERRIDES"), None)
    if overrides is not None:
        for key, value in zip(overrides.keys, overrides.values):
            found.append((ast.literal_eval(key), "", ast.literal_eval(value) + "; empty: keep the params file's value"))
    return found


def launch_table() -> str:
    rows = ["| argument | default | what |", "|---|---|---|"]
    for name, default, text in launch_arguments():
        shown = "the installed `config/match.yaml`" if name == "params_file" else _code(default)
        rows.append(f"| `{name}` | {shown} | {_cell(text)} |")
    return "\n".join(rows) + "\n"


GENERATORS = {"parameters": parameters_table, "launch-arguments": launch_table}


def render(text: str) -> str:
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in GENERATORS:
            raise SystemExit(f"unknown generated block '{name}' (known: {', '.join(GENERATORS)})")
        return match.group(1) + GENERATORS[name]() + match.group(4)

    return BLOCK.sub(replace, text)


def stale_pages(docs: Path) -> list[str]:
    """Pages whose generated blocks differ from what the code gives now."""
    return [str(page.relative_to(REPO)) for page in sorted(docs.glob("*.md")) if render(page.read_text()) != page.read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a block is stale")
    args = parser.parse_args(argv)
    docs = REPO / "docs"
    if args.check:
        stale = stale_pages(docs)
        if stale:
            print(f"stale generated docs: {', '.join(stale)}; run scripts/docs.py", file=sys.stderr)
            return 1
        return 0
    for page in sorted(docs.glob("*.md")):
        text = page.read_text()
        new = render(text)
        if new != text:
            page.write_text(new)
            print(f"updated {page.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
