"""Matches -> sensor_msgs/PointCloud2 (the ~/matches layout) and any PointCloud2 -> arrays."""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from roma_ros.ros.conversions.images import _bytes, _header

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
