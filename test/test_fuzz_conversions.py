"""Property-based fuzzing of the message conversions: over random messages, raw and compressed
images give a valid RGB array or ImageConversionError, depth images an (H, W) array or
ImageConversionError, camera_info a camera that passes every gate or CameraInfoError; nothing else."""
from __future__ import annotations

import array
import os
import struct
import zlib

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from roma_ros.ros.conversions import (
    DEPTH_ENCODINGS, FRAME_FAULTS, MIN_IMAGE_SIDE, SUPPORTED_ENCODINGS, CameraInfoError, ImageConversionError,
    camera_info_to_camera, compressed_msg_to_rgb, depth_msg_to_array, depth_msg_to_metres, image_msg_to_rgb,
)

MAX_PIXELS = 64 * 64
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 300)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def check(convert, msg, **limits) -> None:
    try:
        rgb = convert(msg, **limits)
    except ImageConversionError as exc:
        assert exc.kind in FRAME_FAULTS and str(exc)
        return
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.flags.c_contiguous and rgb.size > 0
    if limits:
        h, w = rgb.shape[:2]
        assert h * w <= limits["max_pixels"] and min(h, w) >= limits["min_side"]


raw_messages = st.builds(
    lambda enc, h, w, pad, bigendian, extra, seed: _raw(enc, h, w, pad, bigendian, extra, seed),
    st.sampled_from(SUPPORTED_ENCODINGS + ("yuv422", "", "32FC1", "rgb16")),
    st.integers(-2, 80), st.integers(-2, 80), st.integers(-8, 8), st.booleans(), st.integers(-50, 50),
    st.integers(0, 2**31))


def _raw(enc: str, h: int, w: int, pad: int, bigendian: bool, extra: int, seed: int) -> Image:
    """A message whose fields may all disagree: step vs width, data vs step * height."""
    bpp = {"mono16": 2, "rgb8": 3, "bgr8": 3, "8UC3": 3, "rgba8": 4, "bgra8": 4}.get(enc, 1)
    step = max(0, max(w, 0) * bpp + pad)
    size = max(0, step * max(h, 0) + extra)
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    msg = Image(height=max(h, 0), width=max(w, 0), encoding=enc, is_bigendian=int(bigendian), step=step)
    msg.data = array.array("B", data)
    return msg


@FUZZ
@given(raw_messages, st.booleans())
def test_raw_conversion_returns_rgb_or_a_conversion_error(msg, limited):
    check(image_msg_to_rgb, msg, **({"max_pixels": MAX_PIXELS, "min_side": MIN_IMAGE_SIDE} if limited else {}))


def _encoded(h: int, w: int, fmt: str, gray16: bool, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 65535, (h, w), dtype=np.uint16) if gray16 else rng.integers(0, 256, (h, w, 3), np.uint8)
    ok, buf = cv2.imencode(".png" if gray16 or fmt == "png" else ".jpg", img)
    assert ok
    return buf.tobytes()


def _png_with_header(width: int, height: int, body: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


@st.composite
def compressed_payloads(draw) -> bytes:
    kind = draw(st.sampled_from(["valid", "mutated", "truncated", "random", "header_lies"]))
    if kind == "random":
        return draw(st.binary(max_size=2000))
    if kind == "header_lies":  # a PNG header claiming any size, over a body of any length
        return _png_with_header(draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1)),
                                draw(st.binary(max_size=200)))
    data = _encoded(draw(st.integers(1, 70)), draw(st.integers(1, 70)), draw(st.sampled_from(["png", "jpeg"])),
                    draw(st.booleans()), draw(st.integers(0, 2**31)))
    if kind == "truncated":
        return data[:draw(st.integers(0, len(data)))]
    if kind == "mutated":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        return bytes(buf)
    return data


@FUZZ
@given(compressed_payloads(), st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", ""]), st.booleans())
def test_compressed_conversion_returns_rgb_or_a_conversion_error(data, fmt, limited):
    msg = CompressedImage(format=fmt, data=array.array("B", data))
    check(compressed_msg_to_rgb, msg, **({"max_pixels": MAX_PIXELS, "min_side": MIN_IMAGE_SIDE} if limited else {}))


# ------------------------------------------------------------------ camera_info and depth messages
finite_or_not = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                          st.sampled_from([0.0, 1.0, -1.0, 1e6, -1e6, 1e-300]))


@st.composite
def camera_infos(draw) -> CameraInfo:
    """Any K (usually plausible, sometimes absurd), any distortion model and vector, any size."""
    plausible = draw(st.booleans())
    if plausible:
        f = draw(st.floats(50, 2000))
        k = [f, 0.0, draw(st.floats(0, 1000)), 0.0, f * draw(st.floats(0.5, 2)), draw(st.floats(0, 1000)),
             0.0, 0.0, 1.0]
    else:
        k = draw(st.lists(finite_or_not, min_size=9, max_size=9))
    n = draw(st.sampled_from([0, 1, 4, 5, 8, 12, 14, 3]))
    small = st.floats(-2, 2)
    d = draw(st.lists(small if draw(st.booleans()) else finite_or_not, min_size=n, max_size=n))
    return CameraInfo(width=draw(st.integers(0, 5000)), height=draw(st.integers(0, 5000)), k=k, d=d,
                      distortion_model=draw(st.sampled_from(["plumb_bob", "rational_polynomial", "equidistant",
                                                             "", "x\n[FATAL]"])),
                      binning_x=draw(st.sampled_from([0, 0, 1, 2])))


@FUZZ
@given(camera_infos())
def test_camera_info_gives_a_sane_camera_or_a_camera_info_error(msg):
    """Whatever a publisher sends, the node gets a camera that passes every gate (valid, size
    known, distortion sane for that size) or a CameraInfoError with a one-line reason."""
    try:
        camera = camera_info_to_camera(msg)
    except CameraInfoError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    camera.validate()
    camera.check_for_image(msg.width, msg.height)
    assert msg.width > 0 and msg.height > 0
    pts = np.array([[0.0, 0.0], [msg.width, msg.height], [msg.width / 2, msg.height / 2]])
    assert np.isfinite(camera.normalized(pts)).all()


@st.composite
def depth_messages(draw) -> Image:
    enc = draw(st.sampled_from(list(DEPTH_ENCODINGS) + ["32FC3", "", "rgb8"]))
    h, w = draw(st.integers(-2, 40)), draw(st.integers(-2, 40))
    itemsize = 4 if enc.startswith("32F") else 2
    step = max(0, max(w, 0) * itemsize + draw(st.integers(-8, 8)))
    size = max(0, step * max(h, 0) + draw(st.integers(-20, 20)))
    data = np.random.default_rng(draw(st.integers(0, 2**31))).integers(0, 256, size, dtype=np.uint8).tobytes()
    msg = Image(height=max(h, 0), width=max(w, 0), encoding=enc, is_bigendian=int(draw(st.booleans())), step=step)
    msg.data = array.array("B", data)
    return msg


@FUZZ
@given(depth_messages())
def test_depth_message_gives_an_array_or_a_conversion_error(msg):
    try:
        depth = depth_msg_to_array(msg)
        metres = depth_msg_to_metres(msg)
    except ImageConversionError as exc:
        assert str(exc)
        return
    assert depth.shape == metres.shape == (msg.height, msg.width) and depth.size > 0
    assert metres.dtype == np.float32 and not (metres[np.isfinite(metres)] < 0).any()
