"""The keyframe index in SQLite (``keyframes.db`` in the keyframe folder, WAL mode).

Why SQLite: a YAML index is parsed and rewritten whole on every change (a minute at 10 000
keyframes) and two writers lose each other's additions. Here an add or a removal is one
or two small transactions, writers in several processes are serialised by SQLite's lock
(``BEGIN IMMEDIATE``), readers never block them (WAL), and a crash leaves each
transaction done or not done. The schema is written down in docs/keyframes.md.

Files stay files (images, depth maps, feature cache), so a transaction cannot cover
them; the protocol makes every crash end in "before" or "after" anyway:

- add: (1) a row in state ``writing`` reserves the name and names the files, with the
  writer's ``owner`` (host, pid, process start); (2) the files are written atomically;
  (3) the row becomes ``ok`` and gets the next ``seq`` (its place in the load order).
  Readers see ``ok`` rows only. A ``writing`` row whose owner is dead is an interrupted
  add: ``recover`` deletes its files (and their temp files) and the row.
- remove: (1) the row goes and its files are listed in ``pending_deletes`` (one
  transaction: the removal is done); (2) the files are deleted under the write lock,
  each only while no row names it. A crash between the two leaves only the list, which
  the next ``recover`` works off.

Versions: ``meta.schema_version``; ``MIGRATIONS[v]`` upgrades a folder from v to v+1 on
open, inside one transaction. A folder of a newer version is refused, not guessed at.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_FILE = "keyframes.db"
SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for another's transaction

# Version 2: the keyframes' global descriptors (float16, little-endian) per descriptor key (what
# they depend on: model, resolution, weights, and for the classical matcher the vocabulary's
# hash), so that a start or reload reads them instead of preparing every keyframe. ``stamp``
# is the image file's size and mtime when the descriptor was computed: an edited image is
# described again. The classical matcher's vocabulary, learnt from the map, is kept too.
DESCRIPTOR_TABLES = (
    "CREATE TABLE IF NOT EXISTS descriptors (key TEXT NOT NULL, image TEXT NOT NULL, stamp TEXT NOT NULL, "
    "data BLOB NOT NULL, PRIMARY KEY (key, image))",
    "CREATE TABLE IF NOT EXISTS vocabularies (key TEXT PRIMARY KEY, keyframes INTEGER NOT NULL, "
    "data BLOB NOT NULL)",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keyframes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER UNIQUE,
    name TEXT,
    image TEXT,
    depth TEXT,
    entry TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'writing')),
    owner TEXT,
    in_yaml INTEGER NOT NULL DEFAULT 0,
    descriptor BLOB
);
CREATE INDEX IF NOT EXISTS keyframes_name ON keyframes (name);
CREATE INDEX IF NOT EXISTS keyframes_image ON keyframes (image);
CREATE TABLE IF NOT EXISTS pending_deletes (path TEXT PRIMARY KEY);
CREATE VIRTUAL TABLE IF NOT EXISTS positions USING rtree (id, x0, x1, y0, y1, z0, z1);
""" + "".join(f"{statement};\n" for statement in DESCRIPTOR_TABLES)

# MIGRATIONS[v](connection) turns a version-v index into version v+1 (inside the open's transaction).
def _add_descriptor_tables(db: sqlite3.Connection) -> None:
    for statement in DESCRIPTOR_TABLES:
        db.execute(statement)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _add_descriptor_tables}


class IndexUnusable(ValueError):
    """The index cannot be used (newer schema, not a database); the message says what to do."""


@dataclass
class Row:
    id: int
    seq: int
    entry: dict[str, Any]


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks (Linux), so a reused pid is not taken for the writer."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def owner_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def owner_alive(owner: str | None) -> bool:
    """Whether the writer that owns a ``writing`` row may still be at work. Another host's
    writer cannot be checked and is taken for alive (SQLite's WAL needs one host anyway)."""
    try:
        host, pid_text, start = (owner or "").split(":")
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start == "?" or _process_start(pid) in (start, "?")


def entry_json(entry: dict[str, Any] | Any) -> str:
    return json.dumps(entry, default=str)  # YAML dates become text; NaN and inf round-trip (Python json)


def entry_position(entry: Any) -> tuple[float, float, float] | None:
    try:
        position = [float(v) for v in entry["pose"]["position"]]
    except (TypeError, KeyError, ValueError):
        return None
    return tuple(position) if len(position) == 3 and all(abs(v) < 1e30 for v in position) else None  # type: ignore


def _text(entry: Any, key: str) -> str | None:
    value = entry.get(key) if isinstance(entry, dict) else None
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


