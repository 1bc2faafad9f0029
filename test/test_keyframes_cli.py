"""`roma-keyframes` and the store operations behind it: add/list/remove, crash safety,
check/repair, building the feature cache, and one-line errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from roma_ros.store.check import check_store
from roma_ros.core.imageio import load_rgb, save_rgb
from roma_ros.cli.keyframes import build_parser, main
from roma_ros.store import DEFAULT_DIR, KeyframeStore, UnknownKeyframe, cache_file_name

SCRIPT = Path(sys.executable).with_name("roma-keyframes")


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def picture(value: int, h: int = 20, w: int = 30) -> np.ndarray:
    rgb = np.full((h, w, 3), value, dtype=np.uint8)
    rgb[: h // 2, : w // 3] = 255 - value  # not flat, so JPEG and PNG keep it recognisable
    return rgb


def index_entries(folder: Path) -> list[dict]:
    """The index's entries (keyframes.db), as keyframes.yaml would list them."""
    return KeyframeStore(folder).entries()


def write_index(folder: Path, entries: list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keyframes.yaml").write_text(yaml.safe_dump({"keyframes": entries}, sort_keys=False))


def fake_cache(folder: Path, key: str, image_file: str) -> Path:
    path = folder / ".cache" / key / cache_file_name(folder, image_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"features")
    return path


def table(out: str) -> list[list[str]]:
    """Rows of `list` output (header and footer dropped), split on the column gaps."""
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["index", "name", "image", "size"]
    return [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in lines[1:-1]]


def test_add_list_remove_round_trip(tmp_path, capsys):
    src, kf = tmp_path / "src", tmp_path / "kf"
    save_rgb(src / "a.png", picture(10))
    save_rgb(src / "b.jpg", picture(100, 40, 50))
    save_rgb(src / "c.png", picture(200, 30, 60))

    code, out, _ = run(capsys, "add", src / "a.png", "--dir", kf, "--name", "first", "--pose", 1, 2, 3.5, 0, 0, 0, 1)
    assert code == 0 and out.strip() == f"added 'first' (index 0) as {kf / 'first.png'}"
    code, out, _ = run(capsys, "add", src / "b.jpg", src / "c.png", "--dir", kf)
    assert code == 0
    assert out.splitlines() == [f"added 'b' (index 1) as {kf / 'b.png'}", f"added 'c' (index 2) as {kf / 'c.png'}"]
    np.testing.assert_array_equal(load_rgb(kf / "first.png"), picture(10))

    code, out, _ = run(capsys, "list", "--dir", kf)
    rows = table(out)
    assert code == 0 and out.strip().splitlines()[-1] == f"3 keyframes in {kf}"
    assert [r[:5] for r in rows] == [
        ["0", "first", "first.png", "30x20", "1 2 3.5 | 0 0 0 1"],
        ["1", "b", "b.png", "50x40", "-"],
        ["2", "c", "c.png", "60x30", "-"],
    ]
    added = [r[5] for r in rows]
    assert all(a.startswith("20") and a.endswith("+00:00") for a in added)

    before = index_entries(kf)
    caches = [fake_cache(kf, key, f) for key in ("roma_a", "roma_b") for f in ("b.png", "c.png")]
    code, out, _ = run(capsys, "remove", "b", "--dir", kf)
    assert code == 0 and out.startswith("removed 'b' (b.png); deleted b.png, "
                                 f".cache/roma_a/{cache_file_name(kf, 'b.png')}")
    assert not (kf / "b.png").exists() and not (kf / ".trash").exists()
    assert [p.exists() for p in caches] == [False, True, False, True]
    assert index_entries(kf) == [before[0], before[2]]  # other entries untouched, "added" kept

    keyframes = KeyframeStore(kf).load()
    assert [k.name for k in keyframes] == ["first", "c"]
    assert keyframes[0].pose == ((1.0, 2.0, 3.5), (0.0, 0.0, 0.0, 1.0)) and keyframes[0].added == added[0]
    code, out, _ = run(capsys, "list", "--dir", kf)
    assert [r[:2] for r in table(out)] == [["0", "first"], ["1", "c"]]


def test_remove_keeps_other_fields_shared_images_and_files_outside(tmp_path):
    outside = tmp_path / "elsewhere.png"
    kf = tmp_path / "kf"
    for name in ("x.png", "shared.png", "loose.png"):
        save_rgb(kf / name, picture(50))
    save_rgb(outside, picture(60))
    write_index(kf, [
        {"name": "x", "image": "x.png", "intrinsics": {"fx": 100.0}, "note": "keep me", "added": "then"},
        {"name": "one", "image": "shared.png"},
        {"name": "two", "image": "shared.png"},
        {"name": "out", "image": "../elsewhere.png"},
        "not a mapping (kept as it is)",
    ])
    store = KeyframeStore(kf)
    removed = store.remove("one")
    assert removed.entry == {"name": "one", "image": "shared.png"} and removed.deleted == []
    assert (kf / "shared.png").is_file()  # "two" still uses it
    assert store.remove("out").deleted == [] and outside.is_file()
    loose = store.remove("loose")  # an image without an index entry
    assert loose.entry is None and loose.deleted == [kf / "loose.png"] and not (kf / "loose.png").exists()
    assert index_entries(kf) == [
        {"name": "x", "image": "x.png", "intrinsics": {"fx": 100.0}, "note": "keep me", "added": "then"},
        {"name": "two", "image": "shared.png"},
        "not a mapping (kept as it is)",
    ]
    with pytest.raises(UnknownKeyframe, match=f"no keyframe named 'nope' in store '{kf}'"):
        store.remove("nope")


def test_failed_index_write_during_remove_leaves_the_previous_state(tmp_path, monkeypatch, capsys):
    kf = tmp_path / "kf"
    store = KeyframeStore(kf)
    for i, name in enumerate(("p", "q", "r")):
        store.add(picture(40 * i), store.load(), name=name, pose=((float(i), 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
    cache = fake_cache(kf, "roma", "q.png")
    before = index_entries(kf)
    from roma_ros.store.index import KeyframeIndex

    def disk_full(*args):
        raise OSError("disk full")

    monkeypatch.setattr(KeyframeIndex, "delete_rows", disk_full)
    with pytest.raises(OSError, match="disk full"):
        KeyframeStore(kf).remove("q")
    code, _, err = run(capsys, "remove", "q", "--dir", kf)
    assert code == 2 and err.strip() == "roma-keyframes: error: disk full"
    monkeypatch.undo()

    assert index_entries(kf) == before
    assert cache.is_file() and not list((kf / ".trash").rglob("*.png"))
    store = KeyframeStore(kf)
    keyframes = store.load()
    assert [k.name for k in keyframes] == ["p", "q", "r"] and store.warnings == []
    assert keyframes[1].pose[0] == (1.0, 0.0, 0.0)
    np.testing.assert_array_equal(keyframes[1].image, picture(40))
    assert check_store(store) == []


def test_crash_inside_remove_is_finished_on_the_next_open_and_old_trash_is_repaired(tmp_path, monkeypatch):
    kf = tmp_path / "kf"
    store = KeyframeStore(kf)
    for name in ("p", "q", "gone"):
        store.add(picture(70), store.load(), name=name)
    from roma_ros.store.index import KeyframeIndex

    def crash(self):  # the process dies right after the removal's commit, before deleting files
        if self.meta("edits"):  # (the earlier call, in the opening recovery, has nothing to do)
            raise KeyboardInterrupt
        return []

    monkeypatch.setattr(KeyframeIndex, "work_off_deletes", crash)
    with pytest.raises(KeyboardInterrupt):
        store.remove("gone")
    monkeypatch.undo()
    assert (kf / "gone.png").is_file()
    assert [k.name for k in KeyframeStore(kf).load()] == ["p", "q"]  # committed: gone for every reader
    assert not (kf / "gone.png").exists() and check_store(store) == []  # and its files deleted on that open
    # Older versions moved an image to .trash/ first: a crash there is still put right by repair.
    (kf / ".trash").mkdir()
    (kf / "q.png").replace(kf / ".trash" / "q.png")
    (kf / ".trash" / "old.png").write_bytes(b"x")
    assert [k.name for k in store.load()] == ["p"]
    problems = check_store(store)
    assert "image q.png is in .trash/ but still listed (interrupted removal)" in problems
    assert ".trash/old.png is left over from a removal" in problems
    actions = check_store(store, repair=True)
    assert "image q.png is in .trash/ but still listed (interrupted removal) -> put back" in actions
    assert ".trash/old.png is left over from a removal -> deleted" in actions
    assert [k.name for k in store.load()] == ["p", "q"] and check_store(store) == []


def test_check_reports_and_repair_fixes_without_deleting_images(tmp_path):
    kf = tmp_path / "kf"
    for name in ("good.png", "posey.png", "d1.png", "d2.png", "dup.png"):
        save_rgb(kf / name, picture(90))
    (kf / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (kf / "broken.jpg").write_bytes(b"")
    write_index(kf, [
        {"name": "good", "image": "good.png", "pose": {"position": [1, 2, 3], "orientation": [0, 0, 0, 1]},
         "added": "2024-01-01T00:00:00+00:00"},
        {"name": "gone", "image": "missing.png"},
        {"name": "bad", "image": "corrupt.png"},
        {"name": "posey", "image": "posey.png", "pose": {"position": [1, 2]}},
        {"name": "dup", "image": "d1.png"},
        {"name": "dup", "image": "d2.png"},
        ["not", "a", "mapping"],
    ])
    (kf / ".keyframes.yaml.abc123.tmp").write_text("half")
    (kf / ".cache" / "roma").mkdir(parents=True)
    (kf / ".cache" / "roma" / ".good.png.pt.x1.tmp").write_bytes(b"half")
    keep = fake_cache(kf, "roma", "good.png")
    orphan = fake_cache(kf, "roma", "missing.png")
    user_images = {p.name: p.read_bytes() for p in kf.iterdir() if p.suffix in (".png", ".jpg")}

    proc = script("check", "--dir", kf)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    expected = [
        "leftover temp file .keyframes.yaml.abc123.tmp",
        "leftover temp file .cache/roma/.good.png.pt.x1.tmp",
        "keyframes.yaml entry 1 'gone': image file",
        "keyframes.yaml entry 2 'bad': image file",
        "keyframes.yaml entry 3 'posey': pose needs 3 finite position",
        "keyframes.yaml entry 6: needs at least 'image'",
        "image file '" + str(kf / "broken.jpg") + "' is empty",
        "duplicate name 'dup' (d2.png)",
        "duplicate name 'dup' (dup.png)",
        f"orphan cache file .cache/roma/{cache_file_name(kf, 'missing.png')}",
    ]
    for needle in expected:
        assert sum(needle in line for line in lines) == 1, (needle, lines)
    assert len(lines) == len(expected) + 1 and lines[-1].startswith("10 problems; ")

    proc = script("check", "--repair", "--dir", kf)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == f"{kf}: repaired, no problems left"
    assert any("'dup' (d2.png) -> renamed to 'dup_2'" in line for line in lines)
    assert any("'dup' (dup.png) -> renamed to 'dup_3'" in line for line in lines)
    assert any("broken.jpg' is empty" in line and "-> moved to .unreadable/broken.jpg" in line for line in lines)
    assert any("'bad'" in line and line.endswith("-> entry dropped (image file kept)") for line in lines)
    assert "wrote the index (keyframes.db) with 5 entries" in lines

    # Every user image is still there, byte for byte (the unreadable ones moved aside).
    for name, data in user_images.items():
        place = kf / name if (kf / name).exists() else kf / ".unreadable" / name
        assert place.read_bytes() == data, name
    assert (kf / ".unreadable" / "corrupt.png").is_file() and (kf / ".unreadable" / "broken.jpg").is_file()
    assert keep.is_file() and not orphan.exists() and not list(kf.rglob("*.tmp"))
    entries = index_entries(kf)
    assert [(e["name"], e["image"]) for e in entries] == [
        ("good", "good.png"), ("posey", "posey.png"), ("dup", "d1.png"), ("dup_2", "d2.png"), ("dup_3", "dup.png")]
    assert entries[0]["added"] == "2024-01-01T00:00:00+00:00"
    assert entries[1]["invalid_pose"] == {"position": [1, 2]} and "pose" not in entries[1]
    store = KeyframeStore(kf)
    assert [k.name for k in store.load()] == ["good", "posey", "dup", "dup_2", "dup_3"] and store.warnings == []
    proc = script("check", "--dir", kf)
    assert proc.returncode == 0 and proc.stdout.strip() == f"{kf}: no problems"


def test_corrupt_index_is_kept_as_backup_and_rewritten(tmp_path, capsys):
    kf = tmp_path / "kf"
    save_rgb(kf / "b.png", picture(1))
    save_rgb(kf / "a.png", picture(2))
    broken = "keyframes: [ {name: a, image: a.png, pose: {position: [1, 2"
    (kf / "keyframes.yaml").write_text(broken)
    code, out, _ = run(capsys, "check", "--dir", kf)
    assert code == 1 and "keyframes.yaml is unreadable" in out
    code, _, err = run(capsys, "remove", "a", "--dir", kf)
    assert code == 2 and "unreadable" in err and (kf / "a.png").is_file()  # no removal on a broken index

    code, out, _ = run(capsys, "check", "--repair", "--dir", kf)
    assert code == 0 and "-> kept as keyframes.yaml.unreadable-" in out
    backups = list(kf.glob("keyframes.yaml.unreadable-*"))
    assert len(backups) == 1 and backups[0].read_text() == broken
    assert index_entries(kf) == [{"name": "a", "image": "a.png"}, {"name": "b", "image": "b.png"}]
    store = KeyframeStore(kf)
    assert [k.name for k in store.load()] == ["a", "b"] and store.warnings == [] and check_store(store) == []


def test_build_cache_writes_one_file_per_keyframe_then_loads_them(tmp_path, capsys, monkeypatch):
    """The one test that builds a (random-weight) RoMa: ~16 s, ~4 GB; the second run reuses it."""
    from roma_ros.matching import registry as base

    kf = tmp_path / "kf"
    store = KeyframeStore(kf)
    for i, name in enumerate(("near", "far")):
        store.add(picture(60 * i + 20, 60, 80), store.load(), name=name)
    built, real_build = [], base.build_matcher

    def build_once(config):  # the second run reuses the network (the cache key is the same)
        if not built:
            built.append(real_build(config))
        return built[0]

    monkeypatch.setattr(base, "build_matcher", build_once)

    args = ("build-cache", "--dir", kf, "--model", "roma_outdoor", "--random-weights", "--device", "cpu",
            "--coarse-res", 112, "--upsample-res", 0)
    code, out, err = run(capsys, *args)
    assert code == 0, err
    folders = list((kf / ".cache").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("roma_outdoor-c112-")
    assert sorted(p.name for p in folders[0].iterdir()) == sorted(cache_file_name(kf, f) for f in ("far.png", "near.png"))
    assert out.strip() == f"2 keyframes: 0 loaded, 2 computed; cache folder {folders[0]}"
    code, out, err = run(capsys, *args)
    assert code == 0 and out.strip() == f"2 keyframes: 2 loaded, 0 computed; cache folder {folders[0]}"
    assert len(built) == 1 and built[0].config.random_weights

    # remove deletes the keyframe's cache file too, and check finds nothing left over.
    code, out, _ = run(capsys, "remove", "far", "--dir", kf)
    assert code == 0 and [p.name for p in folders[0].iterdir()] == [cache_file_name(kf, "near.png")]
    assert check_store(store) == []


def test_classical_model_has_no_cache_to_build(tmp_path, capsys):
    kf = tmp_path / "kf"
    save_rgb(kf / "a.png", picture(3))
    code, out, _ = run(capsys, "build-cache", "--dir", kf, "--model", "classical")
    assert code == 0 and out.strip() == "model classical keeps no feature cache: nothing to build"
    assert not (kf / ".cache").exists()


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    kf, missing = tmp_path / "kf", tmp_path / "missing"
    save_rgb(tmp_path / "ok.png", picture(5))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    assert script("add", tmp_path / "ok.png", "--dir", kf, "--name", "secret_place").returncode == 0

    cases = [
        (("list", "--dir", missing), f"keyframe folder '{missing}' does not exist"),
        (("check", "--dir", missing), f"keyframe folder '{missing}' does not exist"),
        (("remove", "x", "--dir", missing), f"keyframe folder '{missing}' does not exist"),
        (("build-cache", "--dir", missing, "--model", "classical"), f"keyframe folder '{missing}' does not exist"),
        (("remove", "nope", "--dir", kf), f"no keyframe named 'nope' in store '{kf}'"),
        (("add", tmp_path / "ok.png", tmp_path / "bad.png", "--dir", kf), "bad.png' is not a readable image"),
        (("add", tmp_path / "gone.png", "--dir", kf), "gone.png' does not exist"),
        (("add", tmp_path / "ok.png", tmp_path / "ok.png", "--dir", kf, "--name", "n"), "go with a single IMAGE"),
        (("add", tmp_path / "ok.png", "--dir", kf, "--pose", 1, 2, "nan", 0, 0, 0, 1), "finite"),
        (("build-cache", "--dir", kf, "--coarse-res", 100), "multiple of 14"),
    ]
    for args, message in cases:
        proc = script(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith("roma-keyframes: error: ") and message in lines[0], (args, lines)
        assert "secret_place" not in proc.stderr
    assert [k.name for k in KeyframeStore(kf).load()] == ["secret_place"]  # failed adds added nothing
    assert script("frobnicate").returncode == 2 and script("add", "--dir", kf).returncode == 2


def test_defaults_agree_with_the_node_and_the_feature_cache():
    from roma_ros.ros import params
    from roma_ros.store import cache, folder

    assert build_parser().parse_args(["list"]).dir == DEFAULT_DIR
    assert params.keyframes_dir({"keyframes_dir": ""}) == Path(DEFAULT_DIR).expanduser()
    assert folder.CACHE_DIR == cache.CACHE_DIR


def test_depth_keyframes_add_list_check_remove(tmp_path, capsys):
    import cv2

    from roma_ros.store import save_depth

    src, kf = tmp_path / "src", tmp_path / "kf"
    save_rgb(src / "a.png", picture(10))
    save_rgb(src / "b.png", picture(90))
    mm = (np.arange(600, dtype=np.uint16).reshape(20, 30) + 500)
    mm[0, :] = 0
    cv2.imwrite(str(src / "a_depth.png"), mm)
    save_depth(src / "b_depth.tiff", mm.astype(np.float32) / 1000)
    save_depth(src / "small.tiff", np.ones((10, 15), np.float32))

    code, out, err = run(capsys, "add", src / "a.png", "--dir", kf, "--depth", src / "a_depth.png",
                         "--intrinsics", 30, 30, 14.5, 9.5, "--pose", 0, 0, 0, 0, 0, 0, 1)
    assert code == 0, err
    assert out.splitlines()[1] == f"  depth {kf / 'depth' / 'a.png'}: 95% valid, 0.53 to 1.1 m"
    assert (kf / "depth" / "a.png").read_bytes() == cv2.imencode(".png", mm)[1].tobytes()  # 16-bit kept as is
    code, _, err = run(capsys, "add", src / "b.png", "--dir", kf, "--depth", src / "b_depth.tiff",
                       "--depth-scale", 2.0)
    assert code == 0, err
    keyframes = KeyframeStore(kf).load()
    assert keyframes[0].intrinsics == {"fx": 30.0, "fy": 30.0, "cx": 14.5, "cy": 9.5} and keyframes[0].posable
    np.testing.assert_allclose(keyframes[1].depth[1:], 2 * keyframes[0].depth[1:], rtol=1e-6)

    code, out, _ = run(capsys, "list", "--dir", kf)
    rows = table(out)
    assert [r[6:] for r in rows] == [["depth/a.png (95% valid)", "30 30 14.5 9.5"],
                                     ["depth/b.tiff (95% valid)", "-"]]
    assert out.splitlines()[0].split()[-2:] == ["depth", "intrinsics"]

    # check: wrong size, unreadable, all unknown, orphan; repair sets the bad depth aside.
    save_rgb(kf / "c.png", picture(30))
    save_rgb(kf / "d.png", picture(40))
    save_rgb(kf / "e.png", picture(50))
    save_depth(kf / "depth" / "small.tiff", np.ones((10, 15), np.float32))
    (kf / "depth" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    save_depth(kf / "depth" / "empty.tiff", np.zeros((20, 30), np.float32))
    save_depth(kf / "depth" / "orphan.tiff", np.ones((20, 30), np.float32))
    write_index(kf, index_entries(kf) + [
        {"name": "c", "image": "c.png", "depth": "depth/small.tiff"},
        {"name": "d", "image": "d.png", "depth": "depth/broken.png"},
        {"name": "e", "image": "e.png", "depth": "depth/empty.tiff"},
    ])
    code, out, _ = run(capsys, "check", "--dir", kf)
    lines = out.splitlines()
    assert code == 1 and lines[-1].startswith("4 problems; "), out
    assert "entry 2 'c': depth file" in lines[0] and "is 15x10 but its image is 30x20" in lines[0]
    assert "entry 3 'd': depth file" in lines[1] and "broken.png' is empty or not a readable PNG" in lines[1]
    assert "entry 4 'e': depth file 'depth/empty.tiff' has only 0.0% valid pixels" in lines[2]
    assert lines[3] == "depth file depth/orphan.tiff belongs to no keyframe (an interrupted add or removal)"
    code, out, _ = run(capsys, "check", "--repair", "--dir", kf)
    assert code == 1 and "1 problems remain" in out  # the empty depth map is the user's to replace
    entries = index_entries(kf)
    assert entries[2]["invalid_depth"] == "depth/small.tiff" and "depth" not in entries[2]
    assert not (kf / "depth" / "orphan.tiff").exists() and (kf / "depth" / "small.tiff").is_file()
    assert [k.name for k in KeyframeStore(kf).load()] == ["a", "b", "c", "d", "e"]

    # remove takes the depth file with the image and the cached features; the cache key ignores depth.
    cache = fake_cache(kf, "roma", "a.png")
    assert KeyframeStore(kf).cache_files("a.png") == [cache]
    code, out, _ = run(capsys, "remove", "a", "--dir", kf)
    assert code == 0 and out.strip() == f"removed 'a' (a.png); deleted a.png, depth/a.png, {cache.relative_to(kf)}"
    assert not (kf / "depth" / "a.png").exists() and not (kf / ".trash").exists()


def test_remove_with_depth_is_undone_when_the_index_write_fails(tmp_path, monkeypatch):
    kf = tmp_path / "kf"
    store = KeyframeStore(kf)
    store.add(picture(5), [], name="p", depth=np.full((20, 30), 1000, np.uint16))
    depth_bytes = (kf / "depth" / "p.png").read_bytes()
    from roma_ros.store.index import KeyframeIndex

    def disk_full(*args):
        raise OSError("disk full")

    monkeypatch.setattr(KeyframeIndex, "delete_rows", disk_full)
    with pytest.raises(OSError):
        store.remove("p")
    monkeypatch.undo()
    assert (kf / "depth" / "p.png").read_bytes() == depth_bytes and (kf / "p.png").is_file()
    assert check_store(store) == [] and KeyframeStore(kf).load()[0].depth[0, 0] == 1.0
    # A crash between trashing the files and writing the index: repair puts both back.
    (kf / ".trash" / "depth").mkdir(parents=True)
    (kf / "p.png").replace(kf / ".trash" / "p.png")
    (kf / "depth" / "p.png").replace(kf / ".trash" / "depth" / "p.png")
    assert any("depth/p.png is in .trash/ but still listed" in line for line in check_store(store, repair=True))
    assert KeyframeStore(kf).load()[0].depth[0, 0] == 1.0 and check_store(store) == []


def test_depth_options_errors_are_one_line(tmp_path):
    from roma_ros.store import save_depth

    kf = tmp_path / "kf"
    save_rgb(tmp_path / "ok.png", picture(5))
    save_depth(tmp_path / "small.tiff", np.ones((10, 15), np.float32))
    cases = [
        (("--depth", tmp_path / "small.tiff"), "is 15x10 but the image is 30x20"),
        (("--depth", tmp_path / "nope.png"), "nope.png' does not exist"),
        (("--depth-scale", 0.001), "--depth-scale needs --depth"),
        (("--depth", tmp_path / "small.tiff", "--depth-scale", -1), "positive"),
        (("--intrinsics", 0, 1, 2, 3), "must be > 0"),
    ]
    for extra, message in cases:
        code = main(["add", str(tmp_path / "ok.png"), "--dir", str(kf), *map(str, extra)])
        assert code == 2, extra
    for extra, message in cases[:2]:
        proc = script("add", tmp_path / "ok.png", "--dir", kf, *extra)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not kf.exists() or KeyframeStore(kf).load() == []
