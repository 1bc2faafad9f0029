"""The on-disk keyframe store: a folder of images plus an optional ``keyframes.yaml``.

``keyframes.yaml`` gives each keyframe a name and optionally a pose in the map
frame and camera intrinsics; images without an entry are keyframes too, named by
their file stem. Order (the ``keyframe_index`` users see) is the YAML order, then
the remaining image files sorted by name. Every write goes through a temp file and
a rename, so a crash never leaves a half-written image or index.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from roma_ros.imageio import ImageFileError, load_rgb, save_bytes, save_rgb

INDEX_FILE = "keyframes.yaml"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
Pose = tuple[tuple[float, float, float], tuple[float, float, float, float]]


@dataclass
class Keyframe:
    name: str
    image_file: str  # relative to the store folder
    image: np.ndarray  # RGB uint8
    pose: Pose | None = None
    intrinsics: dict[str, float] | None = None
    added: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "image": self.image_file}
        if self.pose is not None:
            entry["pose"] = {"position": list(self.pose[0]), "orientation": list(self.pose[1])}
        if self.intrinsics:
            entry["intrinsics"] = dict(self.intrinsics)
        if self.added:
            entry["added"] = self.added
        return {**self.extra, **entry}


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
        if not self.directory.is_dir():
            self.warnings.append(
                f"keyframes_dir '{self.directory}' does not exist: no keyframes yet. "
                "Add images there and call ~/reload_keyframes, or call ~/add_keyframe."
            )
            return []
        keyframes: list[Keyframe] = []
        seen_files: set[str] = set()
        for number, entry in enumerate(self._read_index()):
            where = f"{self.index_path} entry {number}"
            if not isinstance(entry, dict) or "image" not in entry:
                self.warnings.append(f"{where}: needs at least 'image'; skipped")
                continue
            image_file = str(entry["image"])
            seen_files.add(image_file)
            try:
                pose = _parse_pose(entry.get("pose"), where)
                image = load_rgb(self.directory / image_file)
            except (ValueError, ImageFileError) as exc:
                self.warnings.append(f"keyframe '{entry.get('name', image_file)}' skipped: {exc}")
                continue
            known = {"name", "image", "pose", "intrinsics", "added"}
            keyframes.append(Keyframe(
                name=str(entry.get("name") or Path(image_file).stem), image_file=image_file, image=image,
                pose=pose, intrinsics=entry.get("intrinsics"), added=entry.get("added"),
                extra={k: v for k, v in entry.items() if k not in known},
            ))
        for path in sorted(self.directory.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or path.name in seen_files or path.name.startswith("."):
                continue
            try:
                keyframes.append(Keyframe(name=path.stem, image_file=path.name, image=load_rgb(path)))
            except ImageFileError as exc:
                self.warnings.append(f"keyframe image skipped: {exc}")
        return keyframes

    def _unique_name(self, wanted: str, taken: set[str]) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", wanted).strip("._") or "keyframe"
        name, n = base, 1
        while name in taken or (self.directory / f"{name}.png").exists():
            n += 1
            name = f"{base}_{n}"
        return name

    def add(self, image: np.ndarray, existing: list[Keyframe], name: str | None = None,
            pose: Pose | None = None) -> Keyframe:
        """Store ``image`` as a new keyframe after ``existing`` (the current load order).

        The image file is written first, then the index; a crash in between leaves an
        extra image that the next load still finds as a keyframe.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.timezone.utc)
        name = self._unique_name(name or now.strftime("kf_%Y%m%d_%H%M%S_%f"), {k.name for k in existing})
        keyframe = Keyframe(name=name, image_file=f"{name}.png", image=image, pose=pose,
                            added=now.isoformat(timespec="seconds"))
        save_rgb(self.directory / keyframe.image_file, image)
        if self._index_unreadable and self.index_path.exists():
            # Keep the user's broken index for repair instead of overwriting it.
            self.index_path.replace(self.index_path.with_name(f"{INDEX_FILE}.unreadable-{now:%Y%m%d%H%M%S}"))
            self._index_unreadable = False
        entries = [k.to_entry() for k in existing] + [keyframe.to_entry()]
        text = yaml.safe_dump({"keyframes": entries}, sort_keys=False)
        save_bytes(self.index_path, text.encode())
        return keyframe