class KeyframeIndex:
    """One connection to a folder's ``keyframes.db``; thread-safe (one lock per connection)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_FILE
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                     check_same_thread=False)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._set_up()
        except BaseException:
            self._conn.close()
            raise
        self.owner = owner_token()

    def _set_up(self) -> None:
        """WAL mode and the schema. Two processes opening a new folder at once can meet SQLite's
        "database is locked" here without its busy handler (switching the journal mode of a new
        file), so this retries for up to BUSY_TIMEOUT_MS."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                if self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                    raise IndexUnusable(f"{self.path}: SQLite could not switch to WAL mode (a network file system?)")
                self._conn.execute("PRAGMA synchronous = FULL")  # an acknowledged add survives a power loss
                self._create_or_migrate()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                time.sleep(0.05)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- transactions -------------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from the start (no upgrade deadlocks)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One consistent snapshot for several queries."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def _create_or_migrate(self) -> None:
        with self.write() as db:
            has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            version = None
            if has_meta:
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = int(row[0]) if row else None
            if version is None:
                for statement in SCHEMA.strip().split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                return
            if version > SCHEMA_VERSION:
                raise IndexUnusable(f"{self.path} has schema version {version}, newer than this roma_ros "
                                  f"({SCHEMA_VERSION}): update roma_ros, or export the map with the newer one")
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](db)
                version += 1
                db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))

    # --- meta ---------------------------------------------------------------------------------
    def meta(self, key: str, db: sqlite3.Connection | None = None) -> str | None:
        with self._lock:
            row = (db or self._conn).execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def data_version(self) -> int:
        """Changes when another connection (another process) commits; cheap, no file read."""
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    # --- reading ------------------------------------------------------------------------------
    def rows(self, after_seq: int = 0, db: sqlite3.Connection | None = None) -> list[Row]:
        """Committed entries in load order (``seq``), those after ``after_seq`` only."""
        with self._lock:
            cursor = (db or self._conn).execute(
                "SELECT id, seq, entry FROM keyframes WHERE state='ok' AND seq > ? ORDER BY seq", (after_seq,))
            return [Row(i, s, json.loads(e)) for i, s, e in cursor]

    def iter_entries(self) -> Iterator[Any]:
        """Committed entries in load order, parsed one at a time: a 10^5-row load then never
        holds every row's parsed JSON at once (those transients, interleaved with the kept
        keyframes, would stay in the process's memory as fragmentation)."""
        with self.read() as db:
            for (entry,) in db.execute("SELECT entry FROM keyframes WHERE state='ok' ORDER BY seq"):
                yield json.loads(entry)

    def summary(self, db: sqlite3.Connection | None = None) -> tuple[int, int]:
        """(committed entries, largest seq)."""
        with self._lock:
            count, top = (db or self._conn).execute(
                "SELECT count(*), coalesce(max(seq), 0) FROM keyframes WHERE state='ok'").fetchone()
        return int(count), int(top)

    @staticmethod
    def named_files(db: sqlite3.Connection) -> set[str]:
        """Files any row names (``writing`` ones too) or a removal is deleting: never adopted."""
        files = {f for row in db.execute("SELECT image, depth FROM keyframes") for f in row if f}
        for (entry,) in db.execute("SELECT entry FROM keyframes WHERE entry LIKE '%invalid_depth%'"):
            value = _text(json.loads(entry), "invalid_depth")
            files.update([value] if value else [])
        return files | {p for (p,) in db.execute("SELECT path FROM pending_deletes")}

    def names(self, db: sqlite3.Connection) -> set[str]:
        return {n for (n,) in db.execute("SELECT name FROM keyframes") if n}

    @staticmethod
    def has_name(db: sqlite3.Connection, name: str) -> bool:
        """One index lookup (keyframes_name), not a read of every name."""
        return db.execute("SELECT 1 FROM keyframes WHERE name=? LIMIT 1", (name,)).fetchone() is not None

    def within(self, position: tuple[float, float, float], radius: float) -> list[int]:
        """``seq`` of the keyframes whose position lies within ``radius`` of ``position`` (R*Tree
        box query, then the exact distance), nearest first."""
        x, y, z = position
        with self._lock:
            rows = self._conn.execute(
                "SELECT k.seq, (p.x0-?)*(p.x0-?) + (p.y0-?)*(p.y0-?) + (p.z0-?)*(p.z0-?) AS d2 "
                "FROM positions p JOIN keyframes k ON k.id = p.id "
                "WHERE p.x0 <= ? AND p.x1 >= ? AND p.y0 <= ? AND p.y1 >= ? AND p.z0 <= ? AND p.z1 >= ? "
                "AND k.state='ok' ORDER BY d2",
                (x, x, y, y, z, z, x + radius, x - radius, y + radius, y - radius, z + radius, z - radius)).fetchall()
        return [int(seq) for seq, d2 in rows if d2 <= radius * radius]

    # --- writing ------------------------------------------------------------------------------
    @staticmethod
    def _next_seq(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT coalesce(max(seq), 0) + 1 FROM keyframes").fetchone()[0])

    @staticmethod
    def _set_position(db: sqlite3.Connection, row_id: int, entry: Any) -> None:
        db.execute("DELETE FROM positions WHERE id=?", (row_id,))
        position = entry_position(entry)
        if position is not None:
            x, y, z = position
            db.execute("INSERT INTO positions VALUES (?, ?, ?, ?, ?, ?, ?)", (row_id, x, x, y, y, z, z))

    def insert(self, db: sqlite3.Connection, entry: Any, state: str = "ok") -> int:
        """A new row (inside ``write``); ``ok`` rows get the next ``seq``."""
        seq = self._next_seq(db) if state == "ok" else None
        cursor = db.execute(
            "INSERT INTO keyframes (seq, name, image, depth, entry, state, owner) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, _text(entry, "name") or (Path(_text(entry, "image") or "").stem or None), _text(entry, "image"),
             _text(entry, "depth"), entry_json(entry), state, None if state == "ok" else self.owner))
        row_id = int(cursor.lastrowid)
        if state == "ok":
            self._set_position(db, row_id, entry)
        return row_id

    def update(self, db: sqlite3.Connection, row_id: int, entry: Any) -> None:
        db.execute("UPDATE keyframes SET name=?, image=?, depth=?, entry=? WHERE id=?",
                   (_text(entry, "name") or Path(_text(entry, "image") or "").stem or None, _text(entry, "image"),
                    _text(entry, "depth"), entry_json(entry), row_id))
        self._set_position(db, row_id, entry)

    def commit_add(self, row_id: int, entry: dict[str, Any]) -> int:
        """Step 3 of an add: the row becomes visible, last in the load order; returns its seq."""
        with self.write() as db:
            seq = self._next_seq(db)
            db.execute("UPDATE keyframes SET seq=?, state='ok', owner=NULL, entry=? WHERE id=?",
                       (seq, entry_json(entry), row_id))
            self._set_position(db, row_id, entry)
            return seq

    def delete_rows(self, db: sqlite3.Connection, row_ids: list[int], files: list[str]) -> None:
        """Drop rows and list ``files`` (folder-relative) for deletion, in the caller's transaction."""
        for row_id in row_ids:
            db.execute("DELETE FROM keyframes WHERE id=?", (row_id,))
            db.execute("DELETE FROM positions WHERE id=?", (row_id,))
        db.executemany("INSERT OR IGNORE INTO pending_deletes VALUES (?)", [(f,) for f in files])
        db.executemany("DELETE FROM descriptors WHERE image=?", [(f,) for f in files])

    # --- global descriptors (schema 2) --------------------------------------------------------
    def descriptors(self, key: str) -> Iterator[tuple[str, str, bytes]]:
        """(image, stamp, float16 bytes) of every descriptor stored under ``key``: one query,
        streamed, so a 10^5-keyframe map never holds all rows as Python objects at once."""
        with self.read() as db:
            yield from db.execute("SELECT image, stamp, data FROM descriptors WHERE key=?", (key,))

    def save_descriptors(self, key: str, rows: list[tuple[str, str, bytes]]) -> None:
        """Store (image, stamp, float16 bytes) rows under ``key``, one transaction."""
        if rows:
            with self.write() as db:
                db.executemany("INSERT OR REPLACE INTO descriptors VALUES (?, ?, ?, ?)",
                               [(key, image, stamp, data) for image, stamp, data in rows])

    def vocabulary(self, key: str) -> tuple[int, bytes] | None:
        """(keyframes it was learnt from, float32 bytes) of the vocabulary stored under ``key``."""
        with self._lock:
            row = self._conn.execute("SELECT keyframes, data FROM vocabularies WHERE key=?", (key,)).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def save_vocabulary(self, key: str, keyframes: int, data: bytes) -> None:
        with self.write() as db:
            db.execute("INSERT OR REPLACE INTO vocabularies VALUES (?, ?, ?)", (key, int(keyframes), data))

    def work_off_deletes(self) -> list[Path]:
        """Step 2 of a removal (and of recovery): delete the listed files no row names, under
        the write lock so that no add can claim a name between the check and the unlink."""
        deleted = []
        with self.write() as db:
            pending = [p for (p,) in db.execute("SELECT path FROM pending_deletes ORDER BY rowid")]
            if not pending:
                return []
            used = {f for row in db.execute("SELECT image, depth FROM keyframes") for f in row if f}
            for relative in pending:
                path = self.directory / relative
                if relative not in used and _inside(self.directory, path) and path.is_file():
                    path.unlink(missing_ok=True)
                    deleted.append(path)
                db.execute("DELETE FROM pending_deletes WHERE path=?", (relative,))
        return deleted

    def recover(self) -> list[str]:
        """Finish what dead writers left: interrupted adds are undone, listed deletions done.
        Returns one line per repair (for warnings / ``check``)."""
        done: list[str] = []
        with self.write() as db:
            stale = [(i, json.loads(e), o) for i, e, o in
                     db.execute("SELECT id, entry, owner FROM keyframes WHERE state='writing'")]
            dead = [(i, e) for i, e, o in stale if not owner_alive(o)]
            if dead:
                used = {f for row in db.execute("SELECT image, depth FROM keyframes WHERE state='ok'")
                        for f in row if f}
                for row_id, entry in dead:
                    for key in ("image", "depth"):
                        relative = _text(entry, key)
                        if relative and relative not in used:
                            _remove_with_temps(self.directory, relative)
                    db.execute("DELETE FROM keyframes WHERE id=?", (row_id,))
                    done.append(f"undid the interrupted add of '{_text(entry, 'name')}' (its writer is gone)")
        deleted = self.work_off_deletes()
        done += [f"finished deleting {p.relative_to(self.directory)} (an interrupted removal)" for p in deleted]
        return done

    def replace_all(self, entries: list[Any]) -> None:
        """The index becomes ``entries`` in this order (``check --repair``); one transaction."""
        with self.write() as db:
            db.execute("DELETE FROM keyframes WHERE state='ok'")
            db.execute("DELETE FROM positions")
            for entry in entries:
                self.insert(db, entry)
            bump_edits(db)


