"""Decoding image messages into arrays, for any object with the sensor_msgs fields.

The functions read only the fields of sensor_msgs/Image (``height, width, encoding, step,
is_bigendian, data``) and CompressedImage (``format, data``), so they take the messages of
rclpy and the ones ``rosbags`` deserializes from a recording alike, without a ROS client
library. ``roma_ros.ros.conversions`` re-exports them (its API is unchanged) and adds the
encoders, which need the ROS message classes.
"""
from __future__ import annotations

import io
import struct
from typing import Any

import cv2
import numpy as np
from PIL import JpegImagePlugin, PngImagePlugin

from roma_ros.core.imageio import MAX_JPEG_SCANS, jpeg_scans, quiet_opencv, to_uint8
from roma_ros.core.text import printable

# encoding -> (channels, bytes per channel); 8UC1/8UC3 are what OpenCV-based publishers send.
_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1), "bgr8": (3, 1), "rgba8": (4, 1), "bgra8": (4, 1),
    "mono8": (1, 1), "mono16": (1, 2),
}
_ALIASES = {"8UC1": "mono8", "8UC3": "bgr8"}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS) + tuple(_ALIASES)

# cv2 conversion from each 8-bit layout to RGB (None: already RGB).
_TO_RGB = {
    "rgb8": None, "bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB, "mono8": cv2.COLOR_GRAY2RGB, "mono16": cv2.COLOR_GRAY2RGB,
}


# Why a frame was rejected: a fixed set, so the node can throttle its logs by cause.
FRAME_FAULTS = ("encoding", "size", "corrupt", "too_large", "too_small", "invalid")

# Smaller frames carry nothing to match, yet RoMa (resizing them up) still "finds" thousands.
MIN_IMAGE_SIDE = 32


class ImageConversionError(ValueError):
    """An image message that cannot be turned into pixels; the message says what to change.

    ``kind`` is one of FRAME_FAULTS.
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind if kind in FRAME_FAULTS else "invalid"


def check_frame_size(width: int, height: int, max_pixels: int | None, min_side: int, what: str) -> None:
    """Reject a frame by its size before any pixel is copied or decoded (bounded memory)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageConversionError(
            f"image too large: {what} is {width}x{height} = {width * height / 1e6:.1f} MP > "
            f"max_image_pixels {max_pixels / 1e6:.1f} MP; resize at the camera driver (image_proc's "
            "resize) or raise max_image_pixels", "too_large")
    if min(width, height) < min_side:
        raise ImageConversionError(
            f"image too small: {what} is {width}x{height}, below the minimum side of {min_side} pixels; "
            "check the camera driver", "too_small")


def compressed_size(data: bytes | memoryview | np.ndarray, fmt: str) -> tuple[int, int]:
    """(width, height) from a PNG or JPEG header without decoding any pixel: Pillow's parsers
    read only the PNG IHDR / JPEG SOF (used directly, so Pillow's own bomb limit does not
    stand in for max_image_pixels); a small payload cannot claim gigabytes unseen."""
    head = bytes(data[:8])
    parser = (PngImagePlugin.PngImageFile if head.startswith(b"\x89PNG") else
              JpegImagePlugin.JpegImageFile if head.startswith(b"\xff\xd8") else None)
    try:
        if parser is None:
            raise SyntaxError("neither a PNG nor a JPEG signature")
        with parser(io.BytesIO(data)) as header:
            return header.size
    except (OSError, SyntaxError, ValueError, struct.error, IndexError) as exc:
        raise ImageConversionError(
            f"corrupt or empty compressed image (format '{printable(fmt)}', {len(data)} bytes): no readable JPEG or PNG "
            f"header ({exc}); only jpeg and png are decoded (not compressedDepth)", "corrupt") from None


def _decoded_to_rgb(img: np.ndarray) -> np.ndarray:
    """cv2.imdecode output (2-D gray, BGR or BGRA, uint8) -> contiguous (H, W, 3) RGB."""
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGB)


