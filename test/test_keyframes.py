"""The keyframe folder: order, tolerance of broken entries, atomic additions."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from roma_ros.store.check import check_store
from roma_ros.core.imageio import save_rgb
from roma_ros.store import KeyframeStore


def image(value: int) -> np.ndarray:
    return np.full((20, 30, 3), value, dtype=np.uint8)


def test_order_is_index_then_remaining_files_by_name(tmp_path):
    for name, value in (("b", 1), ("a", 2), ("z", 3), ("c", 4)):
        save_rgb(tmp_path / f"{name}.png", image(value))
    (tmp_path / "keyframes.yaml").write_text(yaml.safe_dump({"keyframes": [
        {"name": "zed", "image": "z.png", "pose": {"position": [1, 2, 3], "orientation": [0, 0, 0, 1]},
         "intrinsics": {"fx": 500.0, "fy": 500.0, "cx": 15.0, "cy": 10.0}},
        {"name": "bee", "image": "b.png"},
    ]}))
    store = KeyframeStore(tmp_path)
    keyframes = store.load()
    assert [k.name for k in keyframes] == ["zed", "bee", "a", "c"]
    assert keyframes[0].pose == ((1.0, 2.0, 3.0), (0.0, 0.0, 0.0, 1.0))
    assert keyframes[0].intrinsics["fx"] == 500.0 and keyframes[1].pose is None
    assert int(keyframes[2].image[0, 0, 0]) == 2 and store.warnings == []


def test_broken_entries_are_skipped_with_warnings_naming_them(tmp_path):
    save_rgb(tmp_path / "good.png", image(5))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (tmp_path / "keyframes.yaml").write_text(yaml.safe_dump({"keyframes": [
        {"name": "gone", "image": "missing.png"},
        {"name": "badpose", "image": "good.png", "pose": {"position": [1, 2]}},
        {"name": "ok", "image": "good.png"},
        "not a mapping",
    ]}))
    store = KeyframeStore(tmp_path)
    keyframes = store.load()
    assert [k.name for k in keyframes] == ["ok"]
    text = " ".join(store.warnings)
    for needle in ("gone", "missing.png", "badpose", "corrupt.png", "entry 3"):
        assert needle in text


def test_unreadable_index_keeps_images_and_is_preserved_on_add(tmp_path):
    save_rgb(tmp_path / "a.png", image(1))
    (tmp_path / "keyframes.yaml").write_text("keyframes: [ {name: a, image: a.png")  # truncated YAML
    store = KeyframeStore(tmp_path)
    keyframes = store.load()
    assert [k.name for k in keyframes] == ["a"] and "unreadable" in store.warnings[0]
    added = store.add(image(9), keyframes, name="new one")
    assert added.name == "new_one" and (tmp_path / "new_one.png").is_file()
    # The index is keyframes.db now: the user's broken YAML is left untouched for repair,
    # and reported on every load until it is fixed (then imported) or deleted.
    assert (tmp_path / "keyframes.yaml").read_text() == "keyframes: [ {name: a, image: a.png"
    again = KeyframeStore(tmp_path)
    assert [k.name for k in again.load()] == ["a", "new_one"] and "unreadable" in again.warnings[0]
    (tmp_path / "keyframes.yaml").write_text("keyframes: [ {name: fixed, image: a.png} ]")
    assert [k.name for k in KeyframeStore(tmp_path).load()] == ["fixed", "new_one"]


def test_add_writes_image_and_index_atomically(tmp_path, monkeypatch):
    store = KeyframeStore(tmp_path / "new")
    assert store.load() == [] and "does not exist" in store.warnings[0]
    first = store.add(image(1), [], pose=((1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
    keyframes = store.load()
    assert [k.name for k in keyframes] == [first.name] and keyframes[0].pose[0] == (1.0, 0.0, 0.0)
    assert keyframes[0].added
    # A failing index commit leaves the previous index intact and no files.
    from roma_ros.store.index import KeyframeIndex

    def crash(self, row_id, entry):
        raise OSError("disk full")

    monkeypatch.setattr(KeyframeIndex, "commit_add", crash)
    try:
        store.add(image(2), keyframes, name="second")
    except OSError:
        pass
    monkeypatch.undo()
    names = [k.name for k in KeyframeStore(tmp_path / "new").load()]
    assert names == [first.name]  # a failed add leaves nothing behind (issue 10)
    assert not (tmp_path / "new" / "second.png").exists()
    assert not list((tmp_path / "new").glob(".*tmp"))
    assert [e["name"] for e in KeyframeStore(tmp_path / "new").entries()] == [first.name]


def test_names_stay_unique(tmp_path):
    store = KeyframeStore(tmp_path)
    a = store.add(image(1), [], name="place")
    b = store.add(image(2), store.load(), name="place")
    assert (a.name, b.name) == ("place", "place_2")


def test_add_keeps_entries_that_cannot_load_right_now(tmp_path):
    save_rgb(tmp_path / "a.png", image(1))
    save_rgb(tmp_path / "loose.png", image(3))
    (tmp_path / "keyframes.yaml").write_text(yaml.safe_dump({"keyframes": [
        {"name": "a", "image": "a.png", "note": "kept"},
        {"name": "on_usb_stick", "image": "b.png", "pose": {"position": [1, 2, 3]}},
    ]}))
    store = KeyframeStore(tmp_path)
    existing = store.load()
    assert [k.name for k in existing] == ["a", "loose"]
    store.add(image(9), existing, name="new")
    entries = KeyframeStore(tmp_path).entries()
    assert [e["name"] for e in entries] == ["a", "on_usb_stick", "loose", "new"]
    assert entries[0]["note"] == "kept" and entries[1]["pose"]["position"] == [1, 2, 3]
    assert [k.name for k in KeyframeStore(tmp_path).load()] == ["a", "loose", "new"]
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.png").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_16_bit_keyframe_files_scale_like_16_bit_queries(tmp_path):
    """A 12-bit camera's PNG keyframe must not load nearly black (as `>> 8` would make it)."""
    import cv2

    from roma_ros.core.imageio import load_rgb

    twelve_bit = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 4095 // 599).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "kf.png"), twelve_bit)
    rgb = load_rgb(tmp_path / "kf.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (20, 30, 3)
    assert rgb.max() == 255 and rgb[0, 0, 0] == 0


# ------------------------------------------------------------------------------------ depth

def ramp_depth(h: int = 20, w: int = 30) -> np.ndarray:
    """Metres, 0.5 to ~3.4 m, with unknown pixels of both kinds (0 and NaN)."""
    depth = (0.5 + np.arange(h * w, dtype=np.float32).reshape(h, w) / 200).astype(np.float32)
    depth[0, 0], depth[1, 1] = 0.0, np.nan
    return depth


def test_depth_types_units_and_unknown_pixels(tmp_path):
    import cv2

    from roma_ros.store import DepthFileError, load_depth, save_depth

    metres = ramp_depth()
    mm = np.nan_to_num(np.rint(metres * 1000)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "mm.png"), mm)
    cv2.imwrite(str(tmp_path / "tenth_mm.png"), (mm.astype(np.uint32) * 10).astype(np.uint16))
    cv2.imwrite(str(tmp_path / "m.tiff"), metres)
    np.save(tmp_path / "m.npy", metres)
    for name, scale, tolerance in (("mm.png", None, 5e-4), ("tenth_mm.png", 1e-4, 5e-4),
                                   ("m.tiff", None, 0), ("m.npy", None, 0), ("mm.png", 0.002, None)):
        depth = load_depth(tmp_path / name, scale)
        assert depth.dtype == np.float32 and depth.shape == (20, 30), name
        assert np.isnan(depth[0, 0]) and np.isnan(depth[1, 1]) and np.isfinite(depth).sum() == 598, name
        if tolerance is None:  # a scale overrides the file type's default
            np.testing.assert_allclose(depth[5, 5], 2 * metres[5, 5], rtol=1e-3)
        else:
            assert np.nanmax(np.abs(depth - metres)) <= tolerance, name
    # A float depth map in millimetres is read with scale 0.001 too.
    np.save(tmp_path / "float_mm.npy", metres * 1000)
    np.testing.assert_allclose(load_depth(tmp_path / "float_mm.npy", 0.001)[5, 5], metres[5, 5], rtol=1e-6)
    # All unknown is a valid (useless) depth map; negative and infinite values are unknown too.
    np.save(tmp_path / "none.npy", np.array([[0.0, np.nan], [-1.0, np.inf]], np.float32))
    assert np.isnan(load_depth(tmp_path / "none.npy")).all()

    cv2.imwrite(str(tmp_path / "eight.png"), np.full((4, 4), 7, np.uint8))
    cv2.imwrite(str(tmp_path / "colour.png"), np.zeros((4, 4, 3), np.uint16))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    np.save(tmp_path / "ints.npy", np.zeros((4, 4), np.int64))
    (tmp_path / "m.jpg").write_bytes(b"jpeg")
    for name, message in (("eight.png", "8-bit image is not depth"), ("colour.png", "one channel"),
                          ("corrupt.png", "not a readable PNG"), ("ints.npy", "unsupported depth type int64"),
                          ("missing.tiff", "does not exist"), ("m.jpg", "unknown type")):
        with pytest.raises(DepthFileError, match=message) as info:
            load_depth(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(ValueError, match="positive"):
        load_depth(tmp_path / "mm.png", scale=-1.0)
    # save_depth: atomic, and 16-bit PNG rounds to mm (0 = unknown) while TIFF keeps float32 and NaN.
    save_depth(tmp_path / "out.png", metres)
    save_depth(tmp_path / "out.tiff", metres)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED), mm)
    np.testing.assert_array_equal(load_depth(tmp_path / "out.tiff"), load_depth(tmp_path / "m.tiff"))
    with pytest.raises(ValueError, match="65.535 m"):
        save_depth(tmp_path / "far.png", np.full((2, 2), 70.0, np.float32))
    assert not (tmp_path / "far.png").exists() and not list(tmp_path.glob(".*.tmp"))


