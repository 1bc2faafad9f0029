"""The on-disk keyframe store: a folder of images plus an optional ``keyframes.yaml``.

``keyframes.yaml`` gives each keyframe a name and optionally a pose in the map
frame, camera intrinsics and a depth map registered to the image (depth.py); images
without an entry are keyframes too, named by their file stem. Order (the
``keyframe_index`` users see) is the YAML order, then the remaining image files
sorted by name. Every write goes through a temp file and
a rename, so a crash never leaves a half-written image or index.

Hidden sub-folders belong to the tools: ``.cache/`` (cache.py), ``.trash/``
(images of a removal in progress) and ``.unreadable/`` (images ``check --repair``
moved aside). Depth maps written by ``add`` go to ``depth/``, out of the way of the
image scan. ``roma-keyframes`` (roma_ros/keyframes_cli.py) is the command line for all this.

Nothing is ever written outside the folder: an index entry may name an image elsewhere
(it is read, never written next to), cache files are named by a hash of the image's
resolved path, and a ``.cache``, ``.trash`` or ``depth`` that is a symlink or resolves
outside the folder is refused (``confined_subdir``).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from roma_ros.core.imageio import ImageFileError, fsync_dir, load_rgb, replace_durably, save_bytes, save_rgb
from roma_ros.core.camera import DISTORTION_LENGTHS
from roma_ros.store.depth import DepthFileError, check_registered, check_scale, load_depth, save_depth, to_metres

INDEX_FILE = "keyframes.yaml"
DEFAULT_DIR = "~/.ros/roma_ros/keyframes"  # the node's keyframes_dir when its parameter is empty
CACHE_DIR = ".cache"  # cache.py keeps its files here
TRASH_DIR = ".trash"
DEPTH_DIR = "depth"  # where ``add`` writes depth maps (a sub-folder: never taken for keyframe images)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
Pose = tuple[tuple[float, float, float], tuple[float, float, float, float]]
INTRINSICS_KEYS = ("fx", "fy", "cx", "cy")
ENTRY_KEYS = {"name", "image", "pose", "intrinsics", "added", "depth", "depth_scale"}


@dataclass
class Keyframe:
    name: str
    image_file: str  # relative to the store folder
    image: np.ndarray  # RGB uint8
    pose: Pose | None = None
    # fx, fy, cx, cy (+ optional distortion), OpenCV/ROS convention: pixel centres at integers.
    intrinsics: dict[str, Any] | None = None
    added: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Depth registered to ``image``: float32 metres, NaN = unknown. Kept decoded in memory
    # (1.2 MB at 640x480, less than the keyframe's RoMa features) so a pose costs no file read.
    depth: np.ndarray | None = None
    depth_file: str | None = None  # relative to the store folder, as in keyframes.yaml
    depth_scale: float | None = None  # metres per stored unit; None = the file type's default

    @property
    def posable(self) -> bool:
        """Has everything a metric query pose needs from the keyframe side."""
        return self.depth is not None and self.intrinsics is not None and self.pose is not None

    def to_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "image": self.image_file}
        if self.pose is not None:
            entry["pose"] = {"position": list(self.pose[0]), "orientation": list(self.pose[1])}
        if self.intrinsics:
            entry["intrinsics"] = dict(self.intrinsics)
        if self.depth_file:
            entry["depth"] = self.depth_file
            if self.depth_scale is not None:
                entry["depth_scale"] = self.depth_scale
        if self.added:
            entry["added"] = self.added
        return {**self.extra, **entry}


class UnknownKeyframe(KeyError):
    """No keyframe has the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class RemovedKeyframe:
    name: str
    image_file: str
    entry: dict[str, Any] | None  # its keyframes.yaml entry; None for an image without one
    deleted: list[Path]  # the image (unless still used elsewhere) and its feature-cache files


class UnsafeFolderError(OSError):
    """A tool folder (.cache, .trash) is a symlink or lies outside keyframes_dir."""


