"""The package as installed: a plain (non-editable) pip install into a prefix, and colcon builds
(plain and --symlink-install) into a workspace, each checked the way `ros2 run` and
`ros2 launch` find things: the ament index, get_package_prefix + lib/roma_ros/<executable>, and
the share files; then the installed match_node is started from there."""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from rosutil import Probe, Spinner, stop_process, wait_for

REPO = Path(__file__).resolve().parent.parent
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
SITE_PACKAGES = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _offline_env() -> dict[str, str]:
    return dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")


def wrappers() -> list[str]:
    """The programs `ros2 run roma_ros` offers: one wrapper in libexec/ per console script."""
    return sorted(p.name for p in (REPO / "libexec").iterdir())


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The repo root copied to a temp folder: building in place would leave build/ and an
    egg-info in the checkout (beside the editable install) and race with a parallel build."""
    dst = tmp_path_factory.mktemp("src") / "roma_ros"
    shutil.copytree(REPO, dst, ignore=_SKIP_COPY, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def pip_prefix(source_copy, tmp_path_factory) -> Path:
    """`pip install --prefix` of the package, non-editable and offline, as a pip-only user
    installs it (into a venv the prefix is the venv)."""
    prefix = tmp_path_factory.mktemp("prefix")
    # --ignore-installed: otherwise pip first uninstalls the editable roma_ros from this venv.
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "--ignore-installed",
          "--prefix", str(prefix), "."], cwd=source_copy, env=_offline_env())
    return prefix


def _colcon() -> str:
    colcon = Path(sys.executable).with_name("colcon")
    found = str(colcon) if colcon.exists() else shutil.which("colcon")
    assert found, "colcon not found: install requirements/dev.txt (colcon-core, colcon-ros)"
    return found


@pytest.fixture(scope="module", params=["plain", "symlink"])
def colcon_ws(request, source_copy, tmp_path_factory) -> Path:
    """`colcon build --packages-select roma_ros` (plain or --symlink-install) in a workspace
    whose src/ holds a copy of this checkout; returns the workspace."""
    ws = tmp_path_factory.mktemp(f"ws_{request.param}")
    shutil.copytree(source_copy, ws / "src" / "roma_ros", symlinks=True)
    cmd = [_colcon(), "--log-base", str(ws / "log"), "build", "--base-paths", str(ws / "src"),
           "--build-base", str(ws / "build"), "--install-base", str(ws / "install"),
           "--packages-select", "roma_ros"]
    if request.param == "symlink":
        cmd.append("--symlink-install")
    # COLCON_HOME: no user defaults or mixins from this machine's ~/.colcon.
    _run(cmd, cwd=ws, env=dict(_offline_env(), COLCON_HOME=str(ws / ".colcon")))
    return ws


def sourced_env(setup_script: Path) -> dict[str, str]:
    """The environment after `. install/local_setup.sh`, as a user's shell has it."""
    out = subprocess.run(["sh", "-c", '. "$1" && env -0', "sh", str(setup_script)], capture_output=True,
                         timeout=60, env=dict(os.environ), check=True).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def ros2_run_executable(env: dict[str, str], executable: str) -> Path:
    """What `ros2 run roma_ros <executable>` executes: get_package_prefix + lib/roma_ros/<name>,
    which must be a directory holding an executable file of that name."""
    from ament_index_python.packages import get_package_prefix

    with mock.patch.dict(os.environ, {"AMENT_PREFIX_PATH": env["AMENT_PREFIX_PATH"]}):
        libexec = Path(get_package_prefix("roma_ros")) / "lib" / "roma_ros"
    assert libexec.is_dir(), f"libexec directory '{libexec}' does not exist"
    path = libexec / executable
    assert path.is_file() and os.access(path, os.X_OK), f"{path} is not an executable file"
    return path


