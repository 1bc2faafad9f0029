"""The keyframes' global descriptors and the shortlist search over them.

Exact search (matrix-vector product, then a partial sort) is fine to a few 10^4 keyframes:
about 15 ms at 10^5 x 1024 on this 2-core machine. Beyond ``FAISS_MIN`` keyframes, when
``faiss`` (faiss-cpu) is installed, an inverted-file index (IVF with float16 codes, inner product, sqrt(N)
lists, trained on the first search and again when the map has doubled) answers instead,
probing a quarter of the lists; ``recall_vs_exact`` measures its recall against the exact
search on any map (bench/store_scale.py reports it on clustered synthetic descriptors).
Rows are kept in a buffer that grows by an eighth, so an add costs amortised O(d), not a copy of the matrix.
"""
from __future__ import annotations

import math
import threading

import numpy as np

FAISS_MIN = 50_000  # keyframes from which the FAISS index is used (when installed)
NPROBE_FRACTION = 0.25  # share of the IVF lists probed per query (recall@5 >= 0.95 measured, see below)


def _faiss():
    try:
        import faiss  # noqa: PLC0415 (optional: exact search without it)
    except ImportError:
        return None
    return faiss


CHUNK_ROWS = 8192  # float16 rows converted to float32 at a time by the exact search
ANN_CHUNK_ROWS = 131_072  # rows converted and added to FAISS at a time (512 MB at 1024-d, transient)