def confined_subdir(directory: Path, name: str) -> Path:
    """``directory/name`` for files the tools write; refused (UnsafeFolderError) when it is a
    symlink or resolves outside ``directory``, so a planted link cannot redirect writes."""
    folder = Path(directory) / name
    if folder.is_symlink():
        raise UnsafeFolderError(f"'{folder}' is a symlink; roma_ros writes only inside the keyframe folder: "
                                "replace the link by a real folder (or delete it)")
    if folder.exists() and folder.resolve().parent != Path(directory).resolve():
        raise UnsafeFolderError(f"'{folder}' resolves to '{folder.resolve()}', outside the keyframe folder: "
                                "delete it")
    return folder


def cache_file_name(directory: Path, image_file: str) -> str:
    """Feature-cache file name of ``image_file``: its sanitised file name plus a hash of its
    resolved path (relative to the folder when inside it, so moving the folder keeps the
    cache). The index's ``image:`` value never becomes a path under ``.cache/``."""
    root = Path(directory).resolve()
    resolved = (root / image_file).resolve()
    ident = resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(image_file).name)[:64].strip("._") or "image"
    return f"{stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.pt"


def entry_name(entry: dict[str, Any]) -> str:
    """The name ``load`` gives an index entry."""
    return str(entry.get("name") or Path(str(entry["image"])).stem)


def _parse_pose(raw: Any, where: str) -> Pose | None:
    if raw is None:
        return None
    try:
        position = tuple(float(v) for v in raw["position"])
        orientation = tuple(float(v) for v in raw.get("orientation", (0, 0, 0, 1)))
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"{where}: pose needs position [x, y, z] and orientation [qx, qy, qz, qw] ({exc})") from None
    if len(position) != 3 or len(orientation) != 4 or not np.all(np.isfinite(position + orientation)):
        raise ValueError(f"{where}: pose needs 3 finite position and 4 finite orientation values")
    return position, orientation  # type: ignore[return-value]


def parse_intrinsics(raw: Any, where: str) -> dict[str, Any] | None:
    """``{fx, fy, cx, cy}`` (+ optional ``distortion``: OpenCV's coefficients, 4, 5, 8, 12 or 14)
    as plain floats; ValueError names what is wrong."""
    if raw is None:
        return None
    try:
        values = {key: float(raw[key]) for key in INTRINSICS_KEYS}
        distortion = [float(v) for v in raw.get("distortion") or []]
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"{where}: intrinsics need fx, fy, cx, cy numbers ({exc!r})") from None
    if not all(np.isfinite(list(values.values()) + distortion)):
        raise ValueError(f"{where}: intrinsics must be finite")
    if values["fx"] <= 0 or values["fy"] <= 0:
        raise ValueError(f"{where}: focal lengths fx={values['fx']}, fy={values['fy']} must be > 0")
    if len(distortion) not in DISTORTION_LENGTHS:
        raise ValueError(f"{where}: distortion needs 4, 5, 8, 12 or 14 coefficients, got {len(distortion)}")
    return values | ({"distortion": distortion} if distortion else {})


def parse_depth_scale(raw: Any, where: str) -> float | None:
    if raw is None:
        return None
    try:
        scale = float(raw)
        check_scale(scale)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    return scale


def read_entry_depth(directory: Path, entry: dict[str, Any], image_shape: tuple[int, ...],
                     where: str) -> np.ndarray | None:
    """The entry's depth map in metres (None without ``depth``); DepthFileError / ValueError
    say what is wrong, e.g. a size other than the image's."""
    if entry.get("depth") is None:
        return None
    scale = parse_depth_scale(entry.get("depth_scale"), where)
    path = directory / str(entry["depth"])
    depth = load_depth(path, scale)
    check_registered(depth.shape, image_shape, f"depth file '{path}'", image="its image")
    return depth


def indexed_files(entries: list[Any]) -> set[str]:
    """Files the index names (images and depth maps): never taken for unindexed keyframe images."""
    files = set()
    for entry in entries:
        if isinstance(entry, dict):
            files.update(str(entry[key]) for key in ("image", "depth", "invalid_depth")
                         if isinstance(entry.get(key), (str, int, float)))
    return files


