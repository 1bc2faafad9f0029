"""Issue 10's faults, one test each, on a real match_node over real DDS (loopback only):
a model that fails to load, frames over or under the size limits and decompression bombs,
counters that add up, log throttling by cause, and odd keyframe folders."""
from __future__ import annotations

import shutil
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage

from rosutil import Probe, wait_for
from roma_ros.ros.conversions import rgb_to_compressed_msg, rgb_to_image_msg
from roma_ros.demo.photo_pairs import make_pair
from test_node import PLACES, start, write_keyframes


@pytest.fixture(scope="module")
def pairs():
    return {name: make_pair(name, seed=11 + i) for i, name in enumerate(PLACES)}


@pytest.fixture
def stop_after():
    started = []
    yield started.append
    for *_, spinner in started:  # (node, probe, spinner)
        spinner.shut_down()


def diagnostics_when(probe: Probe, predicate, what: str, timeout: float = 20.0) -> dict:
    return wait_for(lambda: (d := probe.latest_diagnostics()) and predicate(d) and d, timeout, what)


def publish(probe: Probe, msg) -> None:
    msg.header.stamp = probe.next_header_stamp()
    (probe.pub_compressed if isinstance(msg, CompressedImage) else probe.pub_image).publish(msg)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 20000) -> bytes:
    """A valid gray PNG of side x side zeros: a few hundred KB that decode to side^2 bytes
    (then 3 x that as RGB). Built row by row, never held in memory."""
    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    body = b"".join(packer.compress(row * 500) for _ in range(side // 500)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


# ------------------------------------------------------------------ 1. the model loader never dies silently
def test_wrong_checkpoint_content_is_an_error_in_diagnostics_not_a_hang(ros, tmp_path, pairs, stop_after):
    checkpoint = tmp_path / "not_tiny_roma.pth"
    torch.save({"some.other.model": torch.zeros(3)}, checkpoint)
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf", model="tiny_roma_outdoor", weights=str(checkpoint),
                                 allow_download=False, device="cpu")
    stop_after((node, probe, spinner))
    diag = diagnostics_when(probe, lambda d: d["state"] == "error: model not loaded", "the load error")
    assert diag["_level"] == 2  # ERROR
    assert "RuntimeError" in diag["last_error"] and str(checkpoint) in diag["last_error"]
    response = probe.call(probe.add_client)
    assert not response.success and response.message.startswith("matcher not ready: cannot load the matcher")


# ------------------------------------------------------------------ 3. and 6. bounded memory, minimum size
def test_frames_over_max_image_pixels_or_under_the_minimum_are_bad_frames(ros, tmp_path, pairs, stop_after):
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf", max_image_pixels=200_000)
    stop_after((node, probe, spinner))
    wait_for(lambda: probe.pub_image.get_subscription_count(), 20, "image subscription")
    publish(probe, rgb_to_image_msg(pairs["coffee"].query))  # 640 x 480 = 307 200 pixels
    diag = diagnostics_when(probe, lambda d: d.get("bad_frames") == "1", "the large frame counted")
    assert "image too large" in diag["last_error"] and "max_image_pixels" in diag["last_error"]
    for shape in ((1, 1, 3), (2, 2, 3), (1, 4000, 3)):
        publish(probe, rgb_to_image_msg(np.full(shape, 128, np.uint8)))
        time.sleep(0.3)
    diag = diagnostics_when(probe, lambda d: d.get("bad_frames") == "4", "the three tiny frames counted")
    assert "image too small" in diag["last_error"] and diag["processed"] == "0"
    assert node.set_parameters([Parameter("max_image_pixels", value=400_000)])[0].successful
    assert probe.send(pairs["coffee"].query).width >= 30  # a live change, and the node still matches


def test_png_bomb_is_rejected_from_its_header_without_decoding(ros, tmp_path, pairs, stop_after):
    bomb = png_bomb()
    assert len(bomb) < 1_000_000
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf", image_transport="compressed")
    stop_after((node, probe, spinner))
    wait_for(lambda: probe.pub_compressed.get_subscription_count(), 20, "compressed subscription")
    before = rss_mb()
    publish(probe, CompressedImage(format="png", data=bomb))
    diag = diagnostics_when(probe, lambda d: d.get("bad_frames") == "1", "the bomb counted")
    assert "20000x20000" in diag["last_error"] and "max_image_pixels" in diag["last_error"]
    assert rss_mb() - before < 200  # decoding it would take 400 MB gray + 1.2 GB RGB
    assert probe.send(msg=rgb_to_compressed_msg(pairs["coffee"].query, quality=95)).width >= 30


# ------------------------------------------------------------------ 4. every frame accounted for
def test_counters_add_up_and_failures_raise_the_level(ros, tmp_path, pairs, stop_after):
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf")
    stop_after((node, probe, spinner))
    wait_for(lambda: probe.pub_image.get_subscription_count(), 20, "image subscription")
    good = rgb_to_image_msg(pairs["chelsea"].query)
    bad = rgb_to_image_msg(pairs["chelsea"].query)
    bad.encoding = "yuv422"
    sent = 0
    for i in range(60):  # faster than matching: most frames are replaced in the slot
        publish(probe, bad if i % 10 == 0 else good)
        sent += 1
        time.sleep(0.01)
    counts = diagnostics_when(probe, lambda d: d["in_flight"] == "0" and int(d["received"]) > 0,
                              "the worker to go idle")
    numbers = {k: int(counts[k]) for k in ("received", "processed", "replaced", "bad_frames", "failed")}
    assert numbers["received"] == sum(v for k, v in numbers.items() if k != "received")
    assert numbers["processed"] >= 1 and numbers["replaced"] >= 1 and numbers["failed"] == 0
    lost = counts["lost_in_transport"]
    if lost.isdigit():  # Fast DDS on Iron and newer: every sent frame is either received or lost
        assert numbers["received"] + int(lost) == sent, (numbers, lost)

    real_process = node.relocalizer.process

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    node.relocalizer.process = out_of_memory
    for i in range(3):
        probe.pub_image.publish(good)
        wait_for(lambda n=i: int(node.frames.counts()["failed"]) > n, 10, "a failed frame")
    diag = diagnostics_when(probe, lambda d: d["failed"] == "3", "3 failures")
    assert diag["_level"] == 1 and "CUDA out of memory. Tried to allocate 2.00 GiB" in diag["last_error"]
    for i in range(3, 10):
        probe.pub_image.publish(good)
        wait_for(lambda n=i: int(node.frames.counts()["failed"]) > n, 10, "a failed frame")
    diag = diagnostics_when(probe, lambda d: d["failed"] == "10", "10 failures")
    assert diag["_level"] == 2 and "10 of the last 10" in diag["_message"]
    node.relocalizer.process = real_process
    assert probe.send(pairs["chelsea"].query).width >= 30
    assert diagnostics_when(probe, lambda d: d["processed"] == str(numbers["processed"] + 1), "recovery")["_level"] == 1


# ------------------------------------------------------------------ 5. throttling by cause, not by text
def test_log_throttle_is_keyed_by_cause_not_by_text(ros, tmp_path, pairs, stop_after, capfd):
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf")
    stop_after((node, probe, spinner))
    wait_for(lambda: probe.pub_image.get_subscription_count(), 20, "image subscription")
    capfd.readouterr()
    for i in range(20):  # 20 distinct texts of one cause
        msg = rgb_to_image_msg(pairs["coffee"].query)
        msg.encoding = f"fancy{i}"
        publish(probe, msg)
        # One at a time: a frame sent while the worker still holds the last would be "replaced".
        wait_for(lambda n=i + 1: node.frames.counts()["bad_frames"] == n, 10, f"bad frame {i + 1}")
    truncated = rgb_to_image_msg(pairs["coffee"].query)
    truncated.data = truncated.data[:1000]
    publish(probe, truncated)  # another cause is not hidden by the first
    diag = diagnostics_when(probe, lambda d: d.get("bad_frames") == "21", "21 bad frames")
    assert "wrong step/size" in diag["last_error"]  # diagnostics keep the latest full message
    err = capfd.readouterr().err
    assert sum("unsupported encoding" in line for line in err.splitlines()) == 1, err
    assert sum("wrong step/size" in line for line in err.splitlines()) == 1, err


def test_libpng_complaints_do_not_bypass_the_logger(ros, tmp_path, pairs, stop_after, capfd):
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf", image_transport="compressed")
    stop_after((node, probe, spinner))
    wait_for(lambda: probe.pub_compressed.get_subscription_count(), 20, "compressed subscription")
    png = bytearray(rgb_to_compressed_msg(pairs["coffee"].query, fmt="png").data)
    png[100] ^= 0xFF  # inside IDAT: the header is fine, the CRC is not
    capfd.readouterr()
    publish(probe, CompressedImage(format="png", data=bytes(png)))
    diag = diagnostics_when(probe, lambda d: d.get("bad_frames") == "1", "the corrupt PNG counted")
    assert "libpng error" in diag["last_error"]  # the codec's reason, in our message
    err = capfd.readouterr().err
    assert not any(line.startswith("libpng") for line in err.splitlines()), err
    assert sum("corrupt or empty compressed image" in line for line in err.splitlines()) == 1, err


# ------------------------------------------------------------------ 7. smaller faults
def test_folder_named_keyframes_yaml_is_reported_and_a_failed_add_leaves_nothing(ros, tmp_path, pairs, stop_after):
    folder = tmp_path / "kf"
    write_keyframes(folder, pairs)
    (folder / "keyframes.yaml").unlink()
    (folder / "keyframes.yaml").mkdir()
    node, probe, spinner = start(ros, folder)
    stop_after((node, probe, spinner))
    reload = probe.call(probe.reload_client)
    assert reload.success and "keyframes.yaml is not a file" in reload.message
    probe.send(pairs["coffee"].query)
    images = sorted(p.name for p in folder.iterdir())
    response = probe.call(probe.add_client)
    assert not response.success and "keyframes.yaml' is not a file" in response.message
    assert sorted(p.name for p in folder.iterdir()) == images  # no stray image for the next load
    assert "loaded 3 keyframes" in probe.call(probe.reload_client).message


def test_keyframes_dir_that_is_a_file_is_named_as_such(ros, tmp_path, pairs, stop_after):
    not_a_folder = tmp_path / "keyframes.txt"
    not_a_folder.write_text("oops")
    node, probe, spinner = start(ros, not_a_folder)
    stop_after((node, probe, spinner))
    reload = probe.call(probe.reload_client)
    assert "is a file, not a folder" in reload.message and "does not exist" not in reload.message
    probe.send(pairs["coffee"].query)
    response = probe.call(probe.add_client)
    assert not response.success and "is a file, not a folder" in response.message
    assert not_a_folder.read_text() == "oops"


# ------------------------------------------------------------------ 2. confined writes (feature cache, trash)
def files_under(folder) -> set:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


def test_feature_cache_never_writes_outside_the_keyframe_folder(roma_model, tmp_path):
    from conftest import roma_config
    from roma_ros.store.cache import cache_for
    from roma_ros.core.imageio import save_rgb
    from roma_ros.store import KeyframeStore
    from roma_ros.matching.roma import RomaMatcher
    from roma_ros.localize.pipeline import Relocalizer

    outside = tmp_path / "outside"
    folder = tmp_path / "deep" / "kf"
    image = make_pair("coffee", seed=1, size=(90, 120)).candidate
    save_rgb(outside / "secret.png", image)
    save_rgb(folder / "inside.png", image)
    (folder / "keyframes.yaml").write_text(
        f"keyframes:\n  - {{name: abs, image: {outside / 'secret.png'}}}\n"
        "  - {name: rel, image: ../../outside/secret.png}\n  - {name: in, image: inside.png}\n")
    before = files_under(outside)
    keyframes = KeyframeStore(folder).load()
    assert [k.name for k in keyframes] == ["abs", "rel", "in"]  # images outside may be read
    matcher = RomaMatcher(roma_config(), model=roma_model)
    cache = cache_for(matcher, folder)
    Relocalizer(matcher).set_keyframes(keyframes, cache)
    assert (cache.stats.computed, cache.stats.loaded) == (2, 1) and not cache.stats.warnings  # abs = rel
    assert files_under(outside) == before and files_under(tmp_path / "deep") == {folder} | files_under(folder)
    written = sorted(p.name for p in cache.folder.iterdir())
    assert len(written) == 2 and all(n.startswith(("secret.png-", "inside.png-")) for n in written)

    # A planted .cache link is refused: features stay in memory, nothing lands at its target.
    other = tmp_path / "other"
    other.mkdir()
    shutil.rmtree(folder / ".cache")
    (folder / ".cache").symlink_to(other, target_is_directory=True)
    cache = cache_for(matcher, folder)
    reloc = Relocalizer(matcher)
    reloc.set_keyframes(keyframes, cache)
    assert cache.folder is None and "symlink" in cache.stats.warnings[0] and "in memory only" in cache.stats.warnings[0]
    assert list(other.iterdir()) == [] and len(reloc.keyframes) == 3
    assert KeyframeStore(folder).cache_files("inside.png") == []


def test_remove_writes_nothing_through_a_planted_trash_link(tmp_path):
    from roma_ros.store import KeyframeStore

    store = KeyframeStore(tmp_path / "kf")
    store.add(np.full((40, 40, 3), 7, np.uint8), [], name="a")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "kf" / ".trash").symlink_to(elsewhere, target_is_directory=True)
    store.remove("a")  # the index's deletion list needs no .trash: nothing goes through the link
    assert list(elsewhere.iterdir()) == [] and store.load() == [] and not (tmp_path / "kf" / "a.png").exists()


