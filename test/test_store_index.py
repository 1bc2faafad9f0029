"""The SQLite keyframe index (store/index.py): several writers, kill -9, migration from
keyframes.yaml, export/import, following another process's changes, schema versions."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path


import numpy as np
import pytest
import yaml

from roma_ros.cli.keyframes import main
from roma_ros.core.imageio import save_rgb
from roma_ros.store import KeyframeStore, save_depth
from roma_ros.store import index as index_module
from roma_ros.store.check import check_store

WRITER = """
import sys, numpy as np
from roma_ros.store import KeyframeStore
folder, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = KeyframeStore(folder)
rng = np.random.default_rng(abs(hash(prefix)) % 2**32)
for i in range(count):
    image = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    depth = np.full((12, 16), 1000 + i, np.uint16) if i % 2 else None
    keyframe = store.add(image, [], name=f"{prefix}{i}", depth=depth,
                         pose=((float(i), 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
    print(keyframe.name, flush=True)
"""


def writer(folder: Path, prefix: str, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), prefix, str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def files_in(folder: Path) -> set[str]:
    """Every file of the folder the store writes (images, depth maps, their temp files), relative."""
    found = {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("keyframes.")}
    if (folder / "depth").is_dir():
        found |= {f"depth/{p.name}" for p in (folder / "depth").iterdir()}
    return found


def named(store: KeyframeStore) -> set[str]:
    return {e[k] for e in store.entries() for k in ("image", "depth") if e.get(k)}


def test_two_writer_processes_lose_nothing(tmp_path):
    kf = tmp_path / "kf"
    procs = [writer(kf, prefix, 200) for prefix in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    store = KeyframeStore(kf)
    names = [k.name for k in store.load()]
    assert len(names) == 400 and len(set(names)) == 400 and store.warnings == []
    assert sorted(names) == sorted(f"{p}{i}" for p in "ab" for i in range(200))
    for prefix in "ab":  # each writer's keyframes keep its order
        mine = [n for n in names if n.startswith(prefix)]
        assert mine == [f"{prefix}{i}" for i in range(200)]
    assert files_in(kf) == named(store) and check_store(store) == []


def test_kill_9_during_adds_loses_nothing_committed_and_leaves_no_orphans(tmp_path):
    kf = tmp_path / "kf"
    rng = np.random.default_rng(7)
    committed: list[str] = []
    for round_ in range(12):
        proc = writer(kf, f"r{round_}_", 1000)
        time.sleep(float(rng.uniform(0.4, 1.2)))  # interpreter start is ~0.3 s: kills land inside adds
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()  # reaped: the dead writer's pid is gone
        committed += out.split()  # printed after add returned
        store = KeyframeStore(kf)
        names = {k.name for k in store.load()}
        assert set(committed) <= names, set(committed) - names
        # An add that was killed after its commit but before printing counts as done, not lost.
        assert names - set(committed) <= {f"r{round_}_{len(out.split())}"}
        assert files_in(kf) == named(store), files_in(kf) ^ named(store)
        assert not [p for p in kf.rglob("*.tmp")]
        committed = sorted(names)
    assert len(committed) > 12  # the kills did land between adds, more than once


def yaml_map(kf: Path) -> list:
    for name in ("a", "b", "c", "d"):
        save_rgb(kf / f"{name}.png", np.full((20, 30, 3), ord(name), np.uint8))
    save_depth(kf / "depth_a.png", np.full((20, 30), 1.5, np.float32))
    save_depth(kf / "depth_b.tiff", np.full((20, 30), 2.25, np.float32))
    intrinsics = {"fx": 500.0, "fy": 501.0, "cx": 14.5, "cy": 9.5}
    entries = [
        {"name": "first", "image": "a.png", "pose": {"position": [1, 2, 3], "orientation": [0, 0, 0.6, 0.8]},
         "intrinsics": intrinsics, "depth": "depth_a.png", "depth_scale": 0.001, "added": "2024-05-01T10:00:00+00:00",
         "note": {"kept": ["as", "written"]}},
        {"name": "second", "image": "b.png", "intrinsics": {**intrinsics, "distortion": [0.1, -0.01, 0, 0, 0.001]},
         "depth": "depth_b.tiff", "pose": {"position": [-1.5, 0, 2e-3], "orientation": [0, 0, 0, 1]}},
        {"name": "shared", "image": "b.png"},
        {"name": "elsewhere", "image": "../outside.png", "pose": {"position": [9, 9, 9]}},
        {"name": "bad pose", "image": "c.png", "pose": {"position": [1, 2]}},
        "not a mapping",
    ]
    (kf / "keyframes.yaml").write_text(yaml.safe_dump({"keyframes": entries}, sort_keys=False))
    return entries


def test_a_folder_with_only_keyframes_yaml_is_migrated_with_nothing_lost(tmp_path):
    kf = tmp_path / "kf"
    entries = yaml_map(kf)
    before = {e["name"]: e for e in KeyframeStore(kf)._entries_from_yaml() if isinstance(e, dict)}
    store = KeyframeStore(kf)
    keyframes = store.load()
    assert (kf / "keyframes.db").is_file() and f"imported {len(entries)} entries" in store.notes[0]
    # Every entry, in order, as written (the unindexed d.png gets its entry at the end).
    assert store.entries() == json.loads(json.dumps(entries)) + [{"name": "d", "image": "d.png"}]
    by_name = {k.name: k for k in keyframes}
    assert list(by_name) == ["first", "second", "shared", "d"]
    assert by_name["first"].pose == ((1.0, 2.0, 3.0), (0.0, 0.0, 0.6, 0.8))
    assert by_name["first"].intrinsics == before["first"]["intrinsics"]
    assert by_name["second"].intrinsics["distortion"] == [0.1, -0.01, 0.0, 0.0, 0.001]
    assert by_name["first"].depth_scale == 0.001 and by_name["first"].extra["note"] == {"kept": ["as", "written"]}
    np.testing.assert_allclose(by_name["first"].depth, 1.5)
    np.testing.assert_allclose(by_name["second"].depth, 2.25)
    assert by_name["first"].added == "2024-05-01T10:00:00+00:00"
    # A second open imports nothing again; export gives back the same entries.
    again = KeyframeStore(kf)
    assert [k.name for k in again.load()] == list(by_name) and again.notes == []
    path, count = again.export_yaml(tmp_path / "out.yaml")
    assert count == 7 and yaml.safe_load(path.read_text())["keyframes"][:6] == entries


def test_edits_of_an_exported_yaml_are_imported_and_later_adds_kept(tmp_path, capsys):
    kf = tmp_path / "kf"
    store = KeyframeStore(kf)
    for name in ("p", "q", "r"):
        store.add(np.full((20, 30, 3), 9, np.uint8), [], name=name)
    assert main(["export", "--dir", str(kf)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 3 entries to {kf / 'keyframes.yaml'}"
    exported = yaml.safe_load((kf / "keyframes.yaml").read_text())["keyframes"]
    KeyframeStore(kf).add(np.full((20, 30, 3), 1, np.uint8), [], name="later")  # another process, after the export
    edited = [e for e in exported if e["name"] != "q"]
    edited[0]["pose"] = {"position": [4, 5, 6], "orientation": [0, 0, 0, 1]}
    (kf / "keyframes.yaml").write_text(yaml.safe_dump({"keyframes": edited}))
    keyframes = KeyframeStore(kf).load()
    # q's entry was deleted by hand: its image stays a keyframe (as it always did), now at the end.
    assert [k.name for k in keyframes] == ["p", "r", "later", "q"]
    assert keyframes[0].pose[0] == (4.0, 5.0, 6.0)
    assert main(["import", "--dir", str(kf)]) == 0
    assert "the index has 4 entries" in capsys.readouterr().out


def test_the_alias_bomb_deep_nesting_and_an_oversized_yaml_are_refused_quickly(tmp_path, monkeypatch):
    from roma_ros.store import yamlio

    kf = tmp_path / "kf"
    save_rgb(kf / "a.png", np.full((20, 30, 3), 5, np.uint8))
    bomb = "a: &a [" + ",".join(['"lol"'] * 9) + "]\n"
    for prev, name in zip("abcdefgh", "bcdefghi"):
        bomb += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    bomb += "keyframes: [{name: x, image: *i}]\n"
    cases = {
        "bomb": (bomb, "aliases expand to over"),
        "deep": ("keyframes: " + "[" * 20000 + "]" * 20000, "not valid YAML"),
        "deep_block": ("keyframes:\n" + "".join(" " * i + "- \n" for i in range(0, 200)), "nested deeper than 32"),
        "binary": (b"keyframes: [\xff\xfe]", "not UTF-8"),
    }
    added: list[str] = []
    for label, (text, message) in cases.items():
        path = kf / "keyframes.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        start = time.perf_counter()
        store = KeyframeStore(kf)
        keyframes = store.load()  # no RecursionError, no gigabytes: a warning and the images
        assert time.perf_counter() - start < 30, label  # generous: "quickly" means not minutes
        assert [k.name for k in keyframes] == ["a", *added], label
        assert any(message in w for w in store.warnings), (label, store.warnings)
        assert all(len(w) < 1000 for w in store.warnings), label
        store.add(np.full((20, 30, 3), 7, np.uint8), keyframes, name=f"after_{label}")  # issue 20 item 1
        added.append(f"after_{label}")
        assert main(["list", "--dir", str(kf)]) == 0
    monkeypatch.setattr(yamlio, "MAX_YAML_BYTES", 1000)
    (kf / "keyframes.yaml").write_text("keyframes: []\n" + "#" * 2000)
    store = KeyframeStore(kf)
    assert len(store.load()) == 5 and "over the 0 MiB limit" in " ".join(store.warnings)
    with pytest.raises(ValueError, match="limit for a keyframe index"):
        store.import_yaml()


def test_a_node_side_store_follows_another_process(tmp_path):
    kf = tmp_path / "kf"
    node_side = KeyframeStore(kf)
    node_side.add(np.full((20, 30, 3), 3, np.uint8), [], name="own")
    assert [k.name for k in node_side.load()] == ["own"] and node_side.poll() is None
    node_side.add(np.full((20, 30, 3), 4, np.uint8), [], name="own2")
    assert node_side.poll() is None  # our own add is known already
    proc = writer(kf, "other", 2)
    assert proc.wait(timeout=120) == 0
    change = node_side.poll()
    assert change is not None and not change.reload and [k.name for k in change.added] == ["other0", "other1"]
    assert change.added[1].depth is not None and node_side.poll() is None
    KeyframeStore(kf).remove("other0")  # another process removes: the follower must reload
    change = node_side.poll()
    assert change is not None and change.reload
    assert [k.name for k in node_side.load()] == ["own", "own2", "other1"] and node_side.poll() is None


def test_schema_versions_migrate_or_are_refused(tmp_path, monkeypatch):
    kf = tmp_path / "kf"
    KeyframeStore(kf).add(np.full((20, 30, 3), 3, np.uint8), [], name="old")
    calls = []
    now = index_module.SCHEMA_VERSION

    def to_next(db):
        calls.append(f"v{now}->v{now + 1}")
        db.execute("ALTER TABLE keyframes ADD COLUMN note TEXT")

    monkeypatch.setattr(index_module, "SCHEMA_VERSION", now + 1)
    monkeypatch.setitem(index_module.MIGRATIONS, now, to_next)
    store = KeyframeStore(kf)
    assert [k.name for k in store.load()] == ["old"] and calls == [f"v{now}->v{now + 1}"]
    assert store.index().meta("schema_version") == str(now + 1)
    store.close()
    monkeypatch.setattr(index_module, "SCHEMA_VERSION", now)
    store = KeyframeStore(kf)
    loaded = store.load()  # the images are still used; nothing is written to the newer index
    assert [k.name for k in loaded] == ["old"]
    assert f"schema version {now + 1}, newer than this roma_ros ({now})" in store.warnings[0]
    with pytest.raises(ValueError, match="newer than this roma_ros"):
        store.add(np.zeros((20, 30, 3), np.uint8), [])


def test_a_version_1_index_gains_the_descriptor_tables(tmp_path):
    """Schema 1 (issue 19's first index) had no descriptor or vocabulary table: opening it
    adds them, keeps every row, and descriptors can then be stored."""
    kf = tmp_path / "kf"
    KeyframeStore(kf).add(np.full((20, 30, 3), 3, np.uint8), [], name="old")
    db = sqlite3.connect(kf / "keyframes.db")
    db.execute("DROP TABLE descriptors")
    db.execute("DROP TABLE vocabularies")
    db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    db.commit()
    db.close()
    store = KeyframeStore(kf)
    assert [k.name for k in store.load()] == ["old"]
    assert store.index().meta("schema_version") == "2"
    store.index().save_descriptors("m", [("old.png", "1:2", b"\x00\x3c" * 4)])
    assert [(i, s, bytes(d)) for i, s, d in store.index().descriptors("m")] == [("old.png", "1:2", b"\x00\x3c" * 4)]


def test_keyframes_within_a_radius_come_from_the_r_tree(tmp_path):
    kf = tmp_path / "kf"
    store = KeyframeStore(kf)
    for i, x in enumerate((0.0, 1.0, 2.5, 10.0)):
        store.add(np.full((20, 30, 3), i, np.uint8), [], name=f"k{i}", pose=((x, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
    store.add(np.full((20, 30, 3), 9, np.uint8), [], name="no_pose")
    db = store.index()
    seqs = db.within((0.9, 0.0, 0.0), 1.7)
    names = {row.seq: row.entry["name"] for row in db.rows()}
    assert [names[s] for s in seqs] == ["k1", "k0", "k2"]
    plan = " ".join(str(r) for r in db._conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM positions WHERE x0 <= 1 AND x1 >= 0").fetchall())
    assert "VIRTUAL TABLE INDEX" in plan  # the R*Tree answers, not a scan of the keyframes


def test_a_symlinked_or_foreign_database_is_refused_with_a_clear_error(tmp_path):
    kf = tmp_path / "kf"
    save_rgb(kf / "a.png", np.full((20, 30, 3), 5, np.uint8))
    (tmp_path / "elsewhere.db").write_bytes(b"")
    (kf / "keyframes.db").symlink_to(tmp_path / "elsewhere.db")
    store = KeyframeStore(kf)
    assert [k.name for k in store.load()] == ["a"] and "is a symlink" in store.warnings[0]
    (kf / "keyframes.db").unlink()
    (kf / "keyframes.db").write_bytes(b"this is not sqlite" * 100)
    store = KeyframeStore(kf)
    assert [k.name for k in store.load()] == ["a"] and "cannot be used as the keyframe index" in store.warnings[0]
    assert main(["add", str(kf / "a.png"), "--dir", str(kf)]) == 2


DOC = Path(__file__).resolve().parents[1] / "docs" / "keyframes.md"


def test_the_documented_commands_run_and_the_documented_schema_is_the_code(tmp_path, capsys, monkeypatch):
    import re
    import shlex

    monkeypatch.chdir(tmp_path)
    save_rgb(tmp_path / "photo.png", np.full((480, 640, 3), 90, np.uint8))
    save_depth(tmp_path / "d.png", np.full((480, 640), 1.25, np.float32))
    block = DOC.read_text().split("## Commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    for line in block.strip().splitlines():
        command = line.split("#", 1)[0].replace("~/map", str(tmp_path / "map")).replace("[--repair]", "--repair")
        argv = shlex.split(command)
        assert argv[0] == "roma-keyframes"
        assert main(argv[1:]) == 0, (line, capsys.readouterr())
    assert (tmp_path / "map" / "keyframes.yaml").is_file()
    store = KeyframeStore(tmp_path / "map")
    store.load()
    schema = DOC.read_text().split("## Schema", 1)[1]
    assert f"(version {index_module.SCHEMA_VERSION})" in schema.splitlines()[0]
    db = store.index()._conn
    for table in ("meta", "keyframes", "pending_deletes", "positions", "descriptors", "vocabularies"):
        columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
        documented = re.search(rf"CREATE (?:VIRTUAL )?TABLE {table} .*?\);", schema, re.S).group(0)
        assert all(re.search(rf"\b{c}\b", documented) for c in columns), (table, columns)