class KeyframeStore:
    """Reads and appends to a keyframe folder; problems are collected as warnings."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        self.warnings: list[str] = []
        self._index_unreadable = False

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX_FILE

    def _read_index(self) -> list[dict[str, Any]]:
        self._index_unreadable = False
        if self.index_path.exists() and not self.index_path.is_file():
            self.warnings.append(f"{self.index_path} is not a file (a folder?): rename or delete it; using the "
                                 "image files alone until then")
            return []
        if not self.index_path.is_file():
            return []
        try:
            data = yaml.safe_load(self.index_path.read_text()) or {}
            entries = data.get("keyframes", []) if isinstance(data, dict) else None
            if not isinstance(entries, list):
                raise ValueError("top level must be a mapping with a 'keyframes' list")
        except (yaml.YAMLError, ValueError, OSError) as exc:
            self._index_unreadable = True
            self.warnings.append(
                f"{self.index_path} is unreadable ({exc}); using the image files alone. Fix or delete it."
            )
            return []
        return entries

    def load(self) -> list[Keyframe]:
        """All readable keyframes in index order; unreadable ones are skipped with a warning."""
        self.warnings = []
        if self.directory.exists() and not self.directory.is_dir():
            self.warnings.append(f"keyframes_dir '{self.directory}' is a file, not a folder: no keyframes. "
                                 "Set keyframes_dir to a folder.")
            return []
        if not self.directory.is_dir():
            self.warnings.append(
                f"keyframes_dir '{self.directory}' does not exist: no keyframes yet. "
                "Add images there and call ~/reload_keyframes, or call ~/add_keyframe."
            )
            return []
        keyframes: list[Keyframe] = []
        entries = self._read_index()
        for number, entry in enumerate(entries):
            where = f"{self.index_path} entry {number}"
            if not isinstance(entry, dict) or "image" not in entry:
                self.warnings.append(f"{where}: needs at least 'image'; skipped")
                continue
            image_file = str(entry["image"])
            try:
                pose = _parse_pose(entry.get("pose"), where)
                image = load_rgb(self.directory / image_file)
            except (ValueError, ImageFileError) as exc:
                self.warnings.append(f"keyframe '{entry.get('name', image_file)}' skipped: {exc}")
                continue
            keyframe = Keyframe(
                name=str(entry.get("name") or Path(image_file).stem), image_file=image_file, image=image,
                pose=pose, added=entry.get("added"),
                extra={k: v for k, v in entry.items() if k not in ENTRY_KEYS},
            )
            self._load_camera(keyframe, entry, where)
            keyframes.append(keyframe)
        for path in self.unindexed_images(indexed_files(entries)):
            try:
                keyframes.append(Keyframe(name=path.stem, image_file=path.name, image=load_rgb(path)))
            except ImageFileError as exc:
                self.warnings.append(f"keyframe image skipped: {exc}")
        return keyframes

    def _load_camera(self, keyframe: Keyframe, entry: dict[str, Any], where: str) -> None:
        """Intrinsics and depth of an entry; a bad one costs the keyframe its pose ability
        (with a warning naming the file), not its place in the store."""
        name = f"keyframe '{keyframe.name}'"
        try:
            keyframe.intrinsics = parse_intrinsics(entry.get("intrinsics"), where)
        except ValueError as exc:
            self.warnings.append(f"{name} has no intrinsics: {exc}")
        keyframe.extra.update({k: entry[k] for k in ("depth", "depth_scale") if k in entry})
        try:
            keyframe.depth = read_entry_depth(self.directory, entry, keyframe.image.shape, where)
        except (DepthFileError, ValueError) as exc:
            self.warnings.append(f"{name} has no depth: {exc}")
            return
        if keyframe.depth is not None:
            keyframe.depth_file = str(entry["depth"])
            keyframe.depth_scale = parse_depth_scale(entry.get("depth_scale"), where)
            del keyframe.extra["depth"]
            keyframe.extra.pop("depth_scale", None)

    def unindexed_images(self, indexed: set[str]) -> list[Path]:
        """Image files of the folder that no index entry names, sorted (their load order)."""
        return [path for path in sorted(self.directory.iterdir())
                if path.suffix.lower() in IMAGE_SUFFIXES and path.name not in indexed
                and not path.name.startswith(".")]

    def write_index(self, entries: list[Any]) -> None:
        text = yaml.safe_dump({"keyframes": entries}, sort_keys=False)
        save_bytes(self.index_path, text.encode())

    def backup_unreadable_index(self) -> Path:
        """Move an unreadable keyframes.yaml aside (for the user to repair) before writing a new one."""
        now = dt.datetime.now(dt.timezone.utc)
        backup = self.index_path.with_name(f"{INDEX_FILE}.unreadable-{now:%Y%m%d%H%M%S}")
        replace_durably(self.index_path, backup)
        self._index_unreadable = False
        return backup

    def own_file(self, image_file: str) -> Path | None:
        """``image_file`` as a path inside the store folder; None when it points outside."""
        path = self.directory / image_file
        root, parent = self.directory.resolve(), path.parent.resolve()
        return path if parent == root or root in parent.parents else None

    def cache_files(self, image_file: str) -> list[Path]:
        """Feature-cache files of ``image_file``, one per cache key (model, resolution...);
        none when ``.cache`` is not a folder of its own (never follows a link out)."""
        try:
            cache = confined_subdir(self.directory, CACHE_DIR)
        except UnsafeFolderError:
            return []
        folders = sorted(p for p in cache.iterdir() if p.is_dir() and not p.is_symlink()) if cache.is_dir() else []
        name = cache_file_name(self.directory, image_file)
        return [f for f in (folder / name for folder in folders) if f.is_file()]

    def _unique_name(self, wanted: str, taken: set[str]) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", wanted).strip("._") or "keyframe"
        name, n = base, 1
        while name in taken or (self.directory / f"{name}.png").exists():
            n += 1
            name = f"{base}_{n}"
        return name

    def add(self, image: np.ndarray, existing: list[Keyframe], name: str | None = None,
            pose: Pose | None = None, intrinsics: dict[str, Any] | None = None,
            depth: np.ndarray | None = None, depth_scale: float | None = None) -> Keyframe:
        """Store ``image`` as a new keyframe after ``existing`` (the current load order).

        ``depth`` is registered to ``image``: uint16 in stored units (``depth_scale`` metres
        each, default mm), written as a 16-bit PNG unchanged, or float metres (NaN unknown),
        written as a float32 TIFF; both lossless. Files are written first (depth, image), then
        the index, which is the commit point; when the index write fails the files are deleted
        again, so a failed add leaves nothing behind. Only a crash in between leaves an extra
        image, which the next load finds as a keyframe (and a depth file that ``check``
        reports). Index entries are kept as written, including ones that cannot be loaded at
        the moment.
        """
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"keyframes_dir '{self.directory}' is a file, not a folder: set keyframes_dir "
                                     "to a folder")
        if self.index_path.exists() and not self.index_path.is_file():
            raise IsADirectoryError(f"'{self.index_path}' is not a file (a folder?): rename or delete it, then add "
                                    "again")
        intrinsics = parse_intrinsics(intrinsics, "intrinsics")
        if depth is not None:
            check_registered(np.shape(depth), image.shape, "depth")
        self.directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.timezone.utc)
        name = self._unique_name(name or now.strftime("kf_%Y%m%d_%H%M%S_%f"), {k.name for k in existing})
        keyframe = Keyframe(name=name, image_file=f"{name}.png", image=image, pose=pose, intrinsics=intrinsics,
                            added=now.isoformat(timespec="seconds"))
        written: list[Path] = []
        try:
            if depth is not None:
                depth = np.asarray(depth)
                integer = depth.dtype == np.uint16
                keyframe.depth_file = f"{DEPTH_DIR}/{name}.{'png' if integer else 'tiff'}"
                keyframe.depth_scale = parse_depth_scale(depth_scale, "depth_scale") if integer else None
                depth_dir = confined_subdir(self.directory, DEPTH_DIR)
                written.append(save_depth(depth_dir / Path(keyframe.depth_file).name, depth))
                keyframe.depth = to_metres(depth, keyframe.depth_scale)
            written.append(save_rgb(self.directory / keyframe.image_file, image))
            raw = self._read_index()
            if self._index_unreadable and self.index_path.exists():
                self.backup_unreadable_index()  # keep the user's broken index for repair
                raw = []
            # Entries that could not be loaded right now (image missing, bad pose) stay listed.
            indexed = {str(e["image"]) for e in raw if isinstance(e, dict) and "image" in e}
            unindexed = [k.to_entry() for k in existing if k.image_file not in indexed]
            self.write_index(raw + unindexed + [keyframe.to_entry()])
        except BaseException:  # a failed add leaves nothing behind for the next load to find
            with contextlib.suppress(OSError):  # the original error is the one to report
                for path in written:
                    path.unlink(missing_ok=True)
                    fsync_dir(path.parent)
            raise
        return keyframe

    def remove(self, name: str) -> RemovedKeyframe:
        """Remove keyframe ``name``: its index entry, its image and depth files and its cached features.

        The index rewrite is the commit point, and the order makes every crash safe:
        1. the image (and the depth file) are renamed into ``.trash/`` (atomic each);
        2. keyframes.yaml is rewritten without the entry (atomic): the removal is done;
        3. the trashed image and the cache files are deleted.
        If step 2 fails the image is renamed back and the store is exactly as before. A
        crash between 1 and 2 leaves an entry whose image is in ``.trash/``: ``load`` skips
        it with a warning and ``check(repair=True)`` puts the image back (the index still
        lists it, so the removal never happened). A crash after 2 leaves only files that
        ``check`` reports and deletes. Deleting the image first would lose it if the index
        write failed; deleting it last would let a crash bring it back as an unnamed,
        pose-less keyframe. A file still used by another entry, or lying outside the
        store folder, is left in place.
        """
        if not self.directory.is_dir():
            raise FileNotFoundError(f"keyframe store '{self.directory}' does not exist")
        self.warnings = []
        entries = self._read_index()
        if self._index_unreadable:
            raise ValueError(f"{self.index_path} is unreadable: run `roma-keyframes check --repair` first")
        valid = [i for i, e in enumerate(entries) if isinstance(e, dict) and "image" in e]
        hits = [(i, str(entries[i]["image"])) for i in valid if entry_name(entries[i]) == name]
        hits += [(None, p.name) for p in self.unindexed_images(indexed_files(entries)) if p.stem == name]
        if not hits:
            raise UnknownKeyframe(f"no keyframe named '{name}' in store '{self.directory}'")
        if len(hits) > 1:
            raise ValueError(f"{len(hits)} keyframes are named '{name}' in store '{self.directory}': "
                             "run `roma-keyframes check --repair` to rename duplicates")
        number, image_file = hits[0]
        rest = entries if number is None else entries[:number] + entries[number + 1:]
        still_used = indexed_files(rest)
        files = [image_file] + ([str(entries[number]["depth"])]
                                if number is not None and entries[number].get("depth") is not None else [])
        trashed: list[tuple[Path, Path]] = []  # (own file, its place in .trash/)
        try:
            for file in files:
                path = None if file in still_used else self.own_file(file)
                if path is not None and path.is_file():
                    target = confined_subdir(self.directory, TRASH_DIR) / file
                    target.parent.mkdir(parents=True, exist_ok=True)
                    replace_durably(path, target)
                    trashed.append((path, target))
            if number is not None:
                self.write_index(rest)
        except BaseException:
            for path, target in trashed:
                replace_durably(target, path)
                self._tidy_trash(target)
            raise
        deleted: list[Path] = []
        for path, target in trashed:
            target.unlink()
            deleted.append(path)
            self._tidy_trash(target)
        if image_file not in still_used:
            for cache_file in self.cache_files(image_file):
                cache_file.unlink(missing_ok=True)
                deleted.append(cache_file)
        return RemovedKeyframe(name, image_file, None if number is None else entries[number], deleted)

    def _tidy_trash(self, trashed: Path) -> None:
        """Remove the folders of ``.trash/`` above a file that left it, while they are empty."""
        with contextlib.suppress(OSError):
            for folder in list(trashed.relative_to(self.directory).parents)[:-1]:
                (self.directory / folder).rmdir()
