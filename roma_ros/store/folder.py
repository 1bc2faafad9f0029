"""The on-disk keyframe store: a folder of images, its SQLite index and its depth maps.

The index (``keyframes.db``, index.py) gives each keyframe a name and optionally a pose in
the map frame, camera intrinsics and a depth map registered to the image (depth.py).
``keyframes.yaml`` is its human-editable face (yamlio.py): imported when it is new or
edited, written by ``export_yaml`` (``roma-keyframes export``); a folder with only a
keyframes.yaml is migrated on its first open. Images without an entry are keyframes too,
named by their file stem; ``load`` gives them an entry at the end of the order. Order
(the ``keyframe_index`` users see) is the index's commit order. Every file is written
through a temp file and a rename, so a crash never leaves a half-written image.

Hidden sub-folders belong to the tools: ``.cache/`` (cache.py), ``.trash/`` (removals of
older versions) and ``.unreadable/`` (images ``check --repair`` moved aside). Depth maps
written by ``add`` go to ``depth/``, out of the way of the image scan. ``roma-keyframes``
(cli/keyframes.py) is the command line for all this.

Nothing is ever written outside the folder: an index entry may name an image elsewhere
(it is read, never written next to), cache files are named by a hash of the image's
resolved path, and a ``.cache``, ``.trash``, ``.unreadable`` or ``depth`` that is a
symlink or resolves outside the folder is refused (``confined_subdir``), as is a
symlinked ``keyframes.db``. One bad file (unreadable, a name too long, too many pixels)
costs its keyframe only, with a warning naming it.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from collections.abc import Iterable

import numpy as np

from roma_ros.core.imageio import (
    ImageFileError, check_pixels, fsync_dir, header_size, load_rgb, make_dirs_durably, replace_durably, save_rgb,
)
from roma_ros.core.camera import DISTORTION_LENGTHS
from roma_ros.store.depth import DepthFileError, check_registered, check_scale, load_depth, save_depth, to_metres
from roma_ros.store.index import DB_FILE, IndexUnusable, KeyframeIndex, bump_edits, import_entries
from roma_ros.store.yamlio import read_index_file, write_index_file

INDEX_FILE = "keyframes.yaml"
DEFAULT_DIR = "~/.ros/roma_ros/keyframes"  # the node's keyframes_dir when its parameter is empty
CACHE_DIR = ".cache"  # cache.py keeps its files here
TRASH_DIR = ".trash"
DEPTH_DIR = "depth"  # where ``add`` writes depth maps (a sub-folder: never taken for keyframe images)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
Pose = tuple[tuple[float, float, float], tuple[float, float, float, float]]
INTRINSICS_KEYS = ("fx", "fy", "cx", "cy")
MAX_KEYFRAME_PIXELS = 4096 * 2160  # as the node's max_image_pixels default: SIFT on 48 MP peaked at 11 GB
MAX_NAME_CHARS = 120  # a keyframe name becomes a file name (<name>.png, depth/<name>.tiff, cache files)
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
    # Depth registered to ``image``: float32 metres, NaN = unknown.
    depth: np.ndarray | None = None
    depth_file: str | None = None  # relative to the store folder, as in keyframes.yaml
    depth_scale: float | None = None  # metres per stored unit; None = the file type's default
    # A lazy keyframe (KeyframeStore(..., lazy=True)) holds no pixels: ``image`` and ``depth``
    # are read from ``source / image_file`` (``depth_file``) on each access, so a map's memory
    # does not grow with its images (0.9 MB RGB + 1.2 MB depth per 640x480 keyframe).
    source: Path | None = field(default=None, repr=False, compare=False)

    @property
    def posable(self) -> bool:
        """Has everything a metric query pose needs from the keyframe side."""
        return self.has_depth and self.intrinsics is not None and self.pose is not None

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height); a lazy keyframe's from its file header, without decoding the pixels."""
        held = self.__dict__.get("_image")
        if held is None and self.source is not None:
            with contextlib.suppress(OSError):
                size = header_size(np.fromfile(self.source / self.image_file, np.uint8))
                if size is not None:
                    return size
        image = self.image
        return int(image.shape[1]), int(image.shape[0])

    @property
    def has_depth(self) -> bool:
        """Whether ``depth`` gives a map, without reading it."""
        return self.__dict__.get("_depth") is not None or (self.source is not None and self.depth_file is not None)

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


