"""`make demo`: the real matcher node relocalizing photos under strong viewpoint change.

Runs on a machine without a ROS install, GPU or weights (the pip venv is enough):

1. builds a keyframe folder from real photos (scikit-image) with a ``keyframes.yaml`` that names
   each place and gives it a made-up pose in the ``map`` frame, plus query images that show each
   place from a strongly different viewpoint and two distractor photos of places never stored;
   and posed depth keyframes of a small 3D scene (synthetic_scene.py: textured planes rendered
   with exact depth) with queries whose true pose is known, so the table shows the metric pose
   error of ``~/pose``;
2. picks the best matcher whose weights are on this machine (RoMa, Tiny RoMa, else the classical
   SIFT baseline) and says which files are missing and where to put them;
3. starts the real node (``python -m roma_ros.ros.node``) on loopback-only DDS, publishes each query,
   waits for its ``~/matches`` answer (and ``~/pose``), saves ``~/debug_image`` and prints a table.

Exit status: 0 when every query got an answer, 1 when the node died or a query got none.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from roma_ros.core.imageio import save_rgb
from roma_ros.ros.rosenv import configure_local_dds, share_file
from roma_ros.store import save_depth
from roma_ros.demo.photo_pairs import make_pair

NODE_NAME = "roma_matcher"
IMAGE_TOPIC = "/roma_demo/image"
CAMERA_INFO_TOPIC = "/roma_demo/camera_info"
# Places stored as keyframes: (photo, seed of the strong query view). The keyframe itself is a
# mild view of the photo; the query a strong one (perspective, rotation, scale, exposure).
PLACES = (("astronaut", 20), ("coffee", 21), ("chelsea", 22), ("rocket", 24))
# Photos that are never stored: the node must answer "no match" ("camera" appears nowhere in the
# synthetic scene below, whose back wall is the brick photo).
DISTRACTORS = (("grass", 30), ("camera", 31))
# The 3D scene: its keyframes (with depth, intrinsics and true poses) and this many queries, one
# per keyframe station, 0.6-1.8 m and 7-30 deg from its keyframe. Small images keep it quick.
SCENE_QUERIES = 4
SCENE_SEED = 0
SCENE_SIZE = (240, 320)  # (height, width)
# A pose counts as good within these errors (the usual fine relocalization threshold).
GOOD_POSE = (0.05, 5.0)  # (metres, degrees)
KEYFRAME_STRENGTH = 0.3
QUERY_STRENGTH = 1.0
IMAGE_SIZE = (480, 640)  # (height, width)

# Per-model settings the demo passes on top of config/match.yaml. The classical matcher's
# looser thresholds are its model defaults in roma_ros/params.py, which the node applies itself.
MODEL_SETTINGS: dict[str, dict[str, object]] = {
    "classical": {},
    "tiny_roma_outdoor": {},
    "roma_outdoor": {},
}
# RoMa on a CPU: a coarse pass at 280 without upsampling is ~10 s a pair instead of ~130 s.
ROMA_CPU_SETTINGS: dict[str, object] = {"coarse_res": 280, "upsample_res": 0}
# Seconds to wait for one answer, by model and device kind (each query is matched to 9 keyframes).
DEFAULT_TIMEOUT = {"classical": 60.0, "tiny_roma_outdoor": 120.0, "roma_outdoor": 120.0}
ROMA_CPU_TIMEOUT = 600.0


# ------------------------------------------------------------------------------ data

@dataclass
class Query:
    name: str
    image: np.ndarray
    expected: str | None  # keyframe name, or None for a distractor
    true_pose: tuple | None = None  # camera optical frame in the map, where known (scene queries)


@dataclass
class DemoData:
    keyframes_dir: Path
    keyframe_names: list[str]  # index = keyframe_index
    queries: list[Query]
    scene_camera: object = None  # pose.CameraModel of the scene views (published as camera_info)


def keyframe_pose(index: int) -> dict[str, list[float]]:
    """Made-up poses: places 2 m apart on the map's x axis, the camera looking along +y."""
    half = float(np.sqrt(0.5))
    return {"position": [2.0 * index, 0.0, 0.0], "orientation": [0.0, 0.0, half, half]}


