"""Keyframe features kept on disk next to the keyframes, so a restart does not re-encode.

Files live in ``<keyframes_dir>/.cache/<key>/<name>-<hash>.pt`` (folder.cache_file_name:
a hash of the image's resolved path, so no index entry can steer a write outside the
folder). The key names everything the features depend on (model, checkpoint identity,
resolution, precision), so changing any of them simply uses another folder; each file also
records a digest of the keyframe's pixels, so an edited image is re-encoded.
A file that cannot be read, or whose content is not finite tensors, is reported and
recomputed (and rewritten), never trusted and never fatal. A ``.cache`` that is a
symlink or lies outside the folder is refused with a warning: features then stay in memory.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roma_ros.core.imageio import save_bytes
from roma_ros.store.folder import CACHE_DIR, UnsafeFolderError, cache_file_name, confined_subdir

__all__ = ["CACHE_DIR", "FeatureCache", "cache_for", "image_digest"]


def image_digest(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes() + str(rgb.shape).encode()).hexdigest()


def feature_problem(features: Any) -> str:
    """Why cached features cannot be used ("" when they can): a mapping of names to tensors,
    floating ones finite (a NaN feature would make every query fail downstream)."""
    if not isinstance(features, dict) or not features:
        return f"features are {type(features).__name__}, not a mapping of tensors"
    for key, value in features.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            return f"entry {str(key)[:40]!r} is {type(value).__name__}, not a tensor"
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"tensor {key!r} holds NaN or infinite values"
    return ""


@dataclass
class CacheStats:
    loaded: int = 0
    computed: int = 0
    warnings: list[str] = field(default_factory=list)


class FeatureCache:
    """Reads and writes one state dict of tensors per keyframe image."""

    def __init__(self, keyframes_dir: str | Path, key: str) -> None:
        self.directory = Path(keyframes_dir)
        self.stats = CacheStats()
        self.folder: Path | None = None  # None: refused, features are kept in memory only
        try:
            self.folder = confined_subdir(confined_subdir(self.directory, CACHE_DIR), key)
        except UnsafeFolderError as exc:
            self.stats.warnings.append(f"feature cache refused: {exc}; keyframe features are kept in memory only")

    def path(self, image_file: str) -> Path | None:
        return None if self.folder is None else self.folder / cache_file_name(self.directory, image_file)

    def load(self, image_file: str, digest: str) -> dict[str, torch.Tensor] | None:
        path = self.path(image_file)
        if path is None or not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("digest") != digest:
                return None  # the image changed since it was cached
            features = state.get("features")
        except Exception as exc:  # truncated or foreign file: recompute
            self.stats.warnings.append(f"feature cache file '{path}' is unreadable ({exc}); recomputing it")
            return None
        problem = feature_problem(features)
        if problem:  # the right digest does not make the content right: never trusted
            self.stats.warnings.append(f"feature cache file '{path}' is corrupt ({problem}); recomputing it")
            return None
        return features

    def save(self, image_file: str, digest: str, features: dict[str, torch.Tensor]) -> None:
        path = self.path(image_file)
        if path is None:
            return
        buffer = io.BytesIO()
        torch.save({"digest": digest, "features": features}, buffer)
        save_bytes(path, buffer.getvalue())

    def prepare(self, matcher: Any, image_file: str, rgb: np.ndarray) -> Any:
        """The matcher's prepared keyframe, from disk when cached, else computed and stored."""
        digest = image_digest(rgb)
        features = self.load(image_file, digest)
        if features is not None:
            try:
                prepared = matcher.import_prepared(rgb, features)
                self.stats.loaded += 1
                return prepared
            except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
                self.stats.warnings.append(f"feature cache for '{image_file}' does not fit the model ({exc}); recomputing")
        prepared = matcher.prepare(rgb)
        self.stats.computed += 1
        try:
            self.save(image_file, digest, matcher.export_prepared(prepared))
        except OSError as exc:
            self.stats.warnings.append(f"could not write feature cache '{self.path(image_file)}': {exc}")
        return prepared


def cache_for(matcher: Any, keyframes_dir: str | Path) -> FeatureCache | None:
    """A cache when the matcher supports one (RoMa); None for matchers whose keyframe work is cheap."""
    key = getattr(matcher, "cache_key", lambda: None)()
    return FeatureCache(keyframes_dir, key) if key else None