def test_depth_entries_load_registered_or_warn_and_stay_keyframes(tmp_path):
    import cv2

    from roma_ros.store import save_depth

    for name in ("a", "b", "c", "d", "e"):
        save_rgb(tmp_path / f"{name}.png", image(10))
    save_depth(tmp_path / "a_depth.png", ramp_depth())  # next to the images: not taken for a keyframe image
    save_depth(tmp_path / "small.tiff", ramp_depth(10, 15))
    cv2.imwrite(str(tmp_path / "eight.png"), np.full((20, 30), 7, np.uint8))
    intrinsics = {"fx": 500.0, "fy": 500.0, "cx": 14.5, "cy": 9.5}
    (tmp_path / "keyframes.yaml").write_text(yaml.safe_dump({"keyframes": [
        {"name": "a", "image": "a.png", "depth": "a_depth.png", "depth_scale": 0.002, "intrinsics": intrinsics},
        {"name": "b", "image": "b.png", "depth": "small.tiff", "intrinsics": intrinsics},
        {"name": "c", "image": "c.png", "depth": "eight.png", "intrinsics": {"fx": -1, "fy": 1, "cx": 0, "cy": 0}},
        {"name": "d", "image": "d.png", "depth": "nowhere.npy"},
        {"name": "e", "image": "e.png", "depth": "a_depth.png", "depth_scale": "metres"},
    ]}))
    store = KeyframeStore(tmp_path)
    keyframes = store.load()
    assert [k.name for k in keyframes] == ["a", "b", "c", "d", "e"]
    a = keyframes[0]
    assert a.depth_file == "a_depth.png" and a.depth_scale == 0.002 and a.intrinsics == intrinsics
    np.testing.assert_allclose(a.depth[5, 5], 2 * ramp_depth()[5, 5], rtol=1e-3)
    assert all(k.depth is None and k.depth_file is None for k in keyframes[1:])
    assert keyframes[1].intrinsics == intrinsics and keyframes[2].intrinsics is None
    warnings = "\n".join(store.warnings)
    for needle in ("'b' has no depth", "small.tiff' is 15x10 but its image is 30x20", "'c' has no intrinsics",
                   "must be > 0", "eight.png': 8-bit", "nowhere.npy' does not exist", "'e' has no depth"):
        assert needle in warnings, needle
    assert len(store.warnings) == 5
    # A later add keeps every entry as written (including the ones whose depth did not load).
    store.add(image(99), keyframes, name="f")
    entries = KeyframeStore(tmp_path).entries()
    assert entries[1]["depth"] == "small.tiff" and entries[4]["depth_scale"] == "metres"