def build_demo_data(output: Path) -> DemoData:
    """Write ``output/keyframes`` (images + keyframes.yaml, recreated) and ``output/queries``."""
    import yaml

    keyframes_dir = output / "keyframes"
    queries_dir = output / "queries"
    for folder in (keyframes_dir, queries_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    entries, names, queries = [], [], []
    for index, (photo, query_seed) in enumerate(PLACES):
        keyframe = make_pair(photo, 10 + index, size=IMAGE_SIZE, strength=KEYFRAME_STRENGTH).candidate
        save_rgb(keyframes_dir / f"{photo}.png", keyframe)
        entries.append({"name": photo, "image": f"{photo}.png", "pose": keyframe_pose(index)})
        names.append(photo)
        view = make_pair(photo, query_seed, size=IMAGE_SIZE, strength=QUERY_STRENGTH).candidate
        queries.append(Query(f"query_{photo}", view, photo))
    for photo, seed in DISTRACTORS:
        view = make_pair(photo, seed, size=IMAGE_SIZE, strength=QUERY_STRENGTH).candidate
        queries.append(Query(f"distractor_{photo}", view, None))
    camera = scene_keyframes(keyframes_dir, entries, names, queries)
    for query in queries:
        save_rgb(queries_dir / f"{query.name}.png", query.image)

    text = ("# Written by roma_ros.demo. Order = keyframe_index. Photo places: made-up poses (map frame);\n"
            "# scene_*: true camera poses of the synthetic scene, with depth and intrinsics.\n"
            + yaml.safe_dump({"keyframes": entries}, sort_keys=False, default_flow_style=None))
    (keyframes_dir / "keyframes.yaml").write_text(text)
    return DemoData(keyframes_dir, names, queries, camera)


def scene_keyframes(keyframes_dir: Path, entries: list, names: list[str], queries: list[Query]):
    """Add the synthetic scene's keyframes (image, 16-bit depth in mm, intrinsics as CameraInfo
    gives them, true pose) to ``entries`` and its queries (with true poses) to ``queries``."""
    from roma_ros.demo.synthetic_scene import relocalization_set

    keyframes, scene_queries = relocalization_set(seed=SCENE_SEED, n_queries=SCENE_QUERIES, size=SCENE_SIZE)
    for view in keyframes:
        name = f"scene_{view.name}"
        save_rgb(keyframes_dir / f"{name}.png", view.rgb)
        save_depth(keyframes_dir / "depth" / f"{name}.png", view.depth)
        fx, fy, cx, cy = view.camera.to_ros()
        entries.append({"name": name, "image": f"{name}.png", "depth": f"depth/{name}.png",
                        "intrinsics": {"fx": fx, "fy": fy, "cx": cx, "cy": cy},
                        "pose": {"position": list(view.pose[0]), "orientation": list(view.pose[1])}})
        names.append(name)
    for view in scene_queries:
        queries.append(Query(f"scene_{view.name}", view.rgb, f"scene_{keyframes[view.keyframe].name}", view.pose))
    return keyframes[0].camera


# ------------------------------------------------------------------------------ model choice

@dataclass
class ModelChoice:
    model: str
    params: dict[str, object]
    timeout: float
    notes: list[str] = field(default_factory=list)


def resolve_device_kind(device: str) -> str:
    """'cpu' or 'cuda' for the device the node will use with ``device`` ('' = params file: auto)."""
    device = (device or "auto").strip().lower()
    if device.startswith("cuda"):
        return "cuda"
    if device == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def missing_checkpoints(model: str) -> list:
    """Checkpoints of ``model`` that are not in the torch hub cache."""
    from roma_ros.matching.weights import checkpoints_for

    return [c for c in checkpoints_for(model) if not c.cache_path.is_file()]


def choose_model(requested: str | None, device: str) -> ModelChoice:
    """The requested model, else the best one whose weights are cached, else 'classical'."""
    notes: list[str] = []
    if requested:
        model = requested
        if model != "classical":
            for ckpt in missing_checkpoints(model):
                notes.append(f"{ckpt.filename} is not in the torch hub cache ({ckpt.cache_path}); "
                             f"the node will try to download it from {ckpt.url}")
    else:
        model = "classical"
        for candidate in ("roma_outdoor", "tiny_roma_outdoor"):
            missing = missing_checkpoints(candidate)
            if not missing:
                model = candidate
                break
            notes.append(f"not using {candidate}: missing " + ", ".join(c.filename for c in missing))
            notes.extend(f"  put {c.cache_path} (download: {c.url})" for c in missing)
        if model == "classical":
            notes.append("falling back to the classical SIFT baseline (no weights needed); "
                         "place the files above and run the demo again to see RoMa")
    params = dict(MODEL_SETTINGS.get(model, {}))
    timeout = DEFAULT_TIMEOUT.get(model, 120.0)
    if model.startswith("roma_"):
        kind = resolve_device_kind(device)
        if kind == "cpu":
            params.update(ROMA_CPU_SETTINGS)
            timeout = ROMA_CPU_TIMEOUT
            notes.append("RoMa on the CPU: coarse_res 280, upsample_res 0 (a GPU runs the defaults)")
    return ModelChoice(model, params, timeout, notes)


# ------------------------------------------------------------------------------ results

@dataclass
class QueryResult:
    name: str
    expected: str | None
    answered: bool = False
    matched: str | None = None  # keyframe name; None: no match (or no answer)
    inliers: int = 0
    latency_ms: float | None = None
    debug_image: Path | None = None
    posed: bool = False  # the query's true pose is known: a ~/pose is expected
    position_error_m: float | None = None  # of the ~/pose received, against the true pose
    rotation_error_deg: float | None = None

    @property
    def correct(self) -> bool:
        return self.answered and self.matched == self.expected

    @property
    def pose_cell(self) -> str:
        if self.position_error_m is None:
            return "none" if self.posed else "-"
        return "yes" if (self.position_error_m, self.rotation_error_deg) <= GOOD_POSE else "off"


def format_table(results: list[QueryResult]) -> str:
    """One row per query, columns separated by at least two spaces (cells hold single spaces)."""
    header = ["query", "expected", "matched", "correct", "inliers", "latency_ms", "pose", "pos_err_m",
              "rot_err_deg"]
    rows = [header]
    for r in results:
        matched = (r.matched or "no match") if r.answered else "NO ANSWER"
        latency = f"{r.latency_ms:.0f}" if r.latency_ms is not None else "-"
        position = f"{r.position_error_m:.3f}" if r.position_error_m is not None else "-"
        rotation = f"{r.rotation_error_deg:.2f}" if r.rotation_error_deg is not None else "-"
        rows.append([r.name, r.expected or "none", matched, "yes" if r.correct else "no",
                     str(r.inliers), latency, r.pose_cell, position, rotation])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def summary_line(results: list[QueryResult]) -> str:
    correct = sum(r.correct for r in results)
    unanswered = sum(not r.answered for r in results)
    text = f"correct {correct}/{len(results)}"
    text += f" ({unanswered} without answer)" if unanswered else ""
    posed = [r for r in results if r.posed]
    if posed:
        good = sum(r.pose_cell == "yes" for r in posed)
        text += (f"; poses within {GOOD_POSE[0] * 100:.0f} cm and {GOOD_POSE[1]:.0f} deg of the truth: "
                 f"{good}/{len(posed)}")
    return text


# ------------------------------------------------------------------------------ the node

class NodeProcess:
    """The matcher node as a child process; its output goes to a log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.cmd, self.log_path = cmd, log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (rclpy shuts down cleanly), then SIGKILL after ``timeout`` s."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
            except KeyboardInterrupt:  # a second Ctrl-C: do not wait any longer
                self.proc.kill()
                self.proc.wait(5.0)
                raise
        self._log.close()
        return self.proc.returncode


def node_command(params_file: Path, keyframes_dir: Path, model: str, device: str,
                 extra: dict[str, object]) -> list[str]:
    params: dict[str, object] = {"keyframes_dir": str(keyframes_dir), "model": model,
                                 "image_qos": "reliable", "image_transport": "raw",
                                 "debug.publish_image": True,
                                 # The demo answers every query it publishes (a robot would rather
                                 # call ~/relocalize in the default on_demand mode), and its queries
                                 # jump between places, which a robot's frames never do: no jump guard.
                                 "mode": "continuous", "max_rate_hz": 0.0, "disagree.frames": 1}
    if device:
        params["device"] = device
    params.update(extra)
    cmd = [sys.executable, "-m", "roma_ros.ros.node", "--ros-args", "--params-file", str(params_file),
           "-r", f"image:={IMAGE_TOPIC}", "-r", f"camera_info:={CAMERA_INFO_TOPIC}"]
    for name, value in params.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        cmd += ["-p", f"{name}:={text}"]
    return cmd


class DemoFailure(RuntimeError):
    """The node died, never came up, or a query got no answer in time."""


class DemoClient:
    """rclpy side of the demo: publishes queries, collects answers and debug images."""

    def __init__(self, node_proc: NodeProcess, num_keyframes: int, camera=None) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        self.node_proc = node_proc
        self.num_keyframes = num_keyframes
        self.node = Node("roma_demo")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        ns = f"/{NODE_NAME}"
        self.topics = {"matches": f"{ns}/matches", "debug": f"{ns}/debug_image",
                       "keyframes": f"{ns}/keyframes", "pose": f"{ns}/pose"}
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.keyframes: PoseArray | None = None
        self.clouds: dict[tuple[int, int], tuple[PointCloud2, float]] = {}
        self.debug: dict[tuple[int, int], Image] = {}
        self.publisher = self.node.create_publisher(Image, IMAGE_TOPIC, reliable)
        self.camera = camera
        self.camera_info_publisher = self.node.create_publisher(CameraInfo, CAMERA_INFO_TOPIC, reliable)
        self.poses: dict[tuple[int, int], PoseWithCovarianceStamped] = {}
        self.node.create_subscription(PoseWithCovarianceStamped, self.topics["pose"],
                                      lambda msg: self.poses.__setitem__(self._key(msg.header.stamp), msg), reliable)
        self.intrinsics_source = ""  # where the node takes query intrinsics from (its diagnostics)
        self.node.create_subscription(PoseArray, self.topics["keyframes"], self._on_keyframes, latched)
        self.node.create_subscription(PointCloud2, self.topics["matches"], self._on_cloud, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable)
        self.state = ""  # the node's state as its diagnostics report it
        self.error = ""  # set when the node reports an ERROR (e.g. weights missing)
        self._debug_sub = None

    @staticmethod
    def _key(stamp) -> tuple[int, int]:
        return int(stamp.sec), int(stamp.nanosec)

    def _on_keyframes(self, msg) -> None:
        self.keyframes = msg

    def _on_cloud(self, msg) -> None:
        self.clouds[self._key(msg.header.stamp)] = (msg, time.perf_counter())

    def _on_diagnostics(self, msg) -> None:
        from diagnostic_msgs.msg import DiagnosticStatus

        for status in msg.status:
            if NODE_NAME not in status.name:
                continue
            if status.message != self.state:
                self.state = status.message
                print(f"[demo]   node state: {self.state}", flush=True)
            self.intrinsics_source = next((kv.value for kv in status.values if kv.key == "query_intrinsics"), "")
            if status.level == DiagnosticStatus.ERROR:
                values = {kv.key: kv.value for kv in status.values}
                self.error = values.get("last_error") or status.message

    def _on_debug(self, msg) -> None:
        self.debug[self._key(msg.header.stamp)] = msg

    def _subscribe_debug(self) -> bool:
        """Subscribe to ~/debug_image with the publisher's reliability (a reliable subscription
        would not match a best-effort publisher); False while the publisher is not yet seen."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        infos = self.node.get_publishers_info_by_topic(self.topics["debug"])
        if not infos:
            return False
        reliability = infos[0].qos_profile.reliability
        if reliability not in (ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT):
            reliability = ReliabilityPolicy.RELIABLE
        qos = QoSProfile(depth=10, reliability=reliability)
        self._debug_sub = self.node.create_subscription(Image, self.topics["debug"],
                                                        self._on_debug, qos)
        return True

    def spin_until(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if not self.node_proc.alive():
                raise DemoFailure(f"the node exited (status {self.node_proc.proc.returncode}) "
                                  f"while waiting for {what}")
            if self.error:
                raise DemoFailure(f"the node reports an error while waiting for {what}: {self.error}")
            if time.monotonic() > deadline:
                raise DemoFailure(f"timed out after {timeout:.0f} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.1)

    def publish_camera_info(self) -> None:
        """The scene camera's CameraInfo: the node uses the latest one for every query (photo
        queries, of another size, then get no pose, as they should)."""
        from sensor_msgs.msg import CameraInfo

        fx, fy, cx, cy = self.camera.to_ros()
        info = CameraInfo(width=SCENE_SIZE[1], height=SCENE_SIZE[0], distortion_model="plumb_bob", d=[0.0] * 5,
                          k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
        info.header.frame_id = "camera_optical"
        self.camera_info_publisher.publish(info)

    def wait_a_little(self, done, timeout: float, what: str) -> None:
        """``spin_until`` for an optional message: a timeout is not a failure, a dead node is."""
        try:
            self.spin_until(done, timeout, what)
        except DemoFailure:
            if not self.node_proc.alive():
                raise

    def wait_ready(self, timeout: float) -> None:
        """Up means: keyframes published (transient local), every endpoint we use matched and the
        node holds the scene's camera_info."""
        def ready() -> bool:
            if self._debug_sub is None:
                self._subscribe_debug()
            if self.camera is not None and self.camera_info_publisher.get_subscription_count() > 0:
                self.publish_camera_info()
            return ((self.camera is None or self.intrinsics_source == "camera_info")
                    and self.keyframes is not None
                    and len(self.keyframes.poses) == self.num_keyframes
                    and self._debug_sub is not None
                    and self.publisher.get_subscription_count() > 0
                    and self.node.count_publishers(self.topics["matches"]) > 0)

        self.spin_until(ready, timeout, f"the node to come up ({self.num_keyframes} keyframes on "
                                        f"{self.topics['keyframes']}, {IMAGE_TOPIC} subscribed)")
        # Discovery of an endpoint can precede its matching by a moment.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.1)

    def ask(self, query: Query, index: int, keyframe_names: list[str], timeout: float,
            debug_dir: Path) -> QueryResult:
        from std_msgs.msg import Header

        from roma_ros.ros.conversions import image_msg_to_rgb, pointcloud2_to_matches, rgb_to_image_msg

        result = QueryResult(query.name, query.expected)
        stamp = self.node.get_clock().now().to_msg()
        stamp.nanosec = (stamp.nanosec // 1000) * 1000 + index  # unique even within a microsecond
        key = self._key(stamp)
        msg = rgb_to_image_msg(query.image, Header(stamp=stamp, frame_id="camera"))
        sent = time.perf_counter()
        self.publisher.publish(msg)
        try:
            self.spin_until(lambda: key in self.clouds, timeout, f"the answer to {query.name}")
        except DemoFailure as exc:
            if not self.node_proc.alive():
                raise
            print(f"[demo]   {exc}", flush=True)
            return result
        cloud, received = self.clouds.pop(key)
        result.answered = True
        result.posed = query.true_pose is not None
        if result.posed and cloud.width:  # ~/pose goes out just before the cloud, on its own topic
            self.wait_a_little(lambda: key in self.poses, 1.0, f"the pose of {query.name}")
        pose = self.poses.pop(key, None)
        if pose is not None and query.true_pose is not None:
            result.position_error_m, result.rotation_error_deg = published_pose_errors(pose, query.true_pose)
        result.latency_ms = (received - sent) * 1000.0
        fields = pointcloud2_to_matches(cloud)
        result.inliers = int(cloud.width * cloud.height)
        if result.inliers:
            indices = np.unique(fields["keyframe_index"])
            best = int(indices[0])
            result.matched = keyframe_names[best] if best < len(keyframe_names) else f"#{best}"
        # The debug image may come just after the cloud.
        self.wait_a_little(lambda: key in self.debug, 5.0, f"the debug image of {query.name}")
        image = self.debug.pop(key, None)
        if image is not None:
            result.debug_image = save_rgb(debug_dir / f"{query.name}.png", image_msg_to_rgb(image))
        return result

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def published_pose_errors(msg, true_pose) -> tuple[float, float]:
    """(position error m, rotation error deg) of a PoseWithCovarianceStamped against a pose tuple."""
    from roma_ros.core.transforms import pose_errors

    p, o = msg.pose.pose.position, msg.pose.pose.orientation
    return pose_errors(((p.x, p.y, p.z), (o.x, o.y, o.z, o.w)), true_pose)


# ------------------------------------------------------------------------------ main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="roma-demo",
        description="Relocalize photos under strong viewpoint change with the real roma_ros node.")
    p.add_argument("--model", choices=("roma_outdoor", "tiny_roma_outdoor", "classical"),
                   help="matcher to use (default: the best one whose weights are cached)")
    p.add_argument("--device", default="", help="auto, cpu, cuda or cuda:N (default: params file)")
    p.add_argument("--output", default="demo_output", help="folder for keyframes, queries, debug "
                   "images and the node log (default: demo_output)")
    p.add_argument("--timeout", type=float, help="seconds to wait for each answer "
                   "(default: 60 classical, 120 Tiny RoMa / RoMa on GPU, 600 RoMa on CPU)")
    p.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID for the demo's node and client "
                   "(default: a private one per run; DDS stays on this machine either way)")
    return p


def run(args: argparse.Namespace) -> int:
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    debug_dir = output / "debug"
    shutil.rmtree(debug_dir, ignore_errors=True)
    debug_dir.mkdir(parents=True)

    print(f"[demo] building keyframes and queries from scikit-image photos in {output}", flush=True)
    data = build_demo_data(output)
    choice = choose_model(args.model, args.device)
    timeout = args.timeout if args.timeout else choice.timeout
    print(f"[demo] matcher: {choice.model}" + (f" on {args.device}" if args.device else ""), flush=True)
    for note in choice.notes:
        print(f"[demo]   {note}", flush=True)

    env = dict(os.environ)
    env.update(configure_local_dds(domain_id=args.domain_id))
    params_file = share_file("config", "match.yaml")
    cmd = node_command(params_file, data.keyframes_dir, choice.model, args.device, choice.params)
    log_path = output / "node.log"
    print(f"[demo] starting the node (log: {log_path}):\n       {' '.join(cmd)}", flush=True)

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    node_proc = NodeProcess(cmd, env, log_path)
    results: list[QueryResult] = []
    client = None
    # Python's own SIGINT handling (KeyboardInterrupt) stays, so Ctrl-C reaches the finally below.
    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    try:
        client = DemoClient(node_proc, len(data.keyframe_names), data.scene_camera)
        startup = max(180.0, 2 * timeout)
        client.wait_ready(startup)
        print(f"[demo] node up with {len(data.keyframe_names)} keyframes: "
              f"{', '.join(data.keyframe_names)}", flush=True)
        for index, query in enumerate(data.queries):
            results.append(client.ask(query, index, data.keyframe_names, timeout, debug_dir))
            r = results[-1]
            print(f"[demo]   {query.name}: "
                  + (f"{r.matched or 'no match'} ({r.inliers} inliers)" if r.answered else "no answer"),
                  flush=True)
    except DemoFailure as exc:
        print(f"[demo] FAILED: {exc}\n[demo] last lines of the node log:\n{node_proc.log_tail()}",
              flush=True)
        return 1
    finally:
        if client is not None:
            client.close()
        rclpy.try_shutdown()
        status = node_proc.stop()
        if results:
            print()
            print(format_table(results))
            print(summary_line(results))
            saved = sum(r.debug_image is not None for r in results)
            print(f"debug images ({saved}/{len(results)}): {debug_dir}")
        print(f"[demo] node stopped (exit status {status})", flush=True)

    return 0 if all(r.answered for r in results) and len(results) == len(data.queries) else 1


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (CI, a killed make) unwinds like Ctrl-C, so the node is always stopped.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("[demo] interrupted; node stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
