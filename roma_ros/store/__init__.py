"""The keyframe store: a folder of images, its index, depth maps and cached features.

``folder`` holds the store itself (``Keyframe``, ``KeyframeStore`` and the helpers that
keep every write inside the folder), ``check`` its consistency check and repair,
``depth`` the depth files and ``cache`` the features on disk. ``cache`` imports torch and
the store must stay importable without it, so it is not imported here: import
``roma_ros.store.cache`` where features are needed.
"""
from roma_ros.store.depth import (
    DepthFileError, check_registered, load_depth, read_depth_raw, save_depth, to_metres, valid_fraction,
)
from roma_ros.store.folder import (
    CACHE_DIR, DEFAULT_DIR, INTRINSICS_KEYS, Keyframe, KeyframeStore, UnknownKeyframe, UnsafeFolderError,
    cache_file_name, parse_intrinsics,
)

__all__ = [
    "CACHE_DIR",
    "DEFAULT_DIR",
    "INTRINSICS_KEYS",
    "DepthFileError",
    "Keyframe",
    "KeyframeStore",
    "UnknownKeyframe",
    "UnsafeFolderError",
    "cache_file_name",
    "check_registered",
    "load_depth",
    "parse_intrinsics",
    "read_depth_raw",
    "save_depth",
    "to_metres",
    "valid_fraction",
]
