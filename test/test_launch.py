"""launch/match.launch.py: read as source everywhere; built and expanded with every argument
where the ROS 2 `launch` and `launch_ros` packages are installed (a ROS 2 distro: they are not
on PyPI). The installs it relies on are tested in test_install.py."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO / "launch" / "match.launch.py"
ARGUMENTS = {"params_file", "image", "camera_info", "depth", "keyframe_pose", "initialpose", "namespace",
             "use_sim_time", "log_level", "keyframes_dir", "model", "device"}


def _launch_source_calls() -> list[ast.Call]:
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _kwargs(call: ast.Call) -> dict[str, object]:
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords
            if k.arg and isinstance(k.value, ast.Constant)}


def test_launch_file_starts_match_node():
    """Read without importing (launch is missing on pip-only machines): one Node of roma_ros's
    match_node named roma_matcher, at the top level (so `ros2 launch --print` shows it), and the
    documented arguments."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    calls = _launch_source_calls()
    nodes = [_kwargs(c) for c in calls if getattr(c.func, "id", "") == "Node"]
    assert len(nodes) == 1
    assert nodes[0]["package"] == "roma_ros"
    assert nodes[0]["executable"] == "match_node"
    assert nodes[0]["name"] == "roma_matcher"
    assert not any(getattr(c.func, "id", "") == "OpaqueFunction" for c in calls)
    setup_py = (REPO / "setup.py").read_text()
    assert '"match_node = roma_ros.ros.node:main"' in setup_py
    declared = {c.args[0].value for c in calls if getattr(c.func, "id", "") == "DeclareLaunchArgument"
                and isinstance(c.args[0], ast.Constant)}
    overrides = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                     and getattr(n.targets[0], "id", "") == "OVERRIDES")
    declared |= {ast.literal_eval(k) for k in overrides.keys}
    assert declared == ARGUMENTS
    defaults = {c.args[0].value: _kwargs(c).get("default_value") for c in calls
                if getattr(c.func, "id", "") == "DeclareLaunchArgument" and isinstance(c.args[0], ast.Constant)}
    # Relative, so that namespace:=robotN namespaces the camera input too.
    assert not any(defaults[topic].startswith("/") for topic in ("image", "camera_info", "depth", "keyframe_pose",
                                                                 "initialpose"))
    assert defaults["use_sim_time"] == "false" and defaults["log_level"] == "info"


NO_LAUNCH = ("the ROS 2 'launch' and 'launch_ros' packages are not installed here (not on PyPI; "
             "they come with a ROS 2 distro): the launch description is only read as source")


def _have_ros_launch() -> bool:
    """Whether the ROS 2 launch packages are importable. Found, not imported: a plain
    `import launch` would also "succeed" on this repo's launch/ folder (a namespace package)."""
    for name in ("launch", "launch_ros"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin in (None, "namespace"):
            return False
    return True


def _load_launch_module():
    spec = importlib.util.spec_from_file_location("roma_ros_match_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def share_prefix(tmp_path, monkeypatch) -> Path:
    """An ament prefix laid out like an install whose roma_ros share folder is this checkout,
    first on AMENT_PREFIX_PATH, so the launch file's default params file is this checkout's
    config/match.yaml and launch_ros finds lib/roma_ros/match_node."""
    index = tmp_path / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "roma_ros").touch()
    (tmp_path / "share" / "roma_ros").symlink_to(REPO)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "roma_ros").symlink_to(REPO / "libexec")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    return tmp_path


def _expand(given: dict[str, str]):
    """The launch description with ``given`` arguments, and the command line launch would run
    for its node (its substitutions performed as Node.execute does before starting it)."""
    from launch import LaunchContext, LaunchDescription
    from launch.actions import DeclareLaunchArgument
    from launch.utilities import perform_substitutions
    from launch_ros.actions import Node

    ld = _load_launch_module().generate_launch_description()
    assert isinstance(ld, LaunchDescription)
    declared = [a for a in ld.entities if isinstance(a, DeclareLaunchArgument)]
    assert {a.name for a in declared} == ARGUMENTS
    (node,) = [a for a in ld.entities if isinstance(a, Node)]
    assert node.node_package == "roma_ros" and node.node_executable == "match_node"
    context = LaunchContext()
    context.launch_configurations.update(given)
    for action in declared:
        action.visit(context)  # fills in defaults for the arguments not given
    node._perform_substitutions(context)
    context.extend_locals({"ros_specific_arguments": {"name": "__node:=roma_matcher",
                                                      "ns": f"__ns:={node.expanded_node_namespace}"}})
    return context, node, [perform_substitutions(context, part) for part in node.cmd]


def _parameter_files(cmd: list[str]) -> tuple[Path, dict]:
    """The first params file of the command line, and what the later ones set (launch_ros keys
    its own files by the node's full name, our overrides file by /**)."""
    files = [Path(cmd[i + 1]) for i, arg in enumerate(cmd) if arg == "--params-file"]
    merged = {}
    for path in files[1:]:
        (section,) = yaml.safe_load(path.read_text()).values()
        merged.update(section["ros__parameters"])
    return files[0], merged


def test_launch_description_with_every_argument(share_prefix):
    if not _have_ros_launch():
        pytest.skip(NO_LAUNCH)
    params_file = REPO / "config" / "match.yaml"
    context, node, cmd = _expand({"params_file": str(params_file), "image": "front/image_raw",
                                  "namespace": "robot1", "use_sim_time": "true", "log_level": "debug",
                                  "initialpose": "amcl/initialpose",
                                  "keyframes_dir": "/data/kf", "model": "classical", "device": "cpu"})
    assert node.expanded_node_namespace == "/robot1"
    assert node.expanded_remapping_rules == [("image", "front/image_raw"),
                                             ("image/compressed", "front/image_raw/compressed"),
                                             ("camera_info", "camera/camera_info"),
                                             ("depth", "camera/depth_registered/image_raw"),
                                             ("keyframe_pose", "keyframe_pose"),
                                             ("initialpose", "amcl/initialpose")]
    first, merged = _parameter_files(cmd)
    assert first == params_file
    assert merged == {"use_sim_time": True, "keyframes_dir": "/data/kf", "model": "classical", "device": "cpu"}
    assert cmd[cmd.index("--log-level") + 1] == "debug"


def test_empty_arguments_keep_the_params_file(share_prefix):
    if not _have_ros_launch():
        pytest.skip(NO_LAUNCH)
    context, node, cmd = _expand({"model": "classical"})
    assert context.launch_configurations["image"] == "camera/image_raw"
    assert node.expanded_node_namespace == "/"
    first, merged = _parameter_files(cmd)
    assert first == share_prefix / "share" / "roma_ros" / "config" / "match.yaml"
    assert cmd[0] == str(share_prefix / "lib" / "roma_ros" / "match_node")
    # keyframes_dir and device were left empty: not passed, so the params file's values stay.
    assert merged == {"use_sim_time": False, "model": "classical"}
    assert cmd[cmd.index("--log-level") + 1] == "info"