def image_msg_to_rgb(msg: Any, max_pixels: int | None = None, min_side: int = 1) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB, a fresh array that does not share msg's memory.

    Honours ``step`` (padded rows) and ``is_bigendian`` (mono16). mono16 is scaled to 8 bit by the
    image's maximum (see ``roma_ros.core.imageio.to_uint8``). Frames over ``max_pixels`` or with a side
    under ``min_side`` are rejected before any copy.
    """
    enc = _ALIASES.get(msg.encoding, msg.encoding)
    if enc not in _ENCODINGS:
        raise ImageConversionError(
            f"unsupported encoding '{printable(msg.encoding)}': publish rgb8, bgr8, rgba8, bgra8, mono8 or "
            "mono16, or use image/compressed", "encoding")
    channels, depth = _ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError(
            f"zero-size image ({w}x{h}, encoding '{printable(msg.encoding)}'): the publisher sent no pixels; "
            "check the camera driver", "size")
    check_frame_size(w, h, max_pixels, min_side, f"the {printable(msg.encoding)} frame")
    row_bytes = w * channels * depth
    if step < row_bytes:
        raise ImageConversionError(
            f"wrong step/size: step {step} < width {w} * {channels * depth} bytes per pixel "
            f"({printable(msg.encoding)}); set step to at least {row_bytes}", "size")
    data = msg.data
    if len(data) < step * h:
        raise ImageConversionError(
            f"wrong step/size: {len(data)} bytes of data but step {step} * height {h} = "
            f"{step * h}; the message is truncated or height/step are wrong", "size")
    dtype = np.dtype(np.uint8) if depth == 1 else np.dtype(">u2" if msg.is_bigendian else "<u2")
    # A strided view over the message buffer skips row padding without copying.
    view = np.ndarray((h, w, channels), dtype, buffer=memoryview(data),
                      strides=(step, channels * depth, depth))
    img = to_uint8(view.astype(dtype.newbyteorder("="))) if depth == 2 else view
    code = _TO_RGB[enc]
    if code is None:
        return img.copy()  # never share memory with the message
    return cv2.cvtColor(np.ascontiguousarray(img[:, :, 0] if channels == 1 else img), code)


def compressed_msg_to_rgb(msg: Any, max_pixels: int | None = None, min_side: int = 1) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png incl. 16-bit and gray) -> (H, W, 3) uint8 RGB.

    The size is read from the header first: a frame over ``max_pixels`` (a decompression bomb:
    a few hundred KB of PNG can claim 20000x20000) or with a side under ``min_side`` is rejected
    without decoding. OpenCV decodes to BGR(A), which matches what image_transport's compressed
    plugin encodes; libpng/libjpeg complaints end up in the error, not on stderr. A JPEG with
    more than MAX_JPEG_SCANS scans is rejected before decoding too (decode time is bounded).
    """
    buf = np.frombuffer(msg.data, np.uint8)
    if buf.size == 0:
        raise ImageConversionError(f"corrupt or empty compressed image (format '{printable(msg.format)}', 0 bytes): "
                                   "check the publisher", "corrupt")
    width, height = compressed_size(buf, msg.format)
    check_frame_size(width, height, max_pixels, min_side, f"the compressed frame (format '{printable(msg.format)}')")
    if buf[:2].tobytes() == b"\xff\xd8" and (scans := jpeg_scans(buf)) > MAX_JPEG_SCANS:
        raise ImageConversionError(
            f"image too costly to decode: the JPEG ({width}x{height}, {buf.size} bytes) has {scans} scans > "
            f"{MAX_JPEG_SCANS}, and each scan is a pass over the whole image (a progressive-JPEG scan bomb); "
            "publish baseline or ordinary progressive JPEG", "too_large")
    with quiet_opencv() as codec:
        try:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:  # OpenCV's own limits (CV_IO_MAX_IMAGE_PIXELS) and asserts
            img = None
            codec.append(str(exc).strip().splitlines()[-1])
    if img is None or img.size == 0 or img.shape[:2] != (height, width):
        said = f" ({'; '.join(codec)})" if codec else ""
        raise ImageConversionError(
            f"corrupt or empty compressed image (format '{printable(msg.format)}', {buf.size} bytes, header "
            f"{width}x{height}): OpenCV could not decode it{said}; check the publisher", "corrupt")
    if img.dtype != np.uint8:
        if img.dtype != np.uint16:
            raise ImageConversionError(
                f"unsupported compressed pixel type {img.dtype} (format '{printable(msg.format)}'): "
                "publish 8- or 16-bit jpeg/png", "encoding")
        img = to_uint8(img)
    return _decoded_to_rgb(img)


# Depth image encodings (registered to the colour image): units and pixel type.
DEPTH_ENCODINGS = {"16UC1": "<u2", "mono16": "<u2", "32FC1": "<f4"}


def depth_msg_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/Image 16UC1 (mm, 0 = unknown) or 32FC1 (m, NaN/0 = unknown) -> a fresh
    (H, W) array as stored: uint16 millimetres or float32 metres (``depth.to_metres`` converts)."""
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ImageConversionError(f"unsupported depth encoding '{printable(msg.encoding)}': publish 16UC1 (mm) or 32FC1 (m)")
    dtype = np.dtype(DEPTH_ENCODINGS[msg.encoding])
    if msg.is_bigendian:
        dtype = dtype.newbyteorder(">")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError(f"zero-size depth image ({w}x{h})")
    if step < w * dtype.itemsize or len(msg.data) < step * h:
        raise ImageConversionError(f"wrong depth step/size: step {step}, width {w}, height {h}, "
                                   f"{len(msg.data)} bytes of data ({printable(msg.encoding)})")
    view = np.ndarray((h, w), dtype, buffer=memoryview(msg.data), strides=(step, dtype.itemsize))
    return view.astype(dtype.newbyteorder("="))
