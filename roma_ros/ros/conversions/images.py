"""sensor_msgs/Image and CompressedImage <-> numpy, with the size guards that keep memory
bounded per frame, and depth images -> arrays. The decoders live in ``roma_ros.core.imagemsg``
(no ROS needed there, so recordings read with ``rosbags`` use them too) and are re-exported here.

cv_bridge is deliberately not used even where it imports: one code path on every install keeps
conversions identical (and tested) on pip-only machines, where no working cv_bridge exists, and on
ROS distros alike.

Byte buffers are always handed to messages as ``array.array('B', ...)``: that is the type the
generated setters store, and the only input they accept without a per-element Python check on
distros that validate fields (Humble/Jazzy), which would take ~0.1 s for one 640x480 image.
"""

from __future__ import annotations

import array

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from roma_ros.core.imagemsg import (  # noqa: F401  (re-exported: the conversions API is unchanged)
    _ENCODINGS, DEPTH_ENCODINGS, FRAME_FAULTS, MIN_IMAGE_SIDE, SUPPORTED_ENCODINGS, ImageConversionError,
    check_frame_size, compressed_msg_to_rgb, compressed_size, depth_msg_to_array, image_msg_to_rgb,
)
from roma_ros.core.text import printable
from roma_ros.store import DepthFileError, to_metres


def _header(header: Header | None) -> Header:
    return header if header is not None else Header()


def _bytes(arr: np.ndarray) -> array.array:
    return array.array("B", np.ascontiguousarray(arr).tobytes())


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


def depth_msg_to_metres(msg: Image) -> np.ndarray:
    """A depth image as (H, W) float32 metres, NaN = unknown."""
    try:
        return to_metres(depth_msg_to_array(msg), source=f"depth image ({printable(msg.encoding)})")
    except DepthFileError as exc:
        raise ImageConversionError(str(exc)) from None