def _inside(root: Path, path: Path) -> bool:
    root, parent = root.resolve(), path.parent.resolve()
    return parent == root or root in parent.parents


def _remove_with_temps(root: Path, relative: str) -> None:
    """Delete a file an interrupted add wrote, and the temp files of its atomic write."""
    path = root / relative
    if not _inside(root, path):
        return
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def bump_edits(db: sqlite3.Connection) -> None:
    """Count a change other than an append (removal, edit, import, repair): followers reload."""
    db.execute("INSERT INTO meta VALUES ('edits', '1') ON CONFLICT(key) DO UPDATE SET value = value + 1")


def import_entries(index: KeyframeIndex, entries: list[Any], sync: dict[str, str]) -> int | None:
    """Merge a keyframes.yaml into the index (one transaction); None when this very file
    (``sync['yaml_sha']``) was imported or exported already.

    An entry updates the row of the same image (first come, first served: an image may be
    listed twice) or is appended. A row the file does not list is dropped when the file
    knew it (``in_yaml``: set by the last export or import of the folder's own YAML; the
    user deleted its entry, its files stay and become a bare keyframe again, as with a
    hand-edited YAML before), and kept when it was added since (another process's add must
    not be lost to a stale file). A foreign file (no ``yaml_stat``) drops nothing."""
    with index.write() as db:
        if "yaml_sha" in sync and index.meta("yaml_sha", db) == sync["yaml_sha"]:
            for key, value in sync.items():
                index.set_meta(db, key, value)
            return None
        rows = index.rows(db=db)
        known = {i for (i,) in db.execute("SELECT id FROM keyframes WHERE in_yaml=1")}
        by_image: dict[str | None, list[Row]] = {}
        for row in rows:
            by_image.setdefault(_text(row.entry, "image"), []).append(row)
        matched: set[int] = set()
        edited = False
        for entry in entries:
            image = _text(entry, "image")
            candidates = by_image.get(image) if image else None
            if candidates:
                row = candidates.pop(0)
                matched.add(row.id)
                if json.loads(entry_json(entry)) != row.entry:
                    index.update(db, row.id, entry)
                    edited = True
            else:
                matched.add(index.insert(db, entry))
        foreign = "yaml_stat" not in sync
        dropped = [] if foreign else [row.id for row in rows if row.id not in matched and row.id in known]
        index.delete_rows(db, dropped, [])
        if edited or dropped:
            bump_edits(db)
        for key, value in sync.items():
            index.set_meta(db, key, value)
        if "yaml_stat" in sync:  # the folder's own keyframes.yaml: it now knows exactly these rows
            db.execute("UPDATE keyframes SET in_yaml = 0")
            db.executemany("UPDATE keyframes SET in_yaml = 1 WHERE id=?", [(i,) for i in matched])
        return len(entries)
