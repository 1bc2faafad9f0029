"""Global descriptors and vocabularies kept in the keyframe index, so that a start or a reload
reads one matrix from SQLite instead of preparing every keyframe (RoMa: a DINOv2 pass or a
feature-cache file per keyframe; classical: SIFT on every image and a k-means).

A descriptor is stored under a key naming all it depends on (the matcher's ``descriptor_key``:
model, resolution, precision, weights; the classical matcher adds its vocabulary's hash), so
another model or vocabulary simply finds none and computes its own. Each row also holds the
image file's size and mtime (``stamp``) when it was described: an image replaced in place is
described again. Stored as float16: 2 KB per 1024-d descriptor; the Relocalizer rounds freshly
computed descriptors through float16 as well, so a restart ranks exactly as before it.
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence

import numpy as np

from roma_ros.store.folder import Keyframe, KeyframeStore
from roma_ros.store.index import IndexUnusable

STORED_DTYPE = np.dtype("<f2")


def as_stored(vector: np.ndarray) -> np.ndarray:
    """The descriptor as it reads back from the index (float16), in float32 for the search."""
    return np.asarray(vector, np.float32).astype(STORED_DTYPE).astype(np.float32)


class PersistedDescriptors:
    """The descriptor and vocabulary tables of one store; failures (a read-only folder, an
    unusable index) only mean nothing is reused, they never stop a load."""

    def __init__(self, store: KeyframeStore) -> None:
        self.store = store
        self.warnings: list[str] = []

    def stamp(self, image_file: str) -> str | None:
        try:
            st = os.stat(self.store.directory / image_file)
        except OSError:
            return None
        return f"{st.st_size}:{st.st_mtime_ns}"

    def load(self, key: str, keyframes: Sequence[Keyframe]) -> tuple[np.ndarray | None, np.ndarray]:
        """(N, D) float32 descriptors in keyframe order (None when none is stored) and a mask of
        the keyframes that have one; rows whose image changed since are left out."""
        found = np.zeros(len(keyframes), bool)
        matrix: np.ndarray | None = None
        position = {k.image_file: i for i, k in enumerate(keyframes)}
        try:
            for image, stamp, data in self.store.index().descriptors(key):
                i = position.get(image)
                if i is None or found[i]:
                    continue
                vector = np.frombuffer(data, STORED_DTYPE)
                if matrix is None:
                    matrix = np.zeros((len(keyframes), len(vector)), np.float32)
                if len(vector) != matrix.shape[1] or stamp != self.stamp(image):
                    continue
                matrix[i] = vector
                found[i] = True
        except (IndexUnusable, sqlite3.Error, OSError) as exc:
            self.warnings.append(f"stored descriptors not read ({exc}); computing them")
            return None, np.zeros(len(keyframes), bool)
        return matrix, found

    def save(self, key: str, described: Sequence[tuple[Keyframe, np.ndarray]]) -> None:
        rows = [(k.image_file, stamp, np.asarray(v, STORED_DTYPE).tobytes())
                for k, v in described if (stamp := self.stamp(k.image_file)) is not None]
        try:
            self.store.index().save_descriptors(key, rows)
        except (IndexUnusable, sqlite3.Error, OSError) as exc:
            self.warnings.append(f"descriptors not stored ({exc}); the next start computes them again")

    def vocabulary(self, key: str) -> tuple[int, np.ndarray] | None:
        """(keyframes it was learnt from, the float32 words) stored under ``key``."""
        try:
            row = self.store.index().vocabulary(key)
        except (IndexUnusable, sqlite3.Error, OSError):
            return None
        return None if row is None else (row[0], np.frombuffer(row[1], "<f4"))

    def save_vocabulary(self, key: str, keyframes: int, words: np.ndarray) -> None:
        try:
            self.store.index().save_vocabulary(key, keyframes, np.asarray(words, "<f4").tobytes())
        except (IndexUnusable, sqlite3.Error, OSError) as exc:
            self.warnings.append(f"vocabulary not stored ({exc})")
