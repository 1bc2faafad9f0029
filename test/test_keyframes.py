"""The keyframe folder: order, tolerance of broken entries, atomic additions."""
from __future__ import annotations

import numpy as np
import yaml

from roma_ros.imageio import save_rgb
from roma_ros.keyframes import KeyframeStore


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
    backups = list(tmp_path.glob("keyframes.yaml.unreadable-*"))
    assert len(backups) == 1 and "{name: a" in backups[0].read_text()
    assert [k.name for k in KeyframeStore(tmp_path).load()] == ["a", "new_one"]


def test_add_writes_image_and_index_atomically(tmp_path, monkeypatch):
    store = KeyframeStore(tmp_path / "new")
    assert store.load() == [] and "does not exist" in store.warnings[0]
    first = store.add(image(1), [], pose=((1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
    keyframes = store.load()
    assert [k.name for k in keyframes] == [first.name] and keyframes[0].pose[0] == (1.0, 0.0, 0.0)
    assert keyframes[0].added
    # A crash while writing the index leaves the previous index intact and no temp files.
    import roma_ros.keyframes as module

    def crash(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(module, "save_bytes", crash)
    try:
        store.add(image(2), keyframes, name="second")
    except OSError:
        pass
    monkeypatch.undo()
    names = [k.name for k in KeyframeStore(tmp_path / "new").load()]
    assert names == [first.name]  # a failed add leaves nothing behind (issue 10)
    assert not (tmp_path / "new" / "second.png").exists()
    assert not list((tmp_path / "new").glob(".*tmp"))
    index = yaml.safe_load((tmp_path / "new" / "keyframes.yaml").read_text())
    assert [e["name"] for e in index["keyframes"]] == [first.name]


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
    entries = yaml.safe_load((tmp_path / "keyframes.yaml").read_text())["keyframes"]
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

    from roma_ros.imageio import load_rgb

    twelve_bit = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 4095 // 599).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "kf.png"), twelve_bit)
    rgb = load_rgb(tmp_path / "kf.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (20, 30, 3)
    assert rgb.max() == 255 and rgb[0, 0, 0] == 0