def test_add_with_depth_writes_lossless_files_and_reloads_them(tmp_path, monkeypatch):
    from roma_ros.store import load_depth

    store = KeyframeStore(tmp_path / "kf")
    intrinsics = {"fx": 300.0, "fy": 310.0, "cx": 14.5, "cy": 9.5}
    units = np.arange(600, dtype=np.uint16).reshape(20, 30) * 50  # tenths of a mm up to ~3 m
    first = store.add(image(1), [], name="raw16", intrinsics=intrinsics, depth=units, depth_scale=1e-4,
                      pose=((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
    second = store.add(image(2), store.load(), name="metres", depth=ramp_depth())
    assert (first.depth_file, second.depth_file) == ("depth/raw16.png", "depth/metres.tiff")
    assert first.posable and not second.posable  # no intrinsics or pose
    keyframes = KeyframeStore(tmp_path / "kf").load()
    assert [k.name for k in keyframes] == ["raw16", "metres"]  # depth files are not keyframe images
    np.testing.assert_allclose(keyframes[0].depth[1:], (units * 1e-4)[1:], rtol=1e-6)
    assert np.isnan(keyframes[0].depth[0, 0]) and keyframes[0].depth_scale == 1e-4
    np.testing.assert_array_equal(keyframes[1].depth, load_depth(tmp_path / "kf" / "depth" / "metres.tiff"))
    assert np.isnan(keyframes[1].depth[0, 0]) and keyframes[0].intrinsics == intrinsics
    entries = KeyframeStore(tmp_path / "kf").entries()
    assert entries[0]["depth"] == "depth/raw16.png" and entries[0]["depth_scale"] == 1e-4
    assert "depth_scale" not in entries[1]  # float depth is metres

    with pytest.raises(ValueError, match="registered to the image"):
        store.add(image(3), keyframes, name="bad", depth=np.ones((10, 10), np.float32))
    with pytest.raises(ValueError, match="focal"):
        store.add(image(3), keyframes, name="bad", intrinsics={"fx": 0, "fy": 1, "cx": 1, "cy": 1})
    assert not (tmp_path / "kf" / "bad.png").exists() and not (tmp_path / "kf" / "depth" / "bad.png").exists()
    assert check_store(store) == []


def test_a_lazy_store_holds_no_pixels_and_reads_them_on_access(tmp_path):
    from roma_ros.store import save_depth

    save_rgb(tmp_path / "a.png", image(10))
    save_rgb(tmp_path / "b.png", image(20))
    save_depth(tmp_path / "a_depth.tiff", ramp_depth())
    save_depth(tmp_path / "small.tiff", ramp_depth(10, 15))
    intrinsics = {"fx": 500.0, "fy": 500.0, "cx": 14.5, "cy": 9.5}
    pose = {"position": [1, 2, 3], "orientation": [0, 0, 0, 1]}
    (tmp_path / "keyframes.yaml").write_text(yaml.safe_dump({"keyframes": [
        {"name": "a", "image": "a.png", "depth": "a_depth.tiff", "intrinsics": intrinsics, "pose": pose},
        {"name": "b", "image": "b.png", "depth": "small.tiff", "intrinsics": intrinsics, "pose": pose},
    ]}))
    eager = KeyframeStore(tmp_path).load()
    store = KeyframeStore(tmp_path, lazy=True)
    lazy = store.load()
    assert [k.name for k in lazy] == ["a", "b"] and len(store.warnings) == 1  # b's depth: wrong size, from the header
    assert "small.tiff' is 15x10 but its image is 30x20" in store.warnings[0]
    assert all(k.__dict__["_image"] is None and k.__dict__["_depth"] is None for k in lazy)  # nothing held
    assert lazy[0].posable and not lazy[1].posable
    np.testing.assert_array_equal(lazy[0].image, eager[0].image)
    np.testing.assert_array_equal(lazy[0].depth, eager[0].depth)
    added = store.add(image(30), lazy, name="c", depth=ramp_depth())
    assert added.__dict__["_image"] is None and int(added.image[0, 0, 0]) == 30 and added.depth is not None
