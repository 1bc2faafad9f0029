"""sensor_msgs/Image and CompressedImage <-> numpy, with the size guards that keep memory
bounded per frame, and depth images -> arrays.

cv_bridge is deliberately not used even where it imports: one code path on every install keeps
conversions identical (and tested) on pip-only machines, where no working cv_bridge exists, and on
ROS distros alike.

Byte buffers are always handed to messages as ``array.array('B', ...)``: that is the type the
generated setters store, and the only input they accept without a per-element Python check on
distros that validate fields (Humble/Jazzy), which would take ~0.1 s for one 640x480 image.
"""

from __future__ import annotations

import array
import io
import struct

import cv2
import numpy as np
from PIL import JpegImagePlugin, PngImagePlugin
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from roma_ros.core.imageio import MAX_JPEG_SCANS, jpeg_scans, quiet_opencv, to_uint8
from roma_ros.core.text import printable
from roma_ros.store import DepthFileError, to_metres

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


def _header(header: Header | None) -> Header:
    return header if header is not None else Header()


def _bytes(arr: np.ndarray) -> array.array:
    return array.array("B", np.ascontiguousarray(arr).tobytes())


def _decoded_to_rgb(img: np.ndarray) -> np.ndarray:
    """cv2.imdecode output (2-D gray, BGR or BGRA, uint8) -> contiguous (H, W, 3) RGB."""
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGB)


def image_msg_to_rgb(msg: Image, max_pixels: int | None = None, min_side: int = 1) -> np.ndarray:
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


def compressed_msg_to_rgb(msg: CompressedImage, max_pixels: int | None = None, min_side: int = 1) -> np.ndarray:
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


def rgb_to_image_msg(rgb: np.ndarray, header: Header | None = None,
                     encoding: str = "rgb8") -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image in ``encoding`` (rgb8, bgr8, rgba8, bgra8, mono8,
    mono16), unpadded, little-endian. Used for debug images and by tests/demos to publish."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if encoding in ("mono8", "mono16"):
        return mono_to_image_msg(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), header, encoding)
    conv = {"rgb8": None, "bgr8": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGB2RGBA,
            "bgra8": cv2.COLOR_RGB2BGRA}
    if encoding not in conv:
        raise ValueError(f"cannot encode to '{encoding}': use one of {', '.join(_ENCODINGS)}")
    out = rgb if conv[encoding] is None else cv2.cvtColor(rgb, conv[encoding])
    return _image(out, header, encoding)


def mono_to_image_msg(gray: np.ndarray, header: Header | None = None,
                      encoding: str = "mono8") -> Image:
    """(H, W) gray -> mono8 or mono16 Image. uint8 input becomes mono16 as ``v * 257`` (full
    range); uint16 input must be mono16."""
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected (H, W) uint8 or uint16, got {gray.shape} {gray.dtype}")
    if encoding == "mono8":
        if gray.dtype != np.uint8:
            raise ValueError("mono8 needs uint8 input; use encoding='mono16' for uint16")
        return _image(gray, header, encoding)
    if encoding == "mono16":
        g16 = gray.astype("<u2") * 257 if gray.dtype == np.uint8 else gray.astype("<u2")
        return _image(g16, header, encoding)
    raise ValueError(f"mono_to_image_msg encodes mono8 or mono16, not '{encoding}'")


def _image(pixels: np.ndarray, header: Header | None, encoding: str) -> Image:
    h, w = pixels.shape[:2]
    step = pixels[0].nbytes  # unpadded rows
    return Image(header=_header(header), height=h, width=w, encoding=encoding, is_bigendian=0,
                 step=step, data=_bytes(pixels))


def rgb_to_compressed_msg(rgb: np.ndarray, header: Header | None = None, fmt: str = "jpeg",
                          quality: int = 90) -> CompressedImage:
    """(H, W, 3) uint8 RGB, or (H, W) uint8/uint16 gray -> CompressedImage (jpeg or png).

    ``format`` follows image_transport's compressed plugin ("rgb8; jpeg compressed bgr8") so
    stock subscribers (rqt, RViz, image_transport republish) decode it.
    """
    img = np.asarray(rgb)
    fmt = {"jpg": "jpeg"}.get(fmt.lower(), fmt.lower())
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        src_enc, dst_enc, img = "rgb8", "bgr8", cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 2 and (img.dtype == np.uint8 or (img.dtype == np.uint16 and fmt == "png")):
        src_enc = dst_enc = "mono8" if img.dtype == np.uint8 else "mono16"
    else:
        raise ValueError(f"cannot compress {img.shape} {img.dtype} as {fmt}: expected (H, W, 3) "
                         "uint8, (H, W) uint8, or (H, W) uint16 with png")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", img, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {img.shape} image as {fmt}")
    return CompressedImage(header=_header(header), format=f"{src_enc}; {fmt} compressed {dst_enc}",
                           data=_bytes(buf))


# Depth image encodings (registered to the colour image): units and pixel type.
DEPTH_ENCODINGS = {"16UC1": "<u2", "mono16": "<u2", "32FC1": "<f4"}


def depth_msg_to_array(msg: Image) -> np.ndarray:
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


def depth_msg_to_metres(msg: Image) -> np.ndarray:
    """A depth image as (H, W) float32 metres, NaN = unknown."""
    try:
        return to_metres(depth_msg_to_array(msg), source=f"depth image ({printable(msg.encoding)})")
    except DepthFileError as exc:
        raise ImageConversionError(str(exc)) from None