def _image_get(self: Keyframe) -> np.ndarray:
    held = self.__dict__.get("_image")
    if held is None and self.source is not None:
        return load_rgb(self.source / self.image_file, max_pixels=MAX_KEYFRAME_PIXELS)
    return held


def _depth_get(self: Keyframe) -> np.ndarray | None:
    held = self.__dict__.get("_depth")
    if held is None and self.source is not None and self.depth_file is not None:
        return load_depth(self.source / self.depth_file, self.depth_scale)
    return held


def _setter(name: str):
    def store(self: Keyframe, value: Any) -> None:
        self.__dict__[name] = None if isinstance(value, property) else value
    return store


# After the dataclass is made, so that its __init__ assigns through these (a property as a
# field's default would be taken for the value).
Keyframe.image = property(_image_get, _setter("_image"), doc="RGB uint8, read from disk when lazy")  # type: ignore
Keyframe.depth = property(_depth_get, _setter("_depth"), doc="metres, NaN unknown; read when lazy")  # type: ignore


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


def _short(text: str, limit: int = 80) -> str:
    """A user-controlled string as it goes into a warning: control characters escaped, length bounded."""
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


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


def probe_image(path: Path, max_pixels: int) -> tuple[int, int]:
    """(height, width) of an image file from its header, with load_rgb's checks (exists,
    readable, pixel bound); a format Pillow cannot parse is decoded once instead."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError as exc:
        raise ImageFileError(f"image file '{path}' cannot be read: {exc.strerror or exc}") from None
    if not head:
        raise ImageFileError(f"image file '{path}' is empty (0 bytes)")
    size = header_size(np.frombuffer(head, np.uint8))
    if size is None:
        return load_rgb(path, max_pixels=max_pixels).shape[:2]
    check_pixels((size[1], size[0]), max_pixels, f"image file '{path}'")
    return size[1], size[0]


def probe_entry_depth(directory: Path, entry: dict[str, Any], image_shape: tuple[int, ...] | None,
                      where: str) -> bool:
    """Whether the entry has a depth file that fits its image, from the file's header
    (lazy load); DepthFileError / ValueError as read_entry_depth."""
    if entry.get("depth") is None:
        return False
    parse_depth_scale(entry.get("depth_scale"), where)
    path = directory / str(entry["depth"])
    try:
        if path.suffix.lower() == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        else:
            with open(path, "rb") as handle:
                size = header_size(np.frombuffer(handle.read(1 << 16), np.uint8))
            shape = None if size is None else (size[1], size[0])
    except (OSError, ValueError, EOFError) as exc:
        raise DepthFileError(f"depth file '{path}' cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if shape is None:  # not parseable from the header: read it once to check
        shape = load_depth(path, parse_depth_scale(entry.get("depth_scale"), where)).shape
    if image_shape is not None:
        check_registered(shape, image_shape, f"depth file '{path}'", image="its image")
    return True


def indexed_files(entries: list[Any]) -> set[str]:
    """Files the index names (images and depth maps): never taken for unindexed keyframe images."""
    files = set()
    for entry in entries:
        if isinstance(entry, dict):
            files.update(str(entry[key]) for key in ("image", "depth", "invalid_depth")
                         if isinstance(entry.get(key), (str, int, float)))
    return files


@dataclass
class StoreChange:
    """What another process changed since the last ``load``/``poll``: appended keyframes, or
    ``reload`` when something else changed (a removal, an edit, an import)."""
    added: list[Keyframe]
    reload: bool = False


class KeyframeStore:
    """Reads and changes a keyframe folder; problems are collected as warnings.

    The index is ``keyframes.db`` (index.py); ``keyframes.yaml`` is imported when it is
    new or was edited since roma_ros last read or wrote it (a folder with only a YAML is
    migrated on its first open this way), and written by ``export_yaml``.
    """

    def __init__(self, directory: str | Path, max_pixels: int = MAX_KEYFRAME_PIXELS, lazy: bool = False) -> None:
        self.directory = Path(directory).expanduser()
        self.max_pixels = int(max_pixels)
        # lazy: load() checks each image and depth file from its header and keeps no pixels
        # (the node: its memory stays flat in the map's size); eager: pixels held (the CLI, tools).
        self.lazy = lazy
        self.warnings: list[str] = []
        self.notes: list[str] = []  # what was done that is no problem (an import, a recovery)
        self._index_unreadable = False
        self._db: KeyframeIndex | None = None
        self._shapes: dict[str, tuple[int, int]] = {}  # lazy load: image sizes from the headers
        self._intrinsics: dict[str, dict[str, Any]] = {}  # during a load: equal intrinsics shared
        self._lock = threading.RLock()
        # What the caller holds, for ``poll``: committed entries, largest seq, edit counter,
        # data_version at the last look, and the seqs of our own adds since.
        self._seen_count = self._seen_seq = 0
        self._seen_edits: str | None = None
        self._seen_version: int | None = None
        self._own: set[int] = set()

    @property
    def index_path(self) -> Path:
        """keyframes.yaml: the human-editable face of the index."""
        return self.directory / INDEX_FILE

    @property
    def db_path(self) -> Path:
        return self.directory / DB_FILE

    # --- the index ----------------------------------------------------------------------------
    def index(self) -> KeyframeIndex:
        """The folder's SQLite index, created (and a keyframes.yaml migrated) on first use."""
        with self._lock:
            if self._db is not None:
                return self._db
            if self.db_path.is_symlink():
                raise UnsafeFolderError(f"'{self.db_path}' is a symlink; roma_ros keeps its index inside the "
                                        "keyframe folder: replace the link by the file itself")
            if self.db_path.exists() and not self.db_path.is_file():
                raise IndexUnusable(f"'{self.db_path}' is not a file (a folder?): rename or delete it")
            try:
                self._db = KeyframeIndex(self.directory)
            except sqlite3.Error as exc:
                raise IndexUnusable(f"{self.db_path} cannot be used as the keyframe index ({exc}): move it away; "
                                    f"`roma-keyframes import` builds a new one from {INDEX_FILE}") from None
            return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _sync_yaml(self, db: KeyframeIndex, force: bool = False) -> None:
        """Import keyframes.yaml when it changed since the last import/export (or was never seen)."""
        self._index_unreadable = False
        path = self.index_path
        if not path.exists():
            return
        if not path.is_file():
            self.warnings.append(f"{path} is not a file (a folder?): rename or delete it; it is not imported")
            return
        stat = path.stat()
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        if not force and db.meta("yaml_stat") == stamp:
            return
        try:
            entries = read_index_file(path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except (ValueError, OSError) as exc:
            self._index_unreadable = True
            count = db.summary()[0]
            self.warnings.append(f"{path} is unreadable ({exc}); not imported: the index keeps its {count} "
                                 "entries and the image files are used. Fix or delete it (`roma-keyframes "
                                 "export` rewrites it from the index).")
            return
        sync = {"yaml_sha": digest, "yaml_stat": stamp}
        if force:
            with db.write() as conn:
                db.set_meta(conn, "yaml_sha", "")
        imported = import_entries(db, entries, sync)
        if imported is not None:
            self.notes.append(f"imported {imported} entries from {path}")

    def _entries_from_yaml(self) -> list[Any]:
        """The YAML's entries, for a folder whose SQLite index cannot be used (read-only media)."""
        if not self.index_path.is_file():
            return []
        try:
            return read_index_file(self.index_path)
        except (ValueError, OSError) as exc:
            self._index_unreadable = True
            self.warnings.append(f"{self.index_path} is unreadable ({exc}); using the image files alone")
            return []

    def _read_index(self) -> list[dict[str, Any]]:
        """All committed entries in load order (after importing a changed keyframes.yaml)."""
        db = self.index()
        db.recover()
        self._sync_yaml(db)
        return [row.entry for row in db.rows()]

    def entries(self) -> list[dict[str, Any]]:
        """The index entries as keyframes.yaml would list them, in load order."""
        return self._read_index()

    def write_index(self, entries: list[Any]) -> None:
        """Make the index exactly ``entries`` (``check --repair``): one transaction."""
        self.index().replace_all(entries)

    def export_yaml(self, path: str | Path | None = None) -> tuple[Path, int]:
        """Write the index as keyframes.yaml (atomically); a keyframes.yaml with edits that were
        never imported is kept as a backup first. Returns (file, entries)."""
        db = self.index()
        db.recover()
        target = Path(path) if path is not None else self.index_path
        rows = db.rows()
        entries = [row.entry for row in rows]
        if target == self.index_path and target.is_file():
            digest = hashlib.sha256(target.read_bytes()).hexdigest()
            if digest != db.meta("yaml_sha"):
                self.notes.append(f"{target.name} had edits that were never imported: kept as "
                                  f"{self.backup_unreadable_index().name}")
        write_index_file(target, entries)
        if target == self.index_path:
            stat = target.stat()
            with db.write() as conn:
                db.set_meta(conn, "yaml_sha", hashlib.sha256(target.read_bytes()).hexdigest())
                db.set_meta(conn, "yaml_stat", f"{stat.st_size}:{stat.st_mtime_ns}")
                conn.execute("UPDATE keyframes SET in_yaml = 0")
                conn.executemany("UPDATE keyframes SET in_yaml = 1 WHERE id=?", [(r.id,) for r in rows])
        return target, len(entries)

    def import_yaml(self, path: str | Path | None = None) -> int:
        """Merge a keyframes.yaml into the index (``import_entries``); returns its entry count.
        Another file than the folder's own is merged as new entries and updates."""
        db = self.index()
        db.recover()
        source = Path(path) if path is not None else self.index_path
        entries = read_index_file(source)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if source.resolve() == self.index_path.resolve():
            stat = source.stat()
            with db.write() as conn:
                db.set_meta(conn, "yaml_sha", "")  # import even when unchanged: the user asked for it
            import_entries(db, entries, {"yaml_sha": digest, "yaml_stat": f"{stat.st_size}:{stat.st_mtime_ns}"})
        else:  # another file: its entries are merged, nothing is dropped
            import_entries(db, entries, {"foreign_sha": digest})
        return len(entries)

    def backup_unreadable_index(self) -> Path:
        """Move keyframes.yaml aside (for the user to repair) under a name no other backup has."""
        now = dt.datetime.now(dt.timezone.utc)
        stem = f"{INDEX_FILE}.unreadable-{now:%Y%m%d%H%M%S}"
        backup, n = self.index_path.with_name(stem), 1
        while backup.exists():  # two backups within one second keep both
            n += 1
            backup = self.index_path.with_name(f"{stem}-{n}")
        replace_durably(self.index_path, backup)
        self._index_unreadable = False
        return backup

    # --- loading ------------------------------------------------------------------------------
    def load(self) -> list[Keyframe]:
        """All readable keyframes in index order, then adopted image files; unreadable ones are
        skipped with a warning naming them."""
        self.warnings, self.notes = [], []
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
        db: KeyframeIndex | None
        busy: set[str] = set()
        try:
            db = self.index()
            self.notes += db.recover()
            self._sync_yaml(db)
            version = db.data_version()
            count, top = db.summary()
            edits = db.meta("edits")
            with db.read() as conn:
                busy = db.named_files(conn)
            entries: Iterable[Any] = db.iter_entries()
        except (IndexUnusable, sqlite3.Error, OSError) as exc:
            db = None
            self.warnings.append(f"keyframe index not usable ({exc}); reading {INDEX_FILE} directly, changes "
                                 "cannot be saved")
            entries = self._entries_from_yaml()
        keyframes: list[Keyframe] = []
        named: set[str] = set()
        self._intrinsics = {}
        try:
            for number, entry in enumerate(entries):  # one parsed entry at a time (index.iter_entries)
                named |= indexed_files([entry])
                keyframe = self._keyframe(entry, f"{self.index_path} entry {number}")
                if keyframe is not None:
                    keyframes.append(keyframe)
        finally:  # an exception mid-way must not leave the index's read transaction open
            self._intrinsics = {}
            close = getattr(entries, "close", None)
            if close is not None:
                close()
        adopted = []
        for path in self.unindexed_images(named | busy):
            try:
                adopted.append(Keyframe(name=path.stem, image_file=path.name, image=self._read_image(path),
                                        source=self.directory if self.lazy else None))
            except ImageFileError as exc:
                self.warnings.append(f"keyframe image skipped: {exc}")
        keyframes += adopted
        if db is not None:
            self._adopt(db, adopted)
            with self._lock:
                self._seen_version, self._seen_edits = version, edits
                self._seen_count, self._seen_seq = count + len(adopted), top
                self._own = set()
        return keyframes

    def _read_image(self, path: Path) -> np.ndarray | None:
        """The pixels (eager), or None after checking the file from its header (lazy);
        ImageFileError either way for a file that cannot be a keyframe."""
        if not self.lazy:
            return load_rgb(path, max_pixels=self.max_pixels)
        self._shapes[path.name] = probe_image(path, self.max_pixels)
        return None

    def _keyframe(self, entry: Any, where: str) -> Keyframe | None:
        """The keyframe of an index entry; None (with a warning) when its image cannot be used."""
        if not isinstance(entry, dict) or "image" not in entry:
            self.warnings.append(f"{where}: needs at least 'image'; skipped")
            return None
        image_file = str(entry["image"])
        label = _short(str(entry.get("name") or image_file))
        try:
            pose = _parse_pose(entry.get("pose"), where)
            image = self._read_image(self.directory / image_file)
        except (ValueError, ImageFileError) as exc:
            self.warnings.append(f"keyframe '{label}' skipped: {exc}")
            return None
        keyframe = Keyframe(
            name=str(entry.get("name") or Path(image_file).stem), image_file=image_file, image=image,
            pose=pose, added=entry.get("added"),
            extra={k: v for k, v in entry.items() if k not in ENTRY_KEYS},
            source=self.directory if self.lazy else None,
        )
        self._load_camera(keyframe, entry, where)
        return keyframe

    def _adopt(self, db: KeyframeIndex, adopted: list[Keyframe]) -> None:
        """Give image files without an entry one (at the end of the order), so that the order
        stays when keyframes are added after them. Skipped on a read-only index."""
        if not adopted:
            return
        try:
            with db.write() as conn:
                named = db.named_files(conn)
                for keyframe in adopted:
                    if keyframe.image_file not in named:
                        db.insert(conn, keyframe.to_entry())
        except sqlite3.OperationalError as exc:  # read-only folder: they stay keyframes without an entry
            self.notes.append(f"image files without an entry not added to the index ({exc})")

    def has_unindexed(self) -> bool:
        """Whether image files without an entry lie in the folder (``load`` gives them one)."""
        db = self.index()
        with db.read() as conn:
            return bool(self.unindexed_images(db.named_files(conn)))

    def position(self, keyframe: Keyframe) -> int:
        """The keyframe's place in the load order (its ``keyframe_index`` after a load)."""
        db = self.index()
        with db.read() as conn:
            row = conn.execute("SELECT seq FROM keyframes WHERE image=? AND state='ok'", (keyframe.image_file,)).fetchone()
            if row is None:
                raise UnknownKeyframe(f"keyframe '{keyframe.name}' is not in the index of '{self.directory}'")
            return int(conn.execute("SELECT count(*) FROM keyframes WHERE state='ok' AND seq < ?",
                                    (row[0],)).fetchone()[0])

    def poll(self) -> StoreChange | None:
        """What other processes committed since the last ``load``/``poll``; None when nothing.
        Costs one PRAGMA when nothing changed, so it can run between queries."""
        with self._lock:
            if self._db is None or self._seen_version is None:
                return None
            db = self._db
            version = db.data_version()
            if version == self._seen_version:
                return None
            count, top = db.summary()
            edits = db.meta("edits")
            if edits != self._seen_edits:
                return StoreChange([], reload=True)
            rows = [row for row in db.rows(after_seq=self._seen_seq) if row.seq not in self._own]
            if count != self._seen_count + len(rows):
                return StoreChange([], reload=True)
            self._seen_version, self._seen_count, self._seen_seq, self._own = version, count, top, set()
        self.warnings = []
        added = [k for number, row in enumerate(rows)
                 if (k := self._keyframe(row.entry, f"{self.db_path.name} seq {row.seq}")) is not None]
        return StoreChange(added)

    def _load_camera(self, keyframe: Keyframe, entry: dict[str, Any], where: str) -> None:
        """Intrinsics and depth of an entry; a bad one costs the keyframe its pose ability
        (with a warning naming the file), not its place in the store."""
        name = f"keyframe '{_short(keyframe.name)}'"
        try:
            intrinsics = parse_intrinsics(entry.get("intrinsics"), where)
            # One camera's keyframes share one dict (read-only by convention): ~300 B a keyframe.
            shared = None if intrinsics is None else repr(sorted(intrinsics.items()))
            keyframe.intrinsics = intrinsics if shared is None else self._intrinsics.setdefault(shared, intrinsics)
        except ValueError as exc:
            self.warnings.append(f"{name} has no intrinsics: {exc}")
        keyframe.extra.update({k: entry[k] for k in ("depth", "depth_scale") if k in entry})
        image_shape = self._shapes.pop(keyframe.image_file, None) if self.lazy else keyframe.image.shape
        try:
            if self.lazy:
                found = probe_entry_depth(self.directory, entry, image_shape, where)
            else:
                keyframe.depth = read_entry_depth(self.directory, entry, image_shape, where)
                found = keyframe.depth is not None
        except (DepthFileError, ValueError) as exc:
            self.warnings.append(f"{name} has no depth: {exc}")
            return
        if found:
            keyframe.depth_file = str(entry["depth"])
            keyframe.depth_scale = parse_depth_scale(entry.get("depth_scale"), where)
            del keyframe.extra["depth"]
            keyframe.extra.pop("depth_scale", None)

    def unindexed_images(self, indexed: set[str]) -> list[Path]:
        """Image files of the folder that no index entry names, sorted (their load order)."""
        found = []
        with os.scandir(self.directory) as it:
            for item in it:
                name = item.name
                if name.startswith(".") or name in indexed or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                    continue
                found.append(self.directory / name)
        return sorted(found)

    def own_file(self, image_file: str) -> Path | None:
        """``image_file`` as a path inside the store folder; None when it points outside."""
        path = self.directory / image_file
        try:
            root, parent = self.directory.resolve(), path.parent.resolve()
        except OSError:
            return None
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

    def _unique_name(self, wanted: str, taken: set[str] | Callable[[str], bool]) -> str:
        """A file-safe name that no keyframe has and no image file uses; ``taken`` is a set
        or a lookup (the index's, so an add does not read every name of a large map)."""
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", wanted).strip("._")[:MAX_NAME_CHARS] or "keyframe"
        is_taken = taken.__contains__ if isinstance(taken, set) else taken
        name, n = base, 1
        while is_taken(name) or (self.directory / f"{name}.png").exists():
            n += 1
            name = f"{base}_{n}"
        return name

    # --- changing -----------------------------------------------------------------------------
    def add(self, image: np.ndarray, existing: list[Keyframe], name: str | None = None,
            pose: Pose | None = None, intrinsics: dict[str, Any] | None = None,
            depth: np.ndarray | None = None, depth_scale: float | None = None) -> Keyframe:
        """Store ``image`` as a new keyframe, last in the load order.

        ``depth`` is registered to ``image``: uint16 in stored units (``depth_scale`` metres
        each, default mm), written as a 16-bit PNG unchanged, or float metres (NaN unknown),
        written as a float32 TIFF; both lossless. Three steps (index.py): a ``writing`` row
        reserves the name, the files are written (atomically each), the row is committed.
        A failure deletes the files and the row again; a crash leaves a row whose dead
        writer the next open recognises, and undoes. ``existing`` only adds names to avoid.
        """
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"keyframes_dir '{self.directory}' is a file, not a folder: set keyframes_dir "
                                     "to a folder")
        intrinsics = parse_intrinsics(intrinsics, "intrinsics")
        if depth is not None:
            check_registered(np.shape(depth), image.shape, "depth")
        check_pixels(image.shape, self.max_pixels, "the keyframe image")
        if self.index_path.exists() and not self.index_path.is_file():
            raise IsADirectoryError(f"'{self.index_path}' is not a file (a folder?): rename or delete it, then add "
                                    "again")
        make_dirs_durably(self.directory)
        db = self.index()
        now = dt.datetime.now(dt.timezone.utc)
        integer = depth is not None and np.asarray(depth).dtype == np.uint16
        scale = parse_depth_scale(depth_scale, "depth_scale") if integer else None
        with db.write() as conn:
            avoid = {k.name for k in existing}
            name = self._unique_name(name or now.strftime("kf_%Y%m%d_%H%M%S_%f"),
                                     lambda n: n in avoid or db.has_name(conn, n))
            keyframe = Keyframe(name=name, image_file=f"{name}.png", image=image, pose=pose, intrinsics=intrinsics,
                                added=now.isoformat(timespec="seconds"))
            if depth is not None:
                keyframe.depth_file = f"{DEPTH_DIR}/{name}.{'png' if integer else 'tiff'}"
                keyframe.depth_scale = scale
            row_id = db.insert(conn, keyframe.to_entry(), state="writing")
        written: list[Path] = []
        try:
            if depth is not None:
                assert keyframe.depth_file is not None
                depth_dir = confined_subdir(self.directory, DEPTH_DIR)
                written.append(save_depth(depth_dir / Path(keyframe.depth_file).name, np.asarray(depth)))
                keyframe.depth = to_metres(np.asarray(depth), keyframe.depth_scale)
            written.append(save_rgb(self.directory / keyframe.image_file, image))
            seq = db.commit_add(row_id, keyframe.to_entry())
        except BaseException:  # a failed add leaves nothing behind
            with contextlib.suppress(OSError, sqlite3.Error):  # the original error is the one to report
                for path in written:
                    path.unlink(missing_ok=True)
                    fsync_dir(path.parent)
                with db.write() as conn:
                    conn.execute("DELETE FROM keyframes WHERE id=? AND state='writing'", (row_id,))
            raise
        with self._lock:
            self._seen_count += 1
            self._own.add(seq)
        if self.lazy:  # from now on read from the files just written, like every loaded keyframe
            keyframe.source, keyframe.image, keyframe.depth = self.directory, None, None
        return keyframe

    def remove(self, name: str) -> RemovedKeyframe:
        """Remove keyframe ``name``: its index entry, its image and depth files and its cached features.

        One transaction drops the entry and lists its files for deletion (the commit point);
        the files are deleted next, each only while no entry names it. A crash in between
        leaves the list, which the next open works off (index.py). A file still used by
        another entry, or lying outside the store folder, is left in place.
        """
        if not self.directory.is_dir():
            raise FileNotFoundError(f"keyframe store '{self.directory}' does not exist")
        self.warnings = []
        db = self.index()
        db.recover()
        self._sync_yaml(db)
        if self._index_unreadable:
            raise ValueError(f"{self.index_path} is unreadable, and may name this keyframe: fix it, or run "
                             "`roma-keyframes check --repair` to set it aside first")
        with db.write() as conn:
            rows = [r for r in db.rows(db=conn) if isinstance(r.entry, dict) and "image" in r.entry]
            hits: list[tuple[Any, str]] = [(r, str(r.entry["image"])) for r in rows if entry_name(r.entry) == name]
            hits += [(None, p.name) for p in self.unindexed_images(db.named_files(conn)) if p.stem == name]
            if not hits:
                raise UnknownKeyframe(f"no keyframe named '{name}' in store '{self.directory}'")
            if len(hits) > 1:
                raise ValueError(f"{len(hits)} keyframes are named '{name}' in store '{self.directory}': "
                                 "run `roma-keyframes check --repair` to rename duplicates")
            row, image_file = hits[0]
            still_used = indexed_files([r.entry for r in rows if r is not row])
            files = [image_file] + ([str(row.entry["depth"])] if row is not None and row.entry.get("depth") else [])
            doomed = [f for f in files if f not in still_used and self.own_file(f) is not None]
            if image_file not in still_used:
                doomed += [p.relative_to(self.directory).as_posix() for p in self.cache_files(image_file)]
            db.delete_rows(conn, [] if row is None else [row.id], doomed)
            bump_edits(conn)
        with self._lock:
            self._seen_version = -1  # our own commit does not change data_version: look again
        deleted = db.work_off_deletes()
        return RemovedKeyframe(name, image_file, None if row is None else row.entry, deleted)
