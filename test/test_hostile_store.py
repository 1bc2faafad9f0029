"""Issue 20, the store's findings: one per test, each failing on the store before the SQLite
index (e71133b). A bad file costs its keyframe only, with a warning naming it; nothing
user-controlled drives memory, recursion or writes outside the folder. Plus hypothesis
fuzzing of keyframes.yaml import."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roma_ros.cli.keyframes import main
from roma_ros.core.imageio import save_rgb
from roma_ros.store import KeyframeStore, save_depth
from roma_ros.store.check import check_store


def picture(value: int) -> np.ndarray:
    rgb = np.full((20, 30, 3), value, np.uint8)
    rgb[:10, :10] = 255 - value
    return rgb


def three_keyframes(kf: Path) -> None:
    for i, name in enumerate(("a", "b", "c")):
        save_rgb(kf / f"{name}.png", picture(40 * i))
        save_depth(kf / f"{name}_depth.tiff", np.full((20, 30), 1.0 + i, np.float32))
    (kf / "keyframes.yaml").write_text(yaml.safe_dump({"keyframes": [
        {"name": n, "image": f"{n}.png", "depth": f"{n}_depth.tiff"} for n in "abc"]}))


def test_1_deep_yaml_then_add_and_reload_never_raise(tmp_path):
    """Finding 1: 20 000 '[' let the parser's RecursionError escape ~/add_keyframe (exit 1)."""
    kf = tmp_path / "kf"
    save_rgb(kf / "a.png", picture(1))
    (kf / "keyframes.yaml").write_text("keyframes: " + "[" * 20000 + "]" * 20000)
    store = KeyframeStore(kf)
    assert [k.name for k in store.load()] == ["a"]  # the node loads first: the image files are used
    added = store.add(picture(2), [], name="new")  # the node's service catches OSError/ValueError only
    keyframes = store.load()  # ~/reload_keyframes too
    assert [k.name for k in keyframes] == ["a", added.name] and "not valid YAML" in store.warnings[0]


def test_2_one_unreadable_image_or_depth_costs_only_that_keyframe(tmp_path, monkeypatch, capsys):
    """Finding 2: a PermissionError (chmod 000; we are root, so open() is made to refuse) emptied the map."""
    kf = tmp_path / "kf"
    three_keyframes(kf)
    real = np.fromfile

    def refuse(path, *args, **kwargs):
        if Path(path).name in ("b.png", "c_depth.tiff"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(np, "fromfile", refuse)
    store = KeyframeStore(kf)
    keyframes = store.load()
    assert [k.name for k in keyframes] == ["a", "c"]
    assert keyframes[0].depth is not None and keyframes[1].depth is None  # c keeps its image, loses its depth
    text = "\n".join(store.warnings)
    assert "keyframe 'b' skipped" in text and "b.png' cannot be read: Permission denied" in text
    assert "keyframe 'c' has no depth" in text and "c_depth.tiff' cannot be read: Permission denied" in text
    assert main(["list", "--dir", str(kf)]) == 0 and "2 keyframes in" in capsys.readouterr().out


def test_3_a_300_character_name_costs_only_that_entry(tmp_path, capsys):
    """Finding 3: ENAMETOOLONG from Path.is_file() emptied the map."""
    kf = tmp_path / "kf"
    three_keyframes(kf)
    entries = yaml.safe_load((kf / "keyframes.yaml").read_text())["keyframes"]
    entries.append({"name": "long", "image": "x" * 300 + ".png"})
    entries[0]["depth"] = "d" * 300 + ".tiff"
    (kf / "keyframes.yaml").write_text(yaml.safe_dump({"keyframes": entries}))
    store = KeyframeStore(kf)
    keyframes = store.load()
    assert [k.name for k in keyframes] == ["a", "b", "c"] and keyframes[0].depth is None
    text = "\n".join(store.warnings)
    assert "keyframe 'long' skipped" in text and "File name too long" in text
    assert "keyframe 'a' has no depth" in text
    assert main(["list", "--dir", str(kf)]) == 0
    assert main(["check", "--dir", str(kf)]) == 1  # reported, not a traceback
    assert "File name too long" in capsys.readouterr().out


def test_4_an_alias_bomb_in_image_is_refused_quickly_and_not_echoed(tmp_path):
    """Finding 4: a 771-byte alias bomb in `image:` took the node to 8.6 GB and a 522 MB log line.
    (Six levels here, so that the old code only writes a few MB rather than exhausting memory.)"""
    kf = tmp_path / "kf"
    save_rgb(kf / "a.png", picture(1))
    text = 'l0: &l0 ["lollollollollol","lollollollollol","lollollollollol","lollollollollol"]\n'
    for level in range(1, 7):
        text += f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]\n"
    text += "keyframes:\n  - {name: bomb, image: *l6}\n  - {name: a, image: a.png}\n"
    assert len(text) < 800
    (kf / "keyframes.yaml").write_text(text)
    start = time.perf_counter()
    store = KeyframeStore(kf)
    keyframes = store.load()
    assert time.perf_counter() - start < 20  # generous; the point is no expansion at all
    assert [k.name for k in keyframes] == ["a"]
    assert "aliases expand to over" in store.warnings[0] and sum(map(len, store.warnings)) < 2000


