"""sensor_msgs <-> numpy, and matching results -> standard ROS messages.

No rclpy here (message packages only), so everything is testable without a running ROS graph.

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
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import JpegImagePlugin, PngImagePlugin
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, PoseArray, PoseWithCovarianceStamped, Quaternion, Vector3
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from roma_ros.store import DepthFileError, to_metres
from roma_ros.imageio import quiet_opencv, to_uint8

__all__ = [
    "CameraInfoError",
    "DEPTH_ENCODINGS",
    "FRAME_FAULTS",
    "ImageConversionError",
    "INITIALPOSE_FLOOR",
    "MATCH_FIELDS",
    "MIN_IMAGE_SIDE",
    "SUPPORTED_ENCODINGS",
    "camera_info_intrinsics",
    "camera_info_to_camera",
    "compressed_msg_to_rgb",
    "depth_msg_to_array",
    "depth_msg_to_metres",
    "floor_initialpose_covariance",
    "image_msg_to_rgb",
    "match_markers",
    "matches_to_pointcloud2",
    "mono_to_image_msg",
    "msg_to_pose",
    "pointcloud2_to_matches",
    "pose_with_covariance_msg",
    "poses_to_pose_array",
    "rgb_to_compressed_msg",
    "rgb_to_image_msg",
]

# A pose as used throughout roma_ros: ((x, y, z), (qx, qy, qz, qw)).
PoseTuple = tuple[Sequence[float], Sequence[float]]

MARKER_NS = "roma_ros"

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
            f"corrupt or empty compressed image (format '{fmt}', {len(data)} bytes): no readable JPEG or PNG "
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
    image's maximum (see ``roma_ros.imageio.to_uint8``). Frames over ``max_pixels`` or with a side
    under ``min_side`` are rejected before any copy.
    """
    enc = _ALIASES.get(msg.encoding, msg.encoding)
    if enc not in _ENCODINGS:
        raise ImageConversionError(
            f"unsupported encoding '{msg.encoding}': publish rgb8, bgr8, rgba8, bgra8, mono8 or "
            "mono16, or use image/compressed", "encoding")
    channels, depth = _ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError(
            f"zero-size image ({w}x{h}, encoding '{msg.encoding}'): the publisher sent no pixels; "
            "check the camera driver", "size")
    check_frame_size(w, h, max_pixels, min_side, f"the {msg.encoding} frame")
    row_bytes = w * channels * depth
    if step < row_bytes:
        raise ImageConversionError(
            f"wrong step/size: step {step} < width {w} * {channels * depth} bytes per pixel "
            f"({msg.encoding}); set step to at least {row_bytes}", "size")
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
    plugin encodes; libpng/libjpeg complaints end up in the error, not on stderr.
    """
    buf = np.frombuffer(msg.data, np.uint8)
    if buf.size == 0:
        raise ImageConversionError(f"corrupt or empty compressed image (format '{msg.format}', 0 bytes): "
                                   "check the publisher", "corrupt")
    width, height = compressed_size(buf, msg.format)
    check_frame_size(width, height, max_pixels, min_side, f"the compressed frame (format '{msg.format}')")
    with quiet_opencv() as codec:
        try:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:  # OpenCV's own limits (CV_IO_MAX_IMAGE_PIXELS) and asserts
            img = None
            codec.append(str(exc).strip().splitlines()[-1])
    if img is None or img.size == 0 or img.shape[:2] != (height, width):
        said = f" ({'; '.join(codec)})" if codec else ""
        raise ImageConversionError(
            f"corrupt or empty compressed image (format '{msg.format}', {buf.size} bytes, header "
            f"{width}x{height}): OpenCV could not decode it{said}; check the publisher", "corrupt")
    if img.dtype != np.uint8:
        if img.dtype != np.uint16:
            raise ImageConversionError(
                f"unsupported compressed pixel type {img.dtype} (format '{msg.format}'): "
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


# ----------------------------------------------------------------------------------- matches

# Layout of ~/matches: name -> (offset, PointField datatype, numpy dtype), little-endian.
MATCH_FIELDS: dict[str, tuple[int, int, str]] = {
    "u_query": (0, PointField.FLOAT32, "<f4"),
    "v_query": (4, PointField.FLOAT32, "<f4"),
    "u_keyframe": (8, PointField.FLOAT32, "<f4"),
    "v_keyframe": (12, PointField.FLOAT32, "<f4"),
    "certainty": (16, PointField.FLOAT32, "<f4"),
    "keyframe_index": (20, PointField.UINT32, "<u4"),
}
_MATCH_DTYPE = np.dtype({"names": list(MATCH_FIELDS),
                         "formats": [f[2] for f in MATCH_FIELDS.values()],
                         "offsets": [f[0] for f in MATCH_FIELDS.values()], "itemsize": 24})

_POINTFIELD_DTYPES = {
    PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2",
    PointField.UINT16: "u2", PointField.INT32: "i4", PointField.UINT32: "u4",
    PointField.FLOAT32: "f4", PointField.FLOAT64: "f8",
}


def matches_to_pointcloud2(header: Header | None, kpts_query: np.ndarray,
                           kpts_keyframe: np.ndarray, certainty: np.ndarray,
                           keyframe_index: int | np.ndarray) -> PointCloud2:
    """One point per match (pixel coordinates of the original images) -> PointCloud2.

    A PointCloud2 with named fields is the standard message any ROS tool can read without our
    code (RViz ignores it without x/y/z, which is fine: it is data, not geometry). Zero matches
    give a valid empty cloud that still declares its fields, so subscribers see the layout.
    """
    q = np.asarray(kpts_query, np.float32).reshape(-1, 2)
    k = np.asarray(kpts_keyframe, np.float32).reshape(-1, 2)
    c = np.asarray(certainty, np.float32).reshape(-1)
    n = len(q)
    if len(k) != n or len(c) != n:
        raise ValueError(f"kpts_query ({len(q)}), kpts_keyframe ({len(k)}) and certainty "
                         f"({len(c)}) must have one row per match")
    idx = np.broadcast_to(np.asarray(keyframe_index, np.int64), (n,))
    if n and (idx.min() < 0 or idx.max() > np.iinfo(np.uint32).max):
        raise ValueError("keyframe_index must fit in uint32")
    pts = np.empty(n, _MATCH_DTYPE)
    pts["u_query"], pts["v_query"] = q[:, 0], q[:, 1]
    pts["u_keyframe"], pts["v_keyframe"] = k[:, 0], k[:, 1]
    pts["certainty"], pts["keyframe_index"] = c, idx
    fields = [PointField(name=name, offset=off, datatype=dt, count=1)
              for name, (off, dt, _) in MATCH_FIELDS.items()]
    return PointCloud2(header=_header(header), height=1, width=n, fields=fields,
                       is_bigendian=False, point_step=_MATCH_DTYPE.itemsize,
                       row_step=_MATCH_DTYPE.itemsize * n, data=_bytes(pts), is_dense=True)


def pointcloud2_to_matches(msg: PointCloud2) -> dict[str, np.ndarray]:
    """PointCloud2 -> {field name: 1-D array (native byte order)} for every field in the message.

    Reads the layout from ``fields``, ``point_step``, ``row_step`` and ``is_bigendian`` rather
    than assuming ours, so clouds from other producers (or a future layout) decode too.
    """
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in _POINTFIELD_DTYPES:
            raise ValueError(f"field '{f.name}' has unknown PointField datatype {f.datatype}")
        base = order + _POINTFIELD_DTYPES[f.datatype]
        names.append(f.name)
        formats.append(base if f.count <= 1 else (base, (f.count,)))
        offsets.append(f.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets,
                      "itemsize": int(msg.point_step)})
    h, w = int(msg.height), int(msg.width)
    if h * w == 0:
        return {name: np.empty((0,) + dtype[name].shape, dtype[name].base.newbyteorder("="))
                for name in names}
    if msg.row_step < w * msg.point_step or len(msg.data) < msg.row_step * h:
        raise ValueError(f"PointCloud2 too short: {len(msg.data)} bytes for {h} rows of "
                         f"row_step {msg.row_step} (width {w} * point_step {msg.point_step})")
    pts = np.ndarray((h, w), dtype, buffer=memoryview(msg.data),
                     strides=(int(msg.row_step), int(msg.point_step)))
    return {name: pts[name].reshape((h * w,) + dtype[name].shape)
            .astype(dtype[name].base.newbyteorder("=")) for name in names}


# ------------------------------------------------------------------------------ poses, markers

def _pose(pose: PoseTuple | None) -> Pose:
    """Tuple -> Pose; unknown or non-finite poses become identity, quaternions are normalised
    (RViz rejects unnormalised ones)."""
    if pose is None:
        return Pose(orientation=Quaternion(w=1.0))
    xyz = np.asarray(pose[0], np.float64).reshape(3)
    quat = np.asarray(pose[1], np.float64).reshape(4)
    norm = float(np.linalg.norm(quat))
    if not (np.isfinite(xyz).all() and np.isfinite(quat).all()) or norm < 1e-12:
        return Pose(orientation=Quaternion(w=1.0))
    quat = quat / norm
    return Pose(position=Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
                orientation=Quaternion(x=float(quat[0]), y=float(quat[1]), z=float(quat[2]),
                                       w=float(quat[3])))


def poses_to_pose_array(header: Header | None,
                        poses: Sequence[PoseTuple | None]) -> PoseArray:
    """Keyframe poses ((x, y, z), (qx, qy, qz, qw)) -> PoseArray, index-aligned with
    ``keyframe_index`` in ~/matches.

    A keyframe without a (finite) pose still takes its slot, as the identity pose: dropping it
    would shift every later index. Consumers that need to tell them apart use the keyframe store.
    """
    return PoseArray(header=_header(header), poses=[_pose(p) for p in poses])


def match_markers(header_frame_id: str, stamp: Time, keyframe_name: str,
                  keyframe_pose: PoseTuple | None, accepted: bool, text: str,
                  query_pose: PoseTuple | None = None, optical: bool = True) -> MarkerArray:
    """Markers for the latest decision: DELETEALL (clears the previous frame's markers), a text
    label (green: accepted; red: "no match"), a sphere at the keyframe's pose when known, and an
    arrow at the published query pose (along the viewing direction: z of an ``optical`` camera
    frame, else x of a base frame).

    The label stands above the keyframe pose, or at the frame origin when the pose is unknown.
    """
    header = Header(frame_id=header_frame_id, stamp=stamp)
    color = (ColorRGBA(r=0.1, g=0.85, b=0.1, a=1.0) if accepted
             else ColorRGBA(r=0.9, g=0.1, b=0.1, a=1.0))
    detail = ": ".join(s for s in (keyframe_name, text) if s)
    label = (detail or "match") if accepted else ("no match" + (f" ({detail})" if detail else ""))
    pose = _pose(keyframe_pose)
    text_pose = Pose(position=Point(x=pose.position.x, y=pose.position.y,
                                    z=pose.position.z + (0.4 if keyframe_pose else 0.0)),
                     orientation=Quaternion(w=1.0))
    markers = [
        Marker(header=header, ns=MARKER_NS, id=0, action=Marker.DELETEALL),
        Marker(header=header, ns=MARKER_NS, id=0, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
               pose=text_pose, color=color, text=label,
               scale=Vector3(z=0.25)),
    ]
    if keyframe_pose is not None:
        markers.append(Marker(header=header, ns=MARKER_NS, id=1, type=Marker.SPHERE,
                              action=Marker.ADD, pose=pose, scale=Vector3(x=0.3, y=0.3, z=0.3),
                              color=ColorRGBA(r=color.r, g=color.g, b=color.b, a=0.6)))
    if query_pose is not None:
        arrow = _pose(query_pose)
        if optical:  # a marker arrow points along its x axis: turn x onto the optical z axis
            from roma_ros.pose import matrix_from_quaternion, quaternion_from_matrix

            o = arrow.orientation
            x_to_z = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # -90 deg about y
            turned = quaternion_from_matrix(matrix_from_quaternion([o.x, o.y, o.z, o.w]) @ x_to_z)
            arrow.orientation = Quaternion(x=turned[0], y=turned[1], z=turned[2], w=turned[3])
        markers.append(Marker(header=header, ns=MARKER_NS, id=2, type=Marker.ARROW, action=Marker.ADD,
                              pose=arrow, scale=Vector3(x=0.6, y=0.08, z=0.08),
                              color=ColorRGBA(r=0.1, g=0.4, b=1.0, a=0.9)))
    return MarkerArray(markers=markers)



# ------------------------------------------------------------------ camera_info, depth, poses

class CameraInfoError(ValueError):
    """A CameraInfo that cannot serve as intrinsics; the message says why."""


# Distortion models whose ``d`` vector OpenCV takes as it is (k1 k2 p1 p2 k3 [k4 k5 k6]).
OPENCV_DISTORTION_MODELS = ("plumb_bob", "rational_polynomial")


def camera_info_intrinsics(msg: CameraInfo) -> dict:
    """CameraInfo -> ``{fx, fy, cx, cy[, distortion]}`` in the ROS/OpenCV convention (pixel
    centres at integers, as keyframes.yaml stores them). All-zero distortion is left out."""
    k = [float(v) for v in msg.k]
    fx, fy, cx, cy = k[0], k[4], k[2], k[5]
    if not (np.isfinite([fx, fy, cx, cy]).all() and fx > 0 and fy > 0):
        raise CameraInfoError(f"camera_info K has fx={fx}, fy={fy}: the camera is not calibrated "
                              "(or K is not row-major 3x3); calibrate it or set query_intrinsics")
    d = [float(v) for v in msg.d]
    intrinsics = {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
    if any(v != 0.0 for v in d):
        if msg.distortion_model not in OPENCV_DISTORTION_MODELS:
            raise CameraInfoError(f"camera_info distortion model '{msg.distortion_model}' is not supported: "
                                  f"use {' or '.join(OPENCV_DISTORTION_MODELS)}, or rectified images")
        if not np.isfinite(d).all():
            raise CameraInfoError("camera_info distortion coefficients must be finite")
        intrinsics["distortion"] = d
    if int(msg.binning_x) > 1 or int(msg.binning_y) > 1 or int(msg.roi.width) or int(msg.roi.height):
        raise CameraInfoError("camera_info with binning or a region of interest is not supported: "
                              "publish the intrinsics of the image as sent")
    return intrinsics


def camera_info_to_camera(msg: CameraInfo):
    """CameraInfo -> ``pose.CameraModel`` (cx, cy shifted once to our pixel-centre frame)."""
    from roma_ros.pose import CameraModel

    k = camera_info_intrinsics(msg)
    camera = CameraModel.from_ros(k["fx"], k["fy"], k["cx"], k["cy"], k.get("distortion", ()))
    try:
        camera.validate()
    except ValueError as exc:
        raise CameraInfoError(f"camera_info: {exc}") from None
    return camera


# Depth image encodings (registered to the colour image): units and pixel type.
DEPTH_ENCODINGS = {"16UC1": "<u2", "mono16": "<u2", "32FC1": "<f4"}


def depth_msg_to_array(msg: Image) -> np.ndarray:
    """sensor_msgs/Image 16UC1 (mm, 0 = unknown) or 32FC1 (m, NaN/0 = unknown) -> a fresh
    (H, W) array as stored: uint16 millimetres or float32 metres (``depth.to_metres`` converts)."""
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ImageConversionError(f"unsupported depth encoding '{msg.encoding}': publish 16UC1 (mm) or 32FC1 (m)")
    dtype = np.dtype(DEPTH_ENCODINGS[msg.encoding])
    if msg.is_bigendian:
        dtype = dtype.newbyteorder(">")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError(f"zero-size depth image ({w}x{h})")
    if step < w * dtype.itemsize or len(msg.data) < step * h:
        raise ImageConversionError(f"wrong depth step/size: step {step}, width {w}, height {h}, "
                                   f"{len(msg.data)} bytes of data ({msg.encoding})")
    view = np.ndarray((h, w), dtype, buffer=memoryview(msg.data), strides=(step, dtype.itemsize))
    return view.astype(dtype.newbyteorder("="))


def depth_msg_to_metres(msg: Image) -> np.ndarray:
    """A depth image as (H, W) float32 metres, NaN = unknown."""
    try:
        return to_metres(depth_msg_to_array(msg), source=f"depth image ({msg.encoding})")
    except DepthFileError as exc:
        raise ImageConversionError(str(exc)) from None


def msg_to_pose(msg: Pose) -> PoseTuple:
    """geometry_msgs/Pose -> ((x, y, z), (qx, qy, qz, qw)) with a unit quaternion; ValueError when
    not finite or the quaternion is zero."""
    xyz = (float(msg.position.x), float(msg.position.y), float(msg.position.z))
    q = np.array([msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w], np.float64)
    norm = float(np.linalg.norm(q))
    if not (np.isfinite(xyz).all() and np.isfinite(q).all()) or norm < 1e-6:
        raise ValueError(f"pose {xyz} {q.tolist()} is not finite or has a zero quaternion")
    return xyz, tuple(float(v) for v in q / norm)


def pose_with_covariance_msg(header: Header, pose: PoseTuple, covariance: np.ndarray) -> PoseWithCovarianceStamped:
    """PoseWithCovarianceStamped (covariance 6x6, ROS order). A covariance with a non-finite
    entry is unknown: it goes out as a large diagonal (1e6), which consumers read as "no idea"."""
    msg = PoseWithCovarianceStamped(header=header)
    msg.pose.pose = _pose(pose)
    cov = np.asarray(covariance, np.float64).reshape(6, 6)
    if not np.isfinite(cov).all():
        cov = np.diag(np.full(6, 1e6))
    msg.pose.covariance = [float(v) for v in cov.ravel()]
    return msg


# RViz's "2D Pose Estimate" covariance: x, y 0.25 m^2 (0.5 m std), yaw 0.0685 rad^2 (15 deg std).
INITIALPOSE_FLOOR = {0: 0.25, 7: 0.25, 35: 0.06853891945200942}


def floor_initialpose_covariance(covariance: np.ndarray) -> np.ndarray:
    """The covariance with the x, y and yaw variances raised to at least RViz's 2D Pose Estimate
    values, so AMCL spreads its particles at least as much as after a click in RViz."""
    cov = np.asarray(covariance, np.float64).reshape(6, 6).copy()
    flat = cov.reshape(-1)
    for index, floor in INITIALPOSE_FLOOR.items():
        flat[index] = max(flat[index], floor) if np.isfinite(flat[index]) else floor
    return cov
