"""The package as ROS 2 sees it: installed files, the ament index, the launch file and the
executable `ros2 run roma_ros match_node` / the launch file start."""
from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO / "launch" / "match.launch.py"
SHARE_FILES = (
    "launch/match.launch.py",
    "config/match.yaml",
    "config/fastdds_localhost.xml",
    "rviz/roma_ros.rviz",
    "package.xml",
)
# Not copied into the throw-away source tree the installs build from.
_SKIP_COPY = shutil.ignore_patterns(".git", ".venv", "build", "install", "log", "demo_output",
                                    "__pycache__", "*.egg-info", ".pytest_cache", ".torch_home*")


def _offline_env() -> dict[str, str]:
    return dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The repo root copied to a temp folder: building in place would leave build/ and an
    egg-info in the checkout (beside the editable install) and race with a parallel build."""
    dst = tmp_path_factory.mktemp("src") / "roma_ros"
    shutil.copytree(REPO, dst, ignore=_SKIP_COPY)
    return dst


@pytest.fixture(scope="module")
def pip_prefix(source_copy, tmp_path_factory) -> Path:
    """`pip install --prefix` of the package, offline, the way a pip-only machine installs it."""
    prefix = tmp_path_factory.mktemp("prefix")
    # --ignore-installed: otherwise pip first uninstalls the editable roma_ros from this venv.
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "--ignore-installed",
           "--prefix", str(prefix), "."]
    proc = subprocess.run(cmd, cwd=source_copy, env=_offline_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return prefix


@pytest.fixture(scope="module")
def colcon_prefix(source_copy, tmp_path_factory) -> Path:
    """The install colcon's ament_python build performs (setup.py build + install, which reads
    setup.cfg; pip's wheel install ignores setup.cfg's script folder)."""
    work = tmp_path_factory.mktemp("colcon")
    prefix = work / "install"
    cmd = [sys.executable, "setup.py", "-q", "build", "--build-base", str(work / "build"),
           "install", "--prefix", str(prefix), "--record", str(work / "record.txt"),
           "--single-version-externally-managed"]
    proc = subprocess.run(cmd, cwd=source_copy, env=_offline_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return prefix


@pytest.mark.parametrize("install", ["pip_prefix", "colcon_prefix"])
def test_installed_share_and_ament_index(install, request):
    prefix = request.getfixturevalue(install)
    share = prefix / "share" / "roma_ros"
    for rel in SHARE_FILES:
        assert (share / rel).is_file(), f"{rel} not installed under {share}"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "roma_ros").is_file()
    # Installed copies are the repo's files, not stale ones.
    for rel in SHARE_FILES:
        assert (share / rel).read_bytes() == (REPO / rel).read_bytes(), rel


def test_share_directory_found_through_ament_prefix_path(pip_prefix):
    env = dict(os.environ, AMENT_PREFIX_PATH=str(pip_prefix))
    code = ("from ament_index_python.packages import get_package_share_directory as g; "
            "print(g('roma_ros'))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == pip_prefix / "share" / "roma_ros"


def _script_text(script: Path) -> str:
    text = script.read_text()
    assert text.startswith("#!"), f"{script} is not a script"
    return text


def test_match_node_executable_installed(pip_prefix, colcon_prefix):
    # colcon (setup.py install + setup.cfg): lib/roma_ros, where `ros2 run` and launch look.
    ros_script = colcon_prefix / "lib" / "roma_ros" / "match_node"
    assert ros_script.is_file(), f"match_node not in {ros_script.parent}"
    assert os.access(ros_script, os.X_OK)
    # setuptools writes a load_entry_point wrapper there; the entry point says what it runs.
    assert "match_node" in _script_text(ros_script)
    entry_points = list(colcon_prefix.glob("lib/python*/site-packages/roma_ros*/entry_points.txt"))
    assert len(entry_points) == 1, entry_points
    assert "match_node = roma_ros.node:main" in entry_points[0].read_text()
    # pip (wheel): console scripts land in bin/.
    pip_script = pip_prefix / "bin" / "match_node"
    assert pip_script.is_file() and "roma_ros.node" in _script_text(pip_script)


def test_setup_cfg_sends_scripts_where_ros2_run_looks():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["install"]["install_scripts"] == "$base/lib/roma_ros"
    assert cfg["develop"]["script_dir"] == "$base/lib/roma_ros"


def _launch_source_calls() -> list[ast.Call]:
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _kwargs(call: ast.Call) -> dict[str, object]:
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords
            if k.arg and isinstance(k.value, ast.Constant)}


def test_launch_file_starts_match_node():
    """Read without importing (launch is missing on pip-only machines): one Node of roma_ros's
    match_node named roma_matcher, and the documented arguments."""
    calls = _launch_source_calls()
    nodes = [_kwargs(c) for c in calls if getattr(c.func, "id", "") == "Node"]
    assert len(nodes) == 1
    assert nodes[0]["package"] == "roma_ros"
    assert nodes[0]["executable"] == "match_node"
    assert nodes[0]["name"] == "roma_matcher"
    setup_py = (REPO / "setup.py").read_text()
    assert '"match_node = roma_ros.node:main"' in setup_py
    text = LAUNCH_FILE.read_text()
    for arg in ("params_file", "image", "keyframes_dir", "model", "device", "namespace"):
        assert f'"{arg}"' in text, f"launch argument {arg} missing"


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


def test_launch_description_builds(pip_prefix, monkeypatch):
    if not _have_ros_launch():
        pytest.skip(NO_LAUNCH)
    from launch import LaunchContext, LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    # Our freshly installed share first, so the default params file is this checkout's.
    monkeypatch.setenv("AMENT_PREFIX_PATH", os.pathsep.join(
        p for p in (str(pip_prefix), os.environ.get("AMENT_PREFIX_PATH", "")) if p))
    ld = _load_launch_module().generate_launch_description()
    assert isinstance(ld, LaunchDescription)
    declared = {a.name: a for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert set(declared) == {"params_file", "image", "keyframes_dir", "model", "device", "namespace"}

    context = LaunchContext()
    context.launch_configurations["model"] = "classical"
    for action in declared.values():
        action.visit(context)  # fills in defaults for the arguments not given
    assert context.launch_configurations["params_file"] == str(
        pip_prefix / "share" / "roma_ros" / "config" / "match.yaml")
    assert context.launch_configurations["image"] == "/camera/image_raw"
    for name in ("keyframes_dir", "device", "namespace"):
        assert context.launch_configurations[name] == ""

    opaque = [a for a in ld.entities if isinstance(a, OpaqueFunction)]
    assert len(opaque) == 1
    nodes = opaque[0].execute(context)
    assert len(nodes) == 1
    node = nodes[0]
    assert node.node_package == "roma_ros"
    assert node.node_executable == "match_node"