def test_store_syncs_each_file_then_its_folder_after_the_rename(tmp_path, monkeypatch):
    import os

    import roma_ros.core.imageio as imageio
    from roma_ros.store import KeyframeStore

    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(imageio.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    monkeypatch.setattr(imageio.os, "replace", lambda a, b: renamed.append(str(b)) or synced.append(("rename", str(b)))
                        or real_replace(a, b))
    store = KeyframeStore(tmp_path / "kf")
    store.add(np.full((40, 40, 3), 7, np.uint8), [], name="a")
    store.remove("a")
    folder = str(tmp_path / "kf")
    # After every rename the target's folder is synced before anything else happens.
    for i, event in enumerate(synced):
        if isinstance(event, tuple):
            assert synced[i + 1] == os.path.dirname(event[1]), synced
    image = str(tmp_path / "kf" / "a.png")
    assert [e[1] for e in synced if isinstance(e, tuple)] == [image]  # the index commits are SQLite's
    assert synced[synced.index(("rename", image)) - 1].startswith(folder + "/.a.png.")  # the temp file itself
    db = store.index()._conn
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: a committed add survives a power loss
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_codec_lines_are_caught_and_other_stderr_output_is_kept(capfd):
    import os

    from roma_ros.core.imageio import quiet_opencv

    with quiet_opencv() as codec:
        os.write(2, b"libpng error: IDAT: CRC error\n[INFO] [roma_matcher]: another thread's line\n")
    assert codec == ["libpng error: IDAT: CRC error"]
    err = capfd.readouterr().err
    assert "another thread's line" in err and "libpng" not in err


def test_a_failing_keyframe_reload_is_reported_not_raised(ros, tmp_path, pairs, stop_after):
    write_keyframes(tmp_path / "kf", pairs)
    node, probe, spinner = start(ros, tmp_path / "kf")
    stop_after((node, probe, spinner))
    real = node.relocalizer.set_keyframes

    def out_of_memory(*args, **kwargs):
        raise MemoryError("cannot allocate the keyframe features")

    node.relocalizer.set_keyframes = out_of_memory
    response = probe.call(probe.reload_client)
    assert not response.success and "MemoryError: cannot allocate the keyframe features" in response.message
    diag = diagnostics_when(probe, lambda d: d["state"] == "error: keyframes not loaded", "the reload error")
    assert diag["_level"] == 2
    node.relocalizer.set_keyframes = real
    assert probe.call(probe.reload_client).success  # the services and the executor still work
    assert probe.send(pairs["coffee"].query).width >= 30