def test_5_keyframe_images_have_a_pixel_bound(tmp_path, monkeypatch):
    """Finding 5: an 8000x6000 keyframe made SIFT peak at 11 GB and the store failed to load."""
    import cv2

    kf = tmp_path / "kf"
    save_rgb(kf / "a.png", picture(1))
    cv2.imwrite(str(kf / "huge.png"), np.zeros((3000, 4000), np.uint8))  # 12 MP > 8.8 MP (4K), a 40 KB file
    decoded = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda data, flags: decoded.append(data.size) or real(data, flags))
    store = KeyframeStore(kf)
    keyframes = store.load()
    assert [k.name for k in keyframes] == ["a"] and len(decoded) == 1  # refused from its header, never decoded
    assert "huge.png' is 4000x3000 (12.0 MP), over the keyframe pixel bound of 8.8 MP: downscale it" \
        in store.warnings[0]
    with pytest.raises(ValueError, match="over the keyframe pixel bound"):
        KeyframeStore(kf, max_pixels=100).add(picture(3), [])
    assert [k.name for k in KeyframeStore(kf, max_pixels=12_000_000).load()] == ["a", "huge"]


def test_7_check_repair_never_moves_an_image_through_an_unreadable_link(tmp_path):
    """Finding 7: with `.unreadable` a symlink out of the folder, repair moved the user's image there."""
    kf, outside = tmp_path / "kf", tmp_path / "outside"
    outside.mkdir()
    save_rgb(kf / "a.png", picture(1))
    (kf / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (kf / ".unreadable").symlink_to(outside, target_is_directory=True)
    lines = check_store(KeyframeStore(kf), repair=True)
    assert list(outside.iterdir()) == [] and (kf / "broken.png").is_file()
    assert any("broken.png" in line and "left in place" in line and "symlink" in line for line in lines)


def test_15_indexes_set_aside_in_one_second_keep_both_backups(tmp_path):
    """Finding 15: the backup name had one-second resolution; the second overwrote the first."""
    kf = tmp_path / "kf"
    kf.mkdir()
    store = KeyframeStore(kf)
    backups = []
    for text in ("keyframes: [ {first", "keyframes: [ {second"):
        (kf / "keyframes.yaml").write_text(text)
        backups.append(store.backup_unreadable_index())
    assert len(set(backups)) == 2 and [b.read_text() for b in backups] == ["keyframes: [ {first",
                                                                          "keyframes: [ {second"]


class CachingMatcher:
    """The RoMa matcher's cache interface (cache_key, prepare, export/import) without the network."""

    def __init__(self) -> None:
        self.computed = 0

    def cache_key(self) -> str:
        return "fake"

    def prepare(self, rgb):
        import torch

        self.computed += 1
        return {"dino": torch.full((1, 4), float(rgb.mean()))}

    def export_prepared(self, prepared):
        return dict(prepared)

    def import_prepared(self, rgb, state):
        if tuple(state["dino"].shape) != (1, 4):  # as RomaMatcher: state["dino"] of a str is a TypeError
            raise ValueError("shape")
        return {"dino": state["dino"]}


@pytest.mark.parametrize("bad", ["a string", "nan"])
def test_16_a_corrupt_cache_file_with_the_right_digest_is_recomputed(tmp_path, bad):
    """Finding 16: a string failed the whole reload; an all-NaN tensor was trusted (every query failed)."""
    import torch

    from roma_ros.store.cache import cache_for, image_digest

    kf = tmp_path / "kf"
    save_rgb(kf / "a.png", picture(7))
    keyframe = KeyframeStore(kf).load()[0]
    matcher = CachingMatcher()
    cache = cache_for(matcher, kf)
    path = cache.path("a.png")
    features = "not features" if bad == "a string" else {"dino": torch.full((1, 4), float("nan"))}
    path.parent.mkdir(parents=True)
    torch.save({"digest": image_digest(keyframe.image), "features": features}, path)
    prepared = cache.prepare(matcher, "a.png", keyframe.image)
    assert torch.isfinite(prepared["dino"]).all() and matcher.computed == 1
    assert "is corrupt" in cache.stats.warnings[0] and "recomputing" in cache.stats.warnings[0]
    again = cache_for(matcher, kf)
    again.prepare(matcher, "a.png", keyframe.image)  # the file was rewritten: loaded now
    assert (again.stats.loaded, matcher.computed, again.stats.warnings) == (1, 1, [])


# --- hypothesis: whatever keyframes.yaml says, load() returns and warnings stay bounded -------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=40), st.sampled_from(["a.png", "../a.png", "/etc/passwd", "depth/x.png",
                                                           "a.png\n[FATAL] forged", "x" * 300]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["name", "image", "pose", "position", "orientation", "intrinsics", "fx", "fy", "cx", "cy",
                     "depth", "depth_scale", "added", "distortion", "other"]), inner, max_size=5), max_leaves=25)