def imported_from(env: dict[str, str], cwd: Path) -> Path:
    """Where `import roma_ros` resolves for programs started with ``env`` (``cwd`` away from the
    checkout: `python -c` imports from its working directory first)."""
    out = subprocess.run([sys.executable, "-c", "import roma_ros; print(roma_ros.__file__)"], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return Path(out.strip()).parent


def check_layout(prefix: Path, site_packages: Path | None = None) -> None:
    """The share files, the ament marker, the wrappers and (where given) every layer package."""
    if site_packages is not None:
        installed = {p.parent.relative_to(site_packages).as_posix() for p in (site_packages / "roma_ros").rglob("__init__.py")}
        source = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "roma_ros").rglob("__init__.py")}
        assert installed == source, f"packages not installed: {sorted(source - installed)}"
    share = prefix / "share" / "roma_ros"
    for rel in SHARE_FILES:
        assert (share / rel).is_file(), f"{rel} not installed under {share}"
        assert (share / rel).read_bytes() == (REPO / rel).read_bytes(), f"{rel} differs from the checkout"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "roma_ros").is_file()
    for name in wrappers():
        for folder in ("lib/roma_ros", "bin"):
            path = prefix / folder / name
            assert path.is_file() and os.access(path, os.X_OK), f"{name} not installed in {prefix / folder}"


