"""``keyframes.yaml`` read with bounds, written atomically: the human-editable face of the index.

The index proper is SQLite (index.py); the YAML is what ``roma-keyframes export`` writes
and ``import`` reads, and what a folder made by hand (or by an older roma_ros) carries.
A YAML file is data from outside, so reading it is bounded before any object is built:

- size: files over ``MAX_YAML_BYTES`` are refused from their ``stat`` (a 100 000-entry
  export is about 40 MB);
- aliases: PyYAML writes one where a value is shared (the same intrinsics twice), but a
  771-byte file of nested aliases stands for gigabytes (the "billion laughs"): the data
  the aliases stand for may be at most ``MAX_EXPANSION`` times the file's own values;
- nesting: more than ``MAX_YAML_DEPTH`` levels is refused, so a file of 20 000 ``[`` can
  not drive the composer into a RecursionError.

The checks walk libyaml's event stream (C, no recursion, no objects built), then the
file is loaded with libyaml's safe loader, which builds plain data only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from roma_ros.core.imageio import save_bytes

MAX_YAML_BYTES = 128 * 1024 * 1024
MAX_YAML_DEPTH = 32
MAX_EXPANSION = 8  # aliases may make the data at most this many times the file's own values (+100 000)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


class YamlIndexError(ValueError):
    """keyframes.yaml is unreadable, too large, too deep, uses aliases or has the wrong shape."""


def _check_events(text: str, where: str) -> None:
    """Depth and alias expansion, from the event stream: each node's size counts what its
    aliases stand for, so an alias of an alias of ... (the 771-byte bomb) is caught while
    an alias PyYAML writes for a shared value (the same intrinsics dict twice) passes."""
    sizes: dict[str, int] = {}  # anchor -> expanded node count
    stack: list[list[Any]] = [[None, 0]]  # open collections: [anchor, expanded size so far]
    events = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            events += 1
            if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
                if isinstance(event, yaml.AliasEvent):
                    size = sizes.get(event.anchor, 1)
                else:
                    size = 1
                    if event.anchor:
                        sizes[event.anchor] = 1
                stack[-1][1] += size
            elif isinstance(event, _OPEN):
                stack.append([event.anchor, 1])
                if len(stack) - 1 > MAX_YAML_DEPTH:
                    raise YamlIndexError(f"{where}: nested deeper than {MAX_YAML_DEPTH} levels (line "
                                         f"{event.start_mark.line + 1}); a keyframe index needs 4")
            elif isinstance(event, _CLOSE):
                anchor, size = stack.pop()
                if anchor:
                    sizes[anchor] = size
                stack[-1][1] += size
            else:
                continue
            if stack[-1][1] > MAX_EXPANSION * events + 100_000:
                raise YamlIndexError(f"{where}: its aliases expand to over {stack[-1][1]:,} values from "
                                     f"{events:,} in the file (line {event.start_mark.line + 1}): an alias bomb? "
                                     "Write the values out instead of '*alias' references")
    except yaml.YAMLError as exc:
        raise YamlIndexError(f"{where}: not valid YAML ({_short(exc)})") from None


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def parse_index_text(text: str, where: str = "keyframes.yaml") -> list[Any]:
    """The ``keyframes`` list of an index document; YamlIndexError says what is wrong."""
    _check_events(text, where)
    try:
        data = yaml.load(text, Loader=_Loader) or {}
    except (yaml.YAMLError, RecursionError) as exc:  # RecursionError: defence in depth, the depth check comes first
        raise YamlIndexError(f"{where}: not valid YAML ({_short(exc)})") from None
    entries = data.get("keyframes", []) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise YamlIndexError(f"{where}: top level must be a mapping with a 'keyframes' list")
    return entries


def read_index_file(path: str | os.PathLike) -> list[Any]:
    """Entries of a keyframes.yaml; YamlIndexError (a ValueError) for anything unusable,
    OSError only when the file cannot be opened."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise YamlIndexError(f"{path} is {size / 2**20:.0f} MiB, over the {MAX_YAML_BYTES // 2**20} MiB limit "
                             "for a keyframe index: is it the right file?")
    raw = path.read_bytes()[:MAX_YAML_BYTES + 1]  # the file may have grown since the stat
    if len(raw) > MAX_YAML_BYTES:
        raise YamlIndexError(f"{path} grew over the {MAX_YAML_BYTES // 2**20} MiB limit while being read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlIndexError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_index_text(text, str(path))


def dump_index_text(entries: list[dict[str, Any]]) -> str:
    return yaml.dump({"keyframes": entries}, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def write_index_file(path: str | os.PathLike, entries: list[dict[str, Any]]) -> Path:
    """Write the entries atomically (temp file + rename)."""
    return save_bytes(path, dump_index_text(entries).encode())
