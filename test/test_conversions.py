"""roma_ros.ros.conversions with real message objects: pixel values, layouts, errors, serialization."""

import array

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseArray
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from roma_ros.ros.conversions import (
    ImageConversionError,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    match_markers,
    matches_to_pointcloud2,
    mono_to_image_msg,
    pointcloud2_to_matches,
    poses_to_pose_array,
    rgb_to_compressed_msg,
    rgb_to_image_msg,
)

H, W = 48, 64


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    img[0, 0] = (255, 0, 0)  # pure red
    img[0, 1] = (0, 255, 0)  # pure green
    img[0, 2] = (0, 0, 255)  # pure blue
    return img


def raw_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """Build an Image by hand (not via our encoder), with ``pad`` junk bytes after every row."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    if pixels.dtype == np.uint16:
        rows = rows.astype(">u2" if bigendian else "<u2")
    rows = rows.view(np.uint8).reshape(h, -1)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                 step=padded.shape[1], data=array.array("B", padded.tobytes()))


def gray_of(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


# ---------------------------------------------------------------------------- raw images

@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("encoding,to_layout", [
    ("rgb8", lambda im: im),
    ("bgr8", lambda im: im[..., ::-1]),
    ("8UC3", lambda im: im[..., ::-1]),
    ("rgba8", lambda im: np.dstack([im, np.full(im.shape[:2], 7, np.uint8)])),
    ("bgra8", lambda im: np.dstack([im[..., ::-1], np.full(im.shape[:2], 7, np.uint8)])),
])
def test_color_encodings_hand_built(rgb, encoding, to_layout, pad):
    msg = raw_msg(np.ascontiguousarray(to_layout(rgb)), encoding, pad)
    out = image_msg_to_rgb(msg)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_color_round_trip_through_encoder(rgb, encoding):
    msg = rgb_to_image_msg(rgb, Header(frame_id="cam"), encoding)
    assert msg.encoding == encoding and msg.header.frame_id == "cam"
    assert msg.step == W * (4 if "a" in encoding else 3)
    np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)


def test_red_pixel_in_bgr8_is_red():
    msg = Image(height=1, width=2, encoding="bgr8", step=6,
                data=array.array("B", [0, 0, 255, 255, 0, 0]))  # BGR: red, blue
    out = image_msg_to_rgb(msg)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [0, 0, 255]
    # and the encoder writes red as B=0, G=0, R=255
    enc = rgb_to_image_msg(np.array([[[255, 0, 0]]], np.uint8), encoding="bgr8")
    assert list(enc.data) == [0, 0, 255]


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8(rgb, encoding, pad):
    gray = gray_of(rgb)
    out = image_msg_to_rgb(raw_msg(gray, encoding, pad))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    np.testing.assert_array_equal(image_msg_to_rgb(rgb_to_image_msg(rgb, encoding="mono8")),
                                  np.dstack([gray] * 3))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 6])
def test_mono16(rgb, pad, bigendian):
    gray = gray_of(rgb)
    gray[0, 0] = 255
    # 12-bit data (v << 4, max 4080) scales back to v exactly; its bytes are not palindromes,
    # so a byte-order mistake shows
    msg = raw_msg(gray.astype(np.uint16) << 4, "mono16", pad, bigendian)
    out = image_msg_to_rgb(msg)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 2], gray)
    full = raw_msg(gray.astype(np.uint16) * 257, "mono16", pad, bigendian)  # full 16-bit range
    np.testing.assert_array_equal(image_msg_to_rgb(full)[..., 1], gray)


def test_mono16_12bit_is_scaled_by_its_max_not_shifted():
    img12 = np.array([[0, 1024, 2048, 4095]], np.uint16)
    out = image_msg_to_rgb(raw_msg(img12, "mono16"))
    assert out[0, :, 0].tolist() == [0, 64, 128, 255]  # >> 8 would give [0, 4, 8, 15]
    black = image_msg_to_rgb(raw_msg(np.zeros((2, 2), np.uint16), "mono16"))
    assert black.shape == (2, 2, 3) and not black.any()


def test_mono16_encoder_round_trip(rgb):
    gray = gray_of(rgb)
    gray[0, 0] = 255
    msg = rgb_to_image_msg(np.dstack([gray] * 3), encoding="mono16")
    assert msg.step == W * 2 and msg.is_bigendian == 0
    np.testing.assert_array_equal(image_msg_to_rgb(msg)[..., 1], gray)
    m16 = mono_to_image_msg(np.array([[0, 65535]], np.uint16), encoding="mono16")
    assert image_msg_to_rgb(m16)[0, :, 0].tolist() == [0, 255]


def test_result_does_not_share_message_memory(rgb):
    msg = rgb_to_image_msg(rgb)
    out = image_msg_to_rgb(msg)
    out[:] = 0
    np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)


def test_serialized_image_round_trip(rgb):
    msg = raw_msg(rgb[..., ::-1].copy(), "bgr8", pad=4)
    back = deserialize_message(serialize_message(msg), Image)
    np.testing.assert_array_equal(image_msg_to_rgb(back), rgb)


# ------------------------------------------------------------------------------ image errors

def test_unsupported_encoding():
    msg = Image(height=2, width=2, encoding="yuv422", step=4, data=array.array("B", bytes(8)))
    with pytest.raises(ImageConversionError, match="unsupported encoding 'yuv422'") as e:
        image_msg_to_rgb(msg)
    assert "image/compressed" in str(e.value) and "rgb8" in str(e.value)


def test_step_smaller_than_row():
    msg = Image(height=2, width=4, encoding="rgb8", step=8, data=array.array("B", bytes(24)))
    with pytest.raises(ImageConversionError, match="wrong step/size.*step 8"):
        image_msg_to_rgb(msg)


def test_truncated_data(rgb):
    msg = rgb_to_image_msg(rgb)
    msg.data = msg.data[:-1]
    with pytest.raises(ImageConversionError, match="wrong step/size.*truncated"):
        image_msg_to_rgb(msg)


@pytest.mark.parametrize("h,w", [(0, 4), (4, 0), (0, 0)])
def test_zero_size_image(h, w):
    msg = Image(height=h, width=w, encoding="rgb8", step=w * 3)
    with pytest.raises(ImageConversionError, match="zero-size"):
        image_msg_to_rgb(msg)


def test_errors_are_value_errors():
    assert issubclass(ImageConversionError, ValueError)


# ------------------------------------------------------------------------ compressed images

def test_jpeg_round_trip(rgb):
    smooth = cv2.GaussianBlur(rgb, (0, 0), 3)  # JPEG is lossy; smooth content compresses well
    msg = rgb_to_compressed_msg(smooth, Header(frame_id="cam"), "jpeg", quality=95)
    assert msg.format == "rgb8; jpeg compressed bgr8" and msg.header.frame_id == "cam"
    assert bytes(msg.data[:2]) == b"\xff\xd8"
    out = compressed_msg_to_rgb(msg)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth).mean() < 4


def test_jpeg_keeps_colour_order():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    out = compressed_msg_to_rgb(rgb_to_compressed_msg(red, fmt="jpg"))
    r, g, b = out[8, 8].astype(int)
    assert r > 240 and g < 15 and b < 15


def test_png_round_trip_is_lossless(rgb):
    msg = rgb_to_compressed_msg(rgb, fmt="png")
    assert msg.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(compressed_msg_to_rgb(msg), rgb)


def test_gray_png(rgb):
    gray = gray_of(rgb)
    msg = rgb_to_compressed_msg(gray, fmt="png")
    assert msg.format == "mono8; png compressed mono8"
    np.testing.assert_array_equal(compressed_msg_to_rgb(msg), np.dstack([gray] * 3))


def test_16bit_png_is_scaled_to_8bit():
    img = np.array([[0, 1000], [2000, 4000]], np.uint16)
    msg = rgb_to_compressed_msg(img, fmt="png")
    assert msg.format == "mono16; png compressed mono16"
    out = compressed_msg_to_rgb(msg)
    assert out.dtype == np.uint8 and out[..., 0].tolist() == [[0, 64], [128, 255]]
    # a 16-bit colour png written by someone else (BGR order on disk via OpenCV)
    bgr16 = np.zeros((2, 2, 3), np.uint16)
    bgr16[0, 0] = (0, 0, 65535)  # red
    ok, buf = cv2.imencode(".png", bgr16)
    png16 = CompressedImage(format="png", data=array.array("B", buf.tobytes()))
    out = compressed_msg_to_rgb(png16)
    assert out[0, 0].tolist() == [255, 0, 0] and out[1, 1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe0garbage" * 10])
def test_corrupt_or_empty_jpeg(data):
    msg = CompressedImage(format="jpeg", data=array.array("B", data))
    expected = r"corrupt or empty compressed image \(format 'jpeg'"
    with pytest.raises(ImageConversionError, match=expected):
        compressed_msg_to_rgb(msg)


def test_truncated_jpeg(rgb):
    msg = rgb_to_compressed_msg(rgb)
    msg.data = msg.data[:20]
    with pytest.raises(ImageConversionError, match="corrupt or empty"):
        compressed_msg_to_rgb(msg)


# ------------------------------------------------------------------------------- PointCloud2

EXPECTED_FIELDS = [
    ("u_query", 0, PointField.FLOAT32), ("v_query", 4, PointField.FLOAT32),
    ("u_keyframe", 8, PointField.FLOAT32), ("v_keyframe", 12, PointField.FLOAT32),
    ("certainty", 16, PointField.FLOAT32), ("keyframe_index", 20, PointField.UINT32),
]


def assert_layout(msg: PointCloud2, n: int):
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == \
        [(name, off, dt, 1) for name, off, dt in EXPECTED_FIELDS]
    assert PointField.FLOAT32 == 7 and PointField.UINT32 == 6
    assert msg.point_step == 24 and msg.height == 1 and msg.width == n
    assert msg.row_step == 24 * n and len(msg.data) == 24 * n
    assert msg.is_dense and not msg.is_bigendian


def test_empty_cloud():
    msg = matches_to_pointcloud2(Header(frame_id="cam"), np.zeros((0, 2)), np.zeros((0, 2)),
                                 np.zeros(0), 3)
    assert_layout(msg, 0)
    back = pointcloud2_to_matches(deserialize_message(serialize_message(msg), PointCloud2))
    assert set(back) == {name for name, _, _ in EXPECTED_FIELDS}
    assert all(len(v) == 0 for v in back.values())
    assert back["keyframe_index"].dtype == np.uint32


@pytest.mark.parametrize("per_point_index", [False, True])
def test_cloud_round_trip_1000(per_point_index):
    rng = np.random.default_rng(1)
    n = 1000
    kq = rng.uniform(0, 640, (n, 2)).astype(np.float32)
    kk = rng.uniform(0, 480, (n, 2)).astype(np.float32)
    cert = rng.uniform(0, 1, n).astype(np.float32)
    idx = rng.integers(0, 50, n) if per_point_index else 7
    header = Header(frame_id="camera_optical", stamp=Time(sec=12, nanosec=345))
    msg = matches_to_pointcloud2(header, kq, kk, cert, idx)
    assert_layout(msg, n)
    assert msg.header.frame_id == "camera_optical" and msg.header.stamp.nanosec == 345

    back_msg = deserialize_message(serialize_message(msg), PointCloud2)
    assert back_msg.header.stamp.sec == 12
    assert_layout(back_msg, n)
    back = pointcloud2_to_matches(back_msg)
    np.testing.assert_array_equal(back["u_query"], kq[:, 0])
    np.testing.assert_array_equal(back["v_query"], kq[:, 1])
    np.testing.assert_array_equal(back["u_keyframe"], kk[:, 0])
    np.testing.assert_array_equal(back["v_keyframe"], kk[:, 1])
    np.testing.assert_array_equal(back["certainty"], cert)
    np.testing.assert_array_equal(back["keyframe_index"], np.broadcast_to(idx, n))
    assert back["u_query"].dtype == np.float32 and back["keyframe_index"].dtype == np.uint32
    # raw bytes: the first point's u_query is a little-endian float32 at offset 0
    assert np.frombuffer(bytes(msg.data[:4]), "<f4")[0] == kq[0, 0]


def test_cloud_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one row per match"):
        matches_to_pointcloud2(None, np.zeros((3, 2)), np.zeros((2, 2)), np.zeros(3), 0)
    with pytest.raises(ValueError, match="uint32"):
        matches_to_pointcloud2(None, np.zeros((1, 2)), np.zeros((1, 2)), np.zeros(1), -1)


def test_reader_uses_declared_layout_not_ours():
    """A foreign cloud: other field order, padding, big-endian, 2 rows with row padding."""
    dtype = np.dtype({"names": ["certainty", "u_query", "keyframe_index"],
                      "formats": [">f8", ">f4", ">u2"], "offsets": [8, 0, 4], "itemsize": 20})
    pts = np.zeros((2, 3), dtype)
    pts["certainty"] = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]
    pts["u_query"] = [[1, 2, 3], [4, 5, 6]]
    pts["keyframe_index"] = [[9, 8, 7], [6, 5, 4]]
    rows = np.concatenate([pts.view(np.uint8).reshape(2, 60), np.zeros((2, 4), np.uint8)], 1)
    msg = PointCloud2(height=2, width=3, is_bigendian=True, point_step=20, row_step=64,
                      fields=[PointField(name="u_query", offset=0, datatype=PointField.FLOAT32,
                                         count=1),
                              PointField(name="keyframe_index", offset=4,
                                         datatype=PointField.UINT16, count=1),
                              PointField(name="certainty", offset=8,
                                         datatype=PointField.FLOAT64, count=1)],
                      data=array.array("B", rows.tobytes()))
    back = pointcloud2_to_matches(msg)
    assert back["u_query"].tolist() == [1, 2, 3, 4, 5, 6]
    assert back["keyframe_index"].tolist() == [9, 8, 7, 6, 5, 4]
    np.testing.assert_allclose(back["certainty"], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


# ----------------------------------------------------------------------- poses and markers

def test_pose_array_is_index_aligned():
    poses = [((1.0, 2.0, 3.0), (0.0, 0.0, 0.0, 2.0)), None,
             ((float("nan"), 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)),
             ((4.0, 5.0, 6.0), (0.0, 0.0, 1.0, 1.0))]
    msg = poses_to_pose_array(Header(frame_id="map"), poses)
    assert isinstance(msg, PoseArray) and len(msg.poses) == 4 and msg.header.frame_id == "map"
    p0, p1, p2, p3 = msg.poses
    assert (p0.position.x, p0.position.y, p0.position.z) == (1.0, 2.0, 3.0)
    assert p0.orientation.w == 1.0  # normalised
    for unknown in (p1, p2):  # identity, NaN-free
        assert (unknown.position.x, unknown.position.y, unknown.position.z) == (0.0, 0.0, 0.0)
        assert (unknown.orientation.x, unknown.orientation.w) == (0.0, 1.0)
    assert (p3.orientation.z, p3.orientation.w) == pytest.approx((2 ** -0.5, 2 ** -0.5))
    assert deserialize_message(serialize_message(msg), PoseArray).poses[3].position.z == 6.0


def test_markers_accepted_with_pose():
    stamp = Time(sec=5)
    msg = match_markers("map", stamp, "kf_003", ((1.0, 2.0, 0.5), (0, 0, 0, 1)), True,
                        "412 inliers")
    assert isinstance(msg, MarkerArray)
    kinds = [(m.type, m.action) for m in msg.markers]
    assert kinds[0][1] == Marker.DELETEALL
    assert (Marker.TEXT_VIEW_FACING, Marker.ADD) in kinds and (Marker.SPHERE, Marker.ADD) in kinds
    assert all(m.ns == "roma_ros" and m.header.frame_id == "map" and m.header.stamp.sec == 5
               for m in msg.markers)
    text = next(m for m in msg.markers if m.type == Marker.TEXT_VIEW_FACING)
    assert "kf_003" in text.text and "412 inliers" in text.text and "no match" not in text.text
    assert text.color.g > 0.5 and text.color.r < 0.5 and text.color.a == 1.0
    assert text.scale.z > 0
    sphere = next(m for m in msg.markers if m.type == Marker.SPHERE)
    assert (sphere.pose.position.x, sphere.pose.position.y) == (1.0, 2.0)
    assert sphere.color.g > 0.5 and sphere.scale.x > 0
    assert len({m.id for m in msg.markers if m.action == Marker.ADD}) == 2
    deserialize_message(serialize_message(msg), MarkerArray)


def test_markers_rejected_without_pose():
    msg = match_markers("map", Time(), "kf_001", None, False, "12 inliers")
    assert [m.action for m in msg.markers] == [Marker.DELETEALL, Marker.ADD]
    text = msg.markers[1]
    assert text.type == Marker.TEXT_VIEW_FACING
    assert text.text.startswith("no match") and "12 inliers" in text.text
    assert text.color.r > 0.5 and text.color.g < 0.5
    assert not any(m.type == Marker.SPHERE for m in msg.markers)
    assert match_markers("map", Time(), "", None, False, "").markers[1].text == "no match"


def test_png_with_alpha_drops_alpha_keeps_colour():
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[0, 0] = (0, 0, 255, 128)  # red, half transparent
    ok, buf = cv2.imencode(".png", bgra)
    png = CompressedImage(format="png", data=array.array("B", buf.tobytes()))
    out = compressed_msg_to_rgb(png)
    assert out.shape == (2, 2, 3) and out[0, 0].tolist() == [255, 0, 0]


# ----------------------------------------------------------- camera_info, depth images, poses

def camera_info(fx=500.0, fy=510.0, cx=319.5, cy=239.5, d=(), model="plumb_bob", w=640, h=480):
    from sensor_msgs.msg import CameraInfo

    return CameraInfo(width=w, height=h, k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0], d=list(d),
                      distortion_model=model)


def test_camera_info_shifts_the_principal_point_once_and_keeps_distortion():
    from roma_ros.ros.conversions import camera_info_intrinsics, camera_info_to_camera

    camera = camera_info_to_camera(camera_info())
    # CameraInfo puts pixel centres at integers; ours are at +0.5: the centre of a 640x480 image.
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (500.0, 510.0, 320.0, 240.0)
    assert not camera.distorted and camera_info_intrinsics(camera_info()) == {
        "fx": 500.0, "fy": 510.0, "cx": 319.5, "cy": 239.5}
    d = (-0.2, 0.05, 0.001, -0.002, 0.01)
    assert camera_info_to_camera(camera_info(d=d)).distortion == d
    d8 = d + (0.1, 0.0, 0.02)
    rational = camera_info(d=d8, model="rational_polynomial")
    assert camera_info_to_camera(rational).distortion == d8
    assert camera_info_intrinsics(rational)["distortion"] == list(d8)
    # All-zero coefficients of any model are no distortion.
    assert not camera_info_to_camera(camera_info(d=(0.0,) * 4, model="equidistant")).distorted


@pytest.mark.parametrize("info, message", [
    (dict(fx=0.0, fy=0.0, cx=0.0, cy=0.0), "not calibrated"),
    (dict(fx=float("nan")), "not calibrated"),
    (dict(d=(0.1, 0.0, 0.0, 0.0), model="equidistant"), "'equidistant' is not supported"),
    (dict(d=(0.1, 0.2, 0.3)), "distortion coefficients"),
])
def test_unusable_camera_info_says_why(info, message):
    from roma_ros.ros.conversions import CameraInfoError, camera_info_to_camera

    with pytest.raises(CameraInfoError, match=message):
        camera_info_to_camera(camera_info(**info))
    binned = camera_info()
    binned.binning_x = 2
    with pytest.raises(CameraInfoError, match="binning"):
        camera_info_to_camera(binned)


@pytest.mark.parametrize("bigendian", [False, True])
def test_depth_16uc1_with_padding_and_32fc1(bigendian):
    from roma_ros.ros.conversions import depth_msg_to_array, depth_msg_to_metres

    mm = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7)
    padded = np.zeros((H, W + 3), mm.dtype.newbyteorder(">" if bigendian else "<"))
    padded[:, :W] = mm
    msg = Image(height=H, width=W, encoding="16UC1", is_bigendian=int(bigendian), step=(W + 3) * 2,
                data=array.array("B", padded.tobytes()))
    raw = depth_msg_to_array(msg)
    assert raw.dtype == np.uint16 and raw.flags.c_contiguous
    np.testing.assert_array_equal(raw, mm)
    metres = depth_msg_to_metres(msg)
    assert np.isnan(metres[0, 0]) and metres[0, 1] == pytest.approx(0.007)
    floats = np.linspace(0.5, 4.0, H * W, dtype=np.float32).reshape(H, W)
    floats[1, 1] = np.nan
    msg = Image(height=H, width=W, encoding="32FC1", step=W * 4, data=array.array("B", floats.tobytes()))
    np.testing.assert_array_equal(depth_msg_to_array(msg), floats)
    assert np.isnan(depth_msg_to_metres(msg)[1, 1])


def test_bad_depth_images_are_conversion_errors():
    from roma_ros.ros.conversions import depth_msg_to_array

    for msg, message in ((Image(height=2, width=2, encoding="rgb8", step=6, data=array.array("B", bytes(12))),
                          "unsupported depth encoding 'rgb8'"),
                         (Image(height=2, width=2, encoding="16UC1", step=4, data=array.array("B", bytes(6))),
                          "wrong depth step/size"),
                         (Image(encoding="32FC1"), "zero-size")):
        with pytest.raises(ImageConversionError, match=message):
            depth_msg_to_array(msg)


def test_pose_messages_and_covariance_floors():
    from geometry_msgs.msg import Pose, PoseWithCovarianceStamped, Quaternion

    from roma_ros.ros.conversions import (
        COVARIANCE_MAX, floor_covariance, initialpose_covariance, msg_to_pose, pose_with_covariance_msg,
    )

    pose = Pose()
    pose.position.x, pose.orientation.z, pose.orientation.w = 1.5, 2.0, 2.0
    assert msg_to_pose(pose) == ((1.5, 0.0, 0.0), (0.0, 0.0, pytest.approx(np.sqrt(0.5)), pytest.approx(np.sqrt(0.5))))
    with pytest.raises(ValueError, match="zero quaternion"):
        msg_to_pose(Pose(orientation=Quaternion(w=0.0)))
    cov = np.diag([0.01, 0.02, 0.03, 0.001, 0.002, 0.5]) + 1e-4
    msg = pose_with_covariance_msg(Header(frame_id="map"), ((1.0, 2.0, 3.0), (0.0, 0.0, 0.0, 1.0)), cov)
    assert isinstance(msg, PoseWithCovarianceStamped) and msg.header.frame_id == "map"
    np.testing.assert_array_equal(np.asarray(msg.pose.covariance).reshape(6, 6), cov)  # row-major, ROS order
    assert deserialize_message(serialize_message(msg), PoseWithCovarianceStamped) == msg
    unknown = pose_with_covariance_msg(Header(), ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), np.full((6, 6), np.nan))
    assert np.asarray(unknown.pose.covariance)[0] == 1e6
    # ~/pose: diagonal raised to the floors, off-diagonal kept, still symmetric positive definite.
    floored = floor_covariance(cov, 0.2, np.radians(10.0))
    assert floored[0, 0] == pytest.approx(0.04) and floored[3, 3] == pytest.approx(np.radians(10.0) ** 2)
    assert floored[5, 5] == cov[5, 5] and floored[0, 1] == cov[0, 1]  # yaw already larger
    assert np.all(np.linalg.eigvalsh(floored) > 0)
    tiny = floor_covariance(np.full((6, 6), 3e-34), 0.003, np.radians(0.1))
    assert tiny[0, 0] == pytest.approx(0.003 ** 2) and tiny[5, 5] == pytest.approx(np.radians(0.1) ** 2)
    assert np.isnan(floor_covariance(np.full((6, 6), np.nan), 0.1, 0.1)).all()  # unknown stays unknown
    # initialpose: diagonal only (nav2 rejects negative elements), floored, within [0, 1e9].
    negative = cov.copy()
    negative[0, 1] = negative[1, 0] = -0.005
    sent = initialpose_covariance(negative, 0.15, np.radians(3.0))
    assert np.count_nonzero(sent - np.diag(np.diag(sent))) == 0 and sent.min() >= 0.0
    assert sent[0, 0] == sent[1, 1] == pytest.approx(0.0225) and sent[2, 2] == cov[2, 2] and sent[5, 5] == cov[5, 5]
    unknown = initialpose_covariance(np.full((6, 6), np.inf), 0.1, 0.1)
    assert np.diag(unknown).tolist() == [COVARIANCE_MAX] * 6 and unknown.max() <= 1e9


def added_arrows(markers: list) -> list:
    return [m for m in markers if m.type == Marker.ARROW and m.action == Marker.ADD]  # DELETEALL has type 0 too


def test_markers_arrow_points_where_the_camera_looks():
    from roma_ros.localize.pose import matrix_from_quaternion

    quarter = np.sqrt(0.5)
    # An optical frame looking along map +x (z_cam = x_map): rotation -90 deg about x, then -90 about z.
    R_map_cam = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    from roma_ros.localize.pose import quaternion_from_matrix

    q = quaternion_from_matrix(R_map_cam)
    markers = match_markers("map", Time(sec=3), "kf", None, True, "ok", query_pose=((1.0, 2.0, 0.5), q)).markers
    arrows = added_arrows(markers)
    assert len(arrows) == 1 and arrows[0].pose.position.x == 1.0
    o = arrows[0].pose.orientation
    np.testing.assert_allclose(matrix_from_quaternion([o.x, o.y, o.z, o.w]) @ [1, 0, 0], [1, 0, 0], atol=1e-9)
    # A base frame pose (x forward) is drawn as it is.
    yaw = (0.0, 0.0, quarter, quarter)
    o = added_arrows(match_markers("map", Time(), "kf", None, True, "ok", query_pose=((0, 0, 0), yaw),
                                   optical=False).markers)[0].pose.orientation
    np.testing.assert_allclose(matrix_from_quaternion([o.x, o.y, o.z, o.w]) @ [1, 0, 0], [0, 1, 0], atol=1e-9)
    assert not added_arrows(match_markers("map", Time(), "kf", None, False, "x").markers)


def test_rectified_camera_info_uses_p_and_no_distortion():
    from sensor_msgs.msg import CameraInfo

    from roma_ros.ros.conversions import CameraInfoError, camera_info_intrinsics, camera_info_to_camera

    info = CameraInfo(width=640, height=480, distortion_model="plumb_bob", d=[-0.3, 0.1, 0.001, 0.0, 0.0],
                      k=[500.0, 0.0, 321.0, 0.0, 502.0, 238.0, 0.0, 0.0, 1.0],
                      p=[480.0, 0.0, 318.5, 0.0, 0.0, 481.0, 241.5, 0.0, 0.0, 0.0, 1.0, 0.0])
    assert camera_info_intrinsics(info)["distortion"] == [-0.3, 0.1, 0.001, 0.0, 0.0]  # raw: K and D
    assert camera_info_intrinsics(info, rectified=True) == {"fx": 480.0, "fy": 481.0, "cx": 318.5, "cy": 241.5}
    camera = camera_info_to_camera(info, rectified=True)
    assert not camera.distorted and camera.to_ros() == (480.0, 481.0, 318.5, 241.5)
    with pytest.raises(CameraInfoError, match="camera_info P has fx=0.0"):
        camera_info_intrinsics(CameraInfo(width=640, height=480, k=info.k), rectified=True)
