"""The package's layers, checked on its source (DESIGN.md, "Layout"): imports point down, only
``ros/`` (and the demo, which runs the node) touches the ROS client library, and no module is
part of an import circle. An AST walk, so imports inside functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "roma_ros"

# Bottom to top. A module may import its own layer and the layers below it; ``ros`` and ``cli``
# are siblings (neither imports the other); ``demo`` sits on top and may use everything.
LAYERS = {"core": 0, "matching": 1, "store": 2, "localize": 3, "mapping": 4, "ros": 5, "cli": 5, "demo": 6}
# Where rclpy and the ROS message packages may be imported.
ROS_ALLOWED = ("ros", "demo")
ROS_MODULES = ("rclpy", "rcl_interfaces", "builtin_interfaces", "std_msgs", "std_srvs", "sensor_msgs",
               "geometry_msgs", "visualization_msgs", "diagnostic_msgs", "lifecycle_msgs", "nav_msgs", "tf2_msgs")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names: ``from a.b import c`` names ``a.b.c``
    when that is one of our modules, else ``a.b``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "roma_ros" else None


GRAPH = {name: {m for m in imports_of(path) if m in MODULES} for name, path in MODULES.items()}


def test_every_module_is_in_a_layer() -> None:
    """A new top-level module or folder must be placed in a layer, not beside them."""
    stray = [name for name in MODULES if name != "roma_ros" and layer_of(name) not in LAYERS]
    assert stray == [], f"modules outside the layers {sorted(LAYERS)}: {stray}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    own = layer_of(module)
    if own is None:
        assert GRAPH[module] == set(), "roma_ros/__init__.py must stay import-free"
        return
    for target in GRAPH[module]:
        other = layer_of(target)
        assert other is not None
        upward = LAYERS[other] > LAYERS[own]
        sideways = LAYERS[other] == LAYERS[own] and other != own
        assert not (upward or sideways), f"{module} ({own}) imports {target} ({other}): imports point down"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_ros_layer_imports_the_ros_client_library(module: str) -> None:
    if layer_of(module) in ROS_ALLOWED:
        return
    ros = sorted(m for m in imports_of(MODULES[module]) if m.split(".")[0] in ROS_MODULES)
    assert ros == [], f"{module} imports {ros}: only roma_ros.ros (and the demo) may use ROS"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return components


def test_no_import_circles() -> None:
    assert strongly_connected(GRAPH) == []


def test_the_circle_check_finds_a_circle() -> None:
    """The checker itself: a known circle and a known chain."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
