"""Depth maps registered to keyframe images: reading, writing and unit conversion.

A depth map is (H, W) float32 in metres with NaN where the depth is unknown. On disk
it is a 16-bit PNG in stored units (millimetres by default: the ROS 16UC1 convention,
0 = unknown), a 32-bit float TIFF or a ``.npy`` array in metres (0 or non-finite =
unknown). ``depth_scale`` (metres per stored unit) overrides the default of the
file type. The same conversion serves depth images from ROS messages (conversions/images.py).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np

from roma_ros.core.imageio import _atomic_write, quiet_opencv

DEPTH_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
MM = 0.001  # metres per unit of 16-bit depth (ROS 16UC1)


class DepthFileError(ValueError):
    """A depth file is missing, unreadable or not a depth map; the message names the file."""


def check_registered(depth_shape: tuple[int, ...], image_shape: tuple[int, ...], what: str,
                     image: str = "the image", fix: str = "depth must be registered to the image") -> None:
    """DepthFileError unless the depth map has its image's height and width: depth is only
    usable registered to the colour image, pixel for pixel. ``what`` and ``image`` name the
    two in the message, ``fix`` says what to do."""
    if tuple(depth_shape[:2]) != tuple(image_shape[:2]):
        raise DepthFileError(f"{what} is {depth_shape[1]}x{depth_shape[0]} but {image} is "
                             f"{image_shape[1]}x{image_shape[0]}: {fix}")


def default_scale(dtype: np.dtype) -> float:
    """Metres per stored unit when nothing else is said: mm for integers, metres for floats."""
    return MM if np.issubdtype(dtype, np.integer) else 1.0


def check_scale(scale: float | None, source: str = "depth_scale") -> None:
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{source}={scale} must be a positive number of metres per stored unit")


def to_metres(raw: np.ndarray, scale: float | None = None, source: str = "depth") -> np.ndarray:
    """Stored depth (uint16 units, or float metres) -> float32 metres, NaN = unknown (0, NaN, inf).

    Raises DepthFileError for anything that is not a single-channel 16-bit or float image.
    """
    check_scale(scale, f"{source}: depth_scale")
    raw = np.asarray(raw)
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[:, :, 0]
    if raw.ndim != 2 or raw.size == 0:
        raise DepthFileError(f"{source}: a depth map is one channel (H, W), got shape {raw.shape}")
    if raw.dtype == np.uint8:
        raise DepthFileError(f"{source}: 8-bit image is not depth; use a 16-bit PNG (mm) or a float TIFF / .npy (m)")
    if not (raw.dtype == np.uint16 or np.issubdtype(raw.dtype, np.floating)):
        raise DepthFileError(f"{source}: unsupported depth type {raw.dtype}; use uint16 (mm) or float32 (m)")
    unit = default_scale(raw.dtype) if scale is None else float(scale)
    depth = raw.astype(np.float32) * np.float32(unit)
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan  # negative depth is as unknown as 0
    return depth


def load_depth(path: str | os.PathLike, scale: float | None = None) -> np.ndarray:
    """Read a depth file as (H, W) float32 metres, NaN = unknown; DepthFileError says what is wrong."""
    return to_metres(read_depth_raw(path), scale, source=f"depth file '{path}'")


def read_depth_raw(path: str | os.PathLike) -> np.ndarray:
    """A depth file's array as stored (uint16 units or float metres), not yet converted."""
    path = Path(path)
    try:
        return _read_depth_raw(path)
    except OSError as exc:  # ENAMETOOLONG, PermissionError, EIO: this depth map only, named
        raise DepthFileError(f"depth file '{path}' cannot be read: {exc.strerror or exc}") from None


def _read_depth_raw(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DepthFileError(f"depth file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix not in DEPTH_SUFFIXES:
        raise DepthFileError(f"depth file '{path}': unknown type '{suffix}'; use .png (16-bit), .tiff (float) or .npy")
    if suffix == ".npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except (ValueError, EOFError) as exc:
            raise DepthFileError(f"depth file '{path}' is not a readable .npy array ({exc})") from None
    else:
        data = np.fromfile(path, dtype=np.uint8)
        with quiet_opencv():
            raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if raw is None:
            raise DepthFileError(f"depth file '{path}' is empty or not a readable {suffix[1:].upper()} image")
    return raw


def save_depth(path: str | os.PathLike, depth: np.ndarray) -> Path:
    """Write a depth map atomically (temp file + rename).

    Float input is metres (NaN = unknown): ``.tiff`` / ``.npy`` keep it as float32, ``.png``
    stores rounded millimetres (0 = unknown; beyond 65.535 m is an error). uint16 input is
    written to a ``.png`` unchanged, in whatever units its ``depth_scale`` says.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth for '{path}' must be (H, W), got {depth.shape}")
    if suffix == ".png":
        if depth.dtype != np.uint16:
            mm = np.where(np.isfinite(depth) & (depth > 0), np.rint(depth / MM), 0)
            if mm.max(initial=0) > np.iinfo(np.uint16).max:
                raise ValueError(f"depth for '{path}' exceeds 65.535 m: save it as .tiff instead")
            depth = mm.astype(np.uint16)
        ok, encoded = cv2.imencode(".png", depth)
        if not ok:
            raise ValueError(f"could not encode depth for '{path}'")
        payload = encoded.tobytes()
    elif suffix in (".tif", ".tiff", ".npy"):
        metres = to_metres(depth, source=f"depth for '{path}'") if depth.dtype == np.uint16 else depth.astype(np.float32)
        if suffix == ".npy":
            buffer = io.BytesIO()
            np.save(buffer, metres, allow_pickle=False)
            payload = buffer.getvalue()
        else:
            ok, encoded = cv2.imencode(".tiff", metres)
            if not ok:
                raise ValueError(f"could not encode depth for '{path}'")
            payload = encoded.tobytes()
    else:
        raise ValueError(f"depth file '{path}': unknown type '{suffix}'; use .png, .tiff or .npy")
    _atomic_write(path, lambda f: f.write(payload))
    return path


def valid_fraction(depth: np.ndarray) -> float:
    """Share of pixels with a known (finite, positive) depth."""
    return float(np.isfinite(depth).mean()) if depth.size else 0.0