def exact_top(matrix: np.ndarray, query: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (best first, ties by index) and similarities of the top_k rows; all when top_k is 0.
    A float16 matrix (a large map's, see DescriptorIndex) is multiplied in float32 chunks:
    numpy has no float16 BLAS, and a whole float32 copy would undo the saving."""
    query = np.asarray(query, np.float32).reshape(-1)
    if matrix.dtype == np.float32:
        similarity = matrix @ query
    else:
        similarity = np.empty(len(matrix), np.float32)
        for start in range(0, len(matrix), CHUNK_ROWS):
            similarity[start:start + CHUNK_ROWS] = matrix[start:start + CHUNK_ROWS].astype(np.float32) @ query
    count = len(similarity)
    if top_k and top_k < count:
        top = np.argpartition(-similarity, top_k - 1)[:top_k]
        order = top[np.lexsort((top, -similarity[top]))]
    else:
        order = np.argsort(-similarity, kind="stable")
    return order, similarity[order]


class DescriptorIndex:
    """Unit global descriptors of the keyframes, in keyframe order; thread-safe appends.

    Memory: below ``faiss_min`` (or without faiss) the rows are float32, for the exact search's
    BLAS speed (40 MB at 10^4 x 1024). From ``faiss_min`` on, where FAISS answers, they are
    held as float16 (the values the index stores anyway, store/persisted.py) and the FAISS
    index keeps float16 codes of them (IVF with a scalar quantizer, not IVF-Flat's float32
    copy): 2 x 195 MB at 10^5 x 1024 instead of 2 x 391 MB. Its recall equals a float32
    IVF-Flat's with the same lists and probes (test_feature_lru.py) and is measured against
    the exact search by bench/scale.py store (8-bit codes, half again, measured 0.75 recall@5
    there: near-duplicate views of one place are reordered)."""

    def __init__(self, dim: int, faiss_min: int = FAISS_MIN, nprobe_fraction: float = NPROBE_FRACTION) -> None:
        self.dim = int(dim)
        self.faiss_min = int(faiss_min)
        self.nprobe_fraction = float(nprobe_fraction)
        self._buffer = np.zeros((16, self.dim), np.float32)
        self._count = 0
        self._ann = None  # the FAISS index, built on the first search beyond faiss_min
        self._ann_count = 0  # rows in it
        self._ann_trained_at = 0
        self._lock = threading.Lock()

    @classmethod
    def of(cls, rows: np.ndarray, **kwargs) -> DescriptorIndex:
        index = cls(rows.shape[1], **kwargs)
        index.extend(rows)
        return index

    @classmethod
    def adopt(cls, matrix: np.ndarray, **kwargs) -> DescriptorIndex:
        """An index over ``matrix`` (N, D) float32 itself, not a copy (a 10^5-keyframe map's
        descriptors are 400 MB); the caller must not use the matrix afterwards."""
        matrix = np.ascontiguousarray(matrix, np.float32)
        index = cls(matrix.shape[1], **kwargs)
        index._buffer, index._count = matrix, len(matrix)
        index._compact()
        return index

    def _compact(self) -> None:
        """Float16 rows from ``faiss_min`` on (see the class)."""
        if self._buffer.dtype == np.float32 and self.uses_faiss():
            self._buffer = self._buffer[:self._count].astype(np.float16)

    def __len__(self) -> int:
        return self._count

    @property
    def matrix(self) -> np.ndarray:
        """The rows so far (a view: valid until the next append)."""
        return self._buffer[:self._count]

    def extend(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float32).reshape(-1, self.dim)
        with self._lock:
            need = self._count + len(rows)
            if need > len(self._buffer):
                # Grown by an eighth (at least 1024 rows): amortised O(d) per add, without a
                # doubling that would hold 2x the descriptors of a 10^5 map after its first add.
                spare = max(1024, len(self._buffer) // 8)
                grown = np.zeros((max(need, len(self._buffer) + spare), self.dim), self._buffer.dtype)
                grown[:self._count] = self._buffer[:self._count]
                self._buffer = grown
            self._buffer[self._count:need] = rows
            self._count = need
            self._compact()

    def append(self, row: np.ndarray) -> None:
        self.extend(np.asarray(row)[None])

    def uses_faiss(self) -> bool:
        return self._count >= self.faiss_min and _faiss() is not None

    def search(self, query: np.ndarray, top_k: int) -> tuple[list[int], list[float]]:
        """The top_k keyframes by cosine similarity (all, in order, when top_k is 0)."""
        query = np.asarray(query, np.float32).reshape(-1)
        if not top_k or not self.uses_faiss():
            order, similarity = exact_top(self.matrix, query, top_k)
            return order.tolist(), similarity.astype(float).tolist()
        ann = self._ensure_ann()
        similarity, order = ann.search(query[None], min(top_k, self._count))
        keep = order[0] >= 0
        return order[0][keep].tolist(), similarity[0][keep].astype(float).tolist()

    def _ensure_ann(self):
        """Train (again once the map doubled since) and fill the IVF index; adds go in as they come."""
        faiss = _faiss()
        with self._lock:
            if self._ann is None or self._count >= 2 * self._ann_trained_at:
                lists = max(16, int(math.sqrt(self._count)))
                quantizer = faiss.IndexFlatIP(self.dim)
                ann = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, lists, faiss.ScalarQuantizer.QT_fp16,
                                                    faiss.METRIC_INNER_PRODUCT)
                rng = np.random.default_rng(0)
                sample = np.sort(rng.choice(self._count, min(self._count, 40 * lists), replace=False))
                ann.train(np.ascontiguousarray(self._buffer[sample], np.float32))
                ann.nprobe = max(1, int(round(self.nprobe_fraction * lists)))
                self._ann, self._ann_count, self._ann_trained_at = ann, 0, self._count
            # faiss takes float32: converted in chunks, large ones, since each add grows every
            # inverted list (a std::vector) and many small adds leave up to 2x their codes reserved.
            while self._ann_count < self._count:
                end = min(self._count, self._ann_count + ANN_CHUNK_ROWS)
                self._ann.add(np.ascontiguousarray(self._buffer[self._ann_count:end], np.float32))
                self._ann_count = end
            return self._ann


def recall_vs_exact(index: DescriptorIndex, queries: np.ndarray, top_k: int) -> float:
    """Share of the exact top_k that the index's search returns, over the queries."""
    found = 0
    for query in queries:
        exact = set(exact_top(index.matrix, query, top_k)[0].tolist())
        found += len(exact & set(index.search(query, top_k)[0]))
    return found / (len(queries) * top_k)