def bad_start(executable: Path, env: dict[str, str]) -> str:
    """Start the installed node with a bad model: the fastest run of the installed code that
    shows it works (its own validation answers)."""
    proc = subprocess.run([str(executable), "--ros-args", "-p", "model:=nonexistent"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


# ------------------------------------------------------------------ pip
def test_every_console_script_has_a_ros2_run_wrapper(pip_prefix):
    from importlib.metadata import distributions

    (dist,) = [d for d in distributions(path=[str(pip_prefix / SITE_PACKAGES)]) if d.name == "roma_ros"]
    assert sorted(ep.name for ep in dist.entry_points if ep.group == "console_scripts") == wrappers()
    for name in wrappers():
        link = REPO / "libexec" / name
        assert name == "match_node" or os.readlink(link) == "match_node", f"{link} is not a link to match_node"


def test_pip_install_is_found_like_ros2_run_finds_it(pip_prefix):
    check_layout(pip_prefix, pip_prefix / SITE_PACKAGES)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(pip_prefix), PYTHONPATH=str(pip_prefix / SITE_PACKAGES))
    assert imported_from(env, pip_prefix) == pip_prefix / SITE_PACKAGES / "roma_ros"
    node = ros2_run_executable(env, "match_node")
    assert node == pip_prefix / "lib" / "roma_ros" / "match_node"
    assert "model='nonexistent' is not allowed" in bad_start(node, env)
    # Still on PATH for pip users: bin/ holds the console scripts, with this Python.
    assert (pip_prefix / "bin" / "match_node").read_text().startswith(f"#!{sys.executable}")
    help_text = _run([str(ros2_run_executable(env, "roma-keyframes")), "--help"], cwd=pip_prefix, env=env,
                     timeout=120)
    assert "usage: roma-keyframes" in help_text


def test_share_directory_found_through_ament_prefix_path(pip_prefix):
    env = dict(os.environ, AMENT_PREFIX_PATH=str(pip_prefix))
    code = ("from ament_index_python.packages import get_package_share_directory as g; "
            "print(g('roma_ros'))")
    out = _run([sys.executable, "-c", code], cwd=pip_prefix, env=env, timeout=60)
    assert Path(out.strip()) == pip_prefix / "share" / "roma_ros"


def test_setup_cfg_leaves_scripts_in_bin():
    """A script folder in setup.cfg would send colcon's scripts to lib/roma_ros, over the
    wrappers (install_data runs after install_scripts); pip ignores it anyway."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert not any(cfg.has_option(section, option) for section in ("install", "develop")
                   for option in ("install_scripts", "install-scripts", "script_dir", "script-dir"))


# ------------------------------------------------------------------ colcon
def test_colcon_build_runs_from_install(ros, colcon_ws, request):
    install = colcon_ws / "install"
    prefix = install / "roma_ros"
    check_layout(prefix)
    env = sourced_env(install / "local_setup.sh")
    assert str(prefix / "bin") in env["PATH"].split(os.pathsep)
    code = imported_from(env, colcon_ws)
    if "symlink" in request.node.callspec.id:
        assert code == colcon_ws / "build" / "roma_ros" / "roma_ros"
        # --symlink-install: installed files lead back to the source tree.
        assert (prefix / "share/roma_ros/config/match.yaml").resolve() == \
            colcon_ws / "src/roma_ros/config/match.yaml"
    else:
        assert code == prefix / SITE_PACKAGES / "roma_ros"
    node = ros2_run_executable(env, "match_node")
    assert node == prefix / "lib" / "roma_ros" / "match_node"

    name = f"roma_colcon_{request.node.callspec.id}"
    keyframes = colcon_ws / "keyframes"
    keyframes.mkdir()
    proc = subprocess.Popen([str(node), "--ros-args", "-r", f"__node:={name}", "-p", "model:=classical",
                             "-p", f"keyframes_dir:={keyframes}", "-p", "diagnostics_period:=0.2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    probe = Probe(target=f"/{name}")
    spinner = Spinner(probe)
    try:
        wait_for(lambda: probe.latest_diagnostics(name).get("state") == "waiting for keyframes", 60,
                 f"diagnostics of the installed node {name}")
        assert probe.latest_diagnostics(name)["keyframes_dir"] == str(keyframes)
    finally:
        spinner.shut_down()
        code = stop_process(proc)
    output = proc.stdout.read()
    assert code == 0 and "Traceback" not in output, output


# ------------------------------------------------------------------ package.xml
# Python modules the package imports, by the rosdep key that provides them; None: from pip
# (docs/install.md) or the standard library.
PYTHON_KEYS = {"cv2": "python3-opencv", "numpy": "python3-numpy", "yaml": "python3-yaml", "PIL": "python3-pil",
               "tqdm": "python3-tqdm", "matplotlib": "python3-matplotlib", "torch": None, "torchvision": None,
               "kornia": None, "einops": None, "romatch": None, "loguru": None, "skimage": None,
               "rosbags": None, "faiss": None}
# The launch file and the `ros2 launch`, `ros2 run`, `ros2 pkg`, `ros2 param` that README and docs/install.md show.
COMMAND_KEYS = {"launch", "launch_ros", "ros2launch", "ros2run", "ros2pkg", "ros2param"}


def _imported_modules(folder: Path) -> set[str]:
    import ast

    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_package_xml_declares_what_the_code_and_readme_need():
    from catkin_pkg.package import parse_package

    package = parse_package(str(REPO / "package.xml"))
    declared = {d.name for d in package.exec_depends}
    imported = _imported_modules(REPO / "roma_ros") - set(sys.stdlib_module_names) - {"roma_ros"}
    ros = {name for name in imported if name not in PYTHON_KEYS}
    assert ros <= {"rclpy", "ament_index_python"} | {n for n in ros if n.endswith(("_msgs", "_srvs", "_interfaces"))}
    needed = ros | {PYTHON_KEYS[name] for name in imported if PYTHON_KEYS.get(name)} | COMMAND_KEYS
    if any("rclpy.lifecycle" in p.read_text() for p in (REPO / "roma_ros").rglob("*.py")):
        needed.add("lifecycle_msgs")  # rclpy.lifecycle's services and transitions
    assert declared == needed
    assert "cv_bridge" not in declared  # docs/install.md, "Why no cv_bridge"
    shown = (REPO / "README.md").read_text() + (REPO / "docs" / "install.md").read_text()
    for command in ("ros2 launch", "ros2 run", "ros2 pkg", "ros2 param"):
        assert command in shown
    assert {d.name for d in package.test_depends} == {"python3-pytest", "python3-skimage", "rosgraph_msgs"}