entries = st.lists(st.one_of(values, st.fixed_dictionaries({"image": st.sampled_from(["a.png", "b.png"])},
                                                           optional={"pose": values, "intrinsics": values,
                                                                     "depth": values, "name": values})),
                   max_size=6)


def _mutate(text: str, cuts: list[int]) -> str:
    for cut in cuts:
        if text:
            i = cut % len(text)
            text = text[:i] + "[*&!%{:"[cut % 7] + text[i:]
    return text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries, st.lists(st.integers(0, 10**6), max_size=3))
def test_fuzz_keyframes_yaml_import_never_raises(data, cuts):
    with tempfile.TemporaryDirectory() as tmp:
        kf = Path(tmp)
        save_rgb(kf / "a.png", picture(5))
        text = _mutate(yaml.safe_dump({"keyframes": data}, allow_unicode=True), cuts)
        (kf / "keyframes.yaml").write_text(text)
        store = KeyframeStore(kf)
        keyframes = store.load()
        assert len(keyframes) <= 1 + len(data)
        assert all(len(w) < 4000 for w in store.warnings)
        try:
            store.import_yaml()
        except ValueError as exc:  # an unreadable file: a clear one-line error, never anything else
            assert "keyframes.yaml" in str(exc) and len(str(exc)) < 1000
        store.export_yaml()  # whatever was imported can be written back and read again
        assert KeyframeStore(kf).load() is not None
        store.close()
        assert os.path.isfile(kf / "keyframes.db")
