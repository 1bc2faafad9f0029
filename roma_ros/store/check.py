"""Consistency check and repair of a keyframe store (``check_store``; ``roma-keyframes check``).

Finds what crashes, hand edits and removed images leave behind: temp files of
interrupted writes, an unreadable keyframes.yaml, images of an interrupted removal
in ``.trash/``, index entries that are malformed, point at missing or unreadable
images or carry a bad pose, bad intrinsics or a bad depth map (unreadable, wrong size
or type, no valid pixel), unreadable image files, duplicate names, depth files in
``depth/`` that no entry names, and cached features of images that are gone. Repair
never deletes a user's image: entries are dropped or fixed (a bad pose, intrinsics or
depth is moved to ``invalid_<key>``), unreadable images are moved to ``.unreadable/``,
a broken index is kept as a backup. Repair writes files, so run it while no node adds keyframes.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roma_ros.core.imageio import ImageFileError, load_rgb, replace_durably
from roma_ros.store.depth import DepthFileError, valid_fraction
from roma_ros.store.folder import (
    CACHE_DIR, DEPTH_DIR, TRASH_DIR, UnsafeFolderError, _parse_pose, cache_file_name, confined_subdir, entry_name,
    KeyframeStore, indexed_files, parse_intrinsics, read_entry_depth,
)

UNREADABLE_DIR = ".unreadable"
MIN_VALID_DEPTH = 0.05  # a depth map with fewer known pixels is reported as nearly empty


def set_aside(entry: dict[str, Any], key: str, *more: str) -> dict[str, Any]:
    """The entry with ``key`` renamed to ``invalid_<key>`` (and ``more`` keys with it), for the user to fix."""
    moved = (key, *more)
    return {k: v for k, v in entry.items() if k not in moved} | {f"invalid_{k}": entry[k] for k in moved if k in entry}


def is_file(path: Path) -> bool:
    """``Path.is_file`` that says False for a name the file system refuses (ENAMETOOLONG, EACCES)."""
    try:
        return path.is_file()
    except OSError:
        return False


def free_name(target: Path) -> Path:
    """``target``, or ``<stem>-2<suffix>``, ``-3``...: a file set aside never replaces another."""
    candidate, n = target, 1
    while candidate.exists():
        n += 1
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
    return candidate


def check_store(store: KeyframeStore, repair: bool = False) -> list[str]:
    """One line per problem; with ``repair`` each line ends with ``-> what was done``."""
    root = store.directory
    if not root.is_dir():
        raise FileNotFoundError(f"keyframe store '{root}' does not exist")
    report: list[str] = []

    def found(problem: str, fix: Callable[[], str]) -> None:
        report.append(f"{problem} -> {fix()}" if repair else problem)

    def move_aside(path: Path, folder: str) -> str:
        try:  # a planted .unreadable link must not carry the user's image out of the folder
            target = confined_subdir(root, folder) / path.relative_to(root)
        except UnsafeFolderError as exc:
            return f"left in place: {exc}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target = free_name(target)
        replace_durably(path, target)
        return f"moved to {target.relative_to(root)}"

    def delete(path: Path) -> str:
        path.unlink(missing_ok=True)
        return "deleted"

    try:  # never follow a planted link out of the folder (and never delete there)
        cache_root = confined_subdir(root, CACHE_DIR)
        cache_folders = sorted(p for p in cache_root.glob("*") if p.is_dir() and not p.is_symlink())
    except UnsafeFolderError as exc:
        report.append(f"{exc} (its files are left alone)")
        cache_folders = []
    try:
        depth_folders = [confined_subdir(root, DEPTH_DIR)]
    except UnsafeFolderError as exc:
        report.append(f"{exc} (its files are left alone)")
        depth_folders = []
    for folder in [root, *depth_folders, *cache_folders]:
        for tmp in sorted(folder.glob(".*.tmp")):
            found(f"leftover temp file {tmp.relative_to(root)} (an interrupted write)", lambda t=tmp: delete(t))

    store.warnings = []
    report += store.index().recover()  # interrupted adds of dead writers undone, removals finished
    entries: list[Any] = store._read_index()
    original = copy.deepcopy(entries)
    index_broken = store._index_unreadable
    if index_broken:
        found(store.warnings[0], lambda: "kept as " + store.backup_unreadable_index().name)
    with store.index().read() as conn:  # files of adds in progress in other processes count as listed
        listed = indexed_files(entries) | store.index().named_files(conn)

    try:
        trash_files = sorted(p for p in confined_subdir(root, TRASH_DIR).rglob("*") if p.is_file())
    except UnsafeFolderError as exc:
        report.append(f"{exc} (its files are left alone)")
        trash_files = []
    trash = root / TRASH_DIR
    for path in trash_files:
        image_file = path.relative_to(trash).as_posix()
        if (image_file in listed or index_broken) and not (root / image_file).exists():
            found(f"image {image_file} is in {TRASH_DIR}/ but still listed (interrupted removal)",
                  lambda p=path, f=image_file: (p.replace(root / f), "put back")[1])
        else:
            found(f"{TRASH_DIR}/{image_file} is left over from a removal", lambda p=path: delete(p))

    kept: list[dict[str, Any]] = []
    for number, entry in enumerate(entries):
        where = f"{store.index_path.name} entry {number}"
        if not isinstance(entry, dict) or "image" not in entry:
            found(f"{where}: needs at least 'image'", lambda: "entry dropped")
            continue
        where += f" '{entry_name(entry)}'"
        try:
            image = load_rgb(root / str(entry["image"]), max_pixels=store.max_pixels)
        except ImageFileError as exc:
            found(f"{where}: {exc}", lambda: "entry dropped (image file kept)")
            continue
        for key, parse in (("pose", _parse_pose), ("intrinsics", parse_intrinsics)):
            try:
                parse(entry.get(key), where)
            except ValueError as exc:
                entry = set_aside(entry, key)
                found(str(exc), lambda k=key: f"{k} moved to 'invalid_{k}'")
        try:
            depth = read_entry_depth(root, entry, image.shape, where)
        except (DepthFileError, ValueError) as exc:
            entry = set_aside(entry, "depth", "depth_scale")
            found(f"{where}: {exc}", lambda: "depth moved to 'invalid_depth'")
        else:
            if depth is not None and valid_fraction(depth) < MIN_VALID_DEPTH:
                found(f"{where}: depth file '{entry['depth']}' has only {valid_fraction(depth):.1%} valid pixels "
                      "(0 and NaN are unknown): wrong file or wrong depth_scale?", lambda: "kept")
        kept.append(entry)

    indexed = indexed_files(kept) if repair else listed
    unindexed = []
    for path in store.unindexed_images(indexed):
        try:
            load_rgb(path, max_pixels=store.max_pixels)
            unindexed.append({"name": path.stem, "image": path.name})
        except ImageFileError as exc:
            found(str(exc), lambda p=path: move_aside(p, UNREADABLE_DIR))

    # Duplicate names, in load order; later ones are renamed. An image without an entry
    # gets one, and then all such images do, so that the order stays as it was.
    items = [(e, True) for e in kept] + [(e, False) for e in unindexed]
    taken: set[str] = set()
    list_all = index_broken
    for entry, in_index in items:
        name = entry_name(entry)
        if name in taken:
            def rename(entry: dict[str, Any] = entry) -> str:
                entry["name"] = store._unique_name(name, taken | {entry_name(e) for e, _ in items})
                return f"renamed to '{entry['name']}'"

            found(f"duplicate name '{name}' ({entry['image']})", rename)
            list_all = list_all or not in_index
        taken.add(entry_name(entry))

    if repair:
        new_entries = [e for e, in_index in items if in_index or list_all]
        if new_entries != original or index_broken:
            store.write_index(new_entries)
            report.append(f"wrote the index ({store.db_path.name}) with {len(new_entries)} entries")

    for folder in depth_folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            depth_file = path.relative_to(root).as_posix()
            if depth_file not in listed and not index_broken and not path.name.startswith("."):
                found(f"depth file {depth_file} belongs to no keyframe (an interrupted add or removal)",
                      lambda p=path: delete(p))

    images = {str(e["image"]) for e in entries if isinstance(e, dict) and "image" in e}
    images |= {p.name for p in store.unindexed_images(set())}
    in_use = {cache_file_name(root, f) for f in images if is_file(root / f)}
    for folder in cache_folders:
        for path in sorted(folder.rglob("*.pt")):
            if path.relative_to(folder).as_posix() not in in_use:
                found(f"orphan cache file {path.relative_to(root)} (no keyframe image uses it)",
                      lambda p=path: delete(p))
    return report
