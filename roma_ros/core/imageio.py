"""Reading and writing image files with clear errors and atomic writes."""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


class ImageFileError(ValueError):
    """An image file is missing, unreadable or empty."""


_STDERR_LOCK = threading.Lock()
# How the lines libpng and libjpeg(-turbo) write to stderr begin: libpng's "libpng warning/error",
# and libjpeg's warnings (its JWRN_* messages; its errors go to OpenCV's handler, not stderr).
_CODEC_LINE = ("libpng", "Corrupt JPEG", "Premature end of JPEG", "Invalid SOS", "Bogus ", "Not a JPEG",
               "Unsupported JPEG", "Wrong JPEG", "Huffman", "Invalid JPEG",
               "Warning: unknown JFIF", "Unknown Adobe", "Inconsistent progression", "Application transferred",
               "Unsupported marker", "Quantization table", "Unknown APP", "JFIF extension")


@contextlib.contextmanager
def quiet_opencv() -> Iterator[list[str]]:
    """Silence OpenCV while decoding, and catch what its codecs print.

    OpenCV's logger is switched off, and libpng/libjpeg, which write straight to the
    process's stderr (file descriptor 2), write into a temp file instead. Their lines are
    handed back in the yielded list (for our own error message, logged through the node's
    throttle); any other line that landed there meanwhile (another thread's log) is written
    back to stderr, so nothing else is lost.
    """
    codec: list[str] = []
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(sink.fileno(), 2)
            try:
                yield codec
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                other = []
                for line in sink.read().decode(errors="replace").splitlines(keepends=True):
                    (codec if line.startswith(_CODEC_LINE) else other).append(line)
                codec[:] = [line.strip() for line in codec]
                if other:
                    os.write(2, "".join(other).encode())
    finally:
        cv2.utils.logging.setLogLevel(previous)


# A progressive JPEG decodes in one pass per scan, each over the whole image: thousands of tiny
# scans make a 200 KB frame cost seconds of decoding. libjpeg's default progressive script has
# 10 scans (colour) and no encoder we know of writes more than a few dozen.
MAX_JPEG_SCANS = 100
# A marker: 0xFF then a code that is neither stuffing (0x00), a restart (0xD0-0xD7) nor fill (0xFF).
_JPEG_MARKER = re.compile(rb"\xff([\x01-\xcf\xd8-\xfe])")
_STANDALONE = {0x01, 0xD8}  # TEM, SOI: no length field


def jpeg_scans(data: bytes | memoryview) -> int:
    """How many scans (SOS markers) a JPEG holds, without decoding it: segments are skipped by
    their length (so APPn payloads such as EXIF thumbnails do not count), entropy-coded data is
    searched for the next marker. Stops at EOI or at the end of the data."""
    data = bytes(data)
    scans, pos = 0, 2  # after SOI
    while (found := _JPEG_MARKER.search(data, pos)) is not None:
        code, start = found.group(1)[0], found.start()
        if code == 0xD9:  # EOI
            break
        if code in _STANDALONE:
            pos = found.end()
            continue
        if start + 4 > len(data):
            break
        scans += code == 0xDA
        pos = start + 2 + ((data[start + 2] << 8) | data[start + 3])
    return scans


# Compression cannot pack more than ~1000 pixels into a byte (deflate's limit is 1032:1, for
# a one-byte gray pixel), so a file smaller than max_pixels / 2000 bytes cannot exceed the
# bound and skips the header parse (it costs more than decoding a thumbnail).
MAX_PIXELS_PER_BYTE = 2000


def header_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from an image file's header, without decoding its pixels (Pillow reads
    the header only); None when Pillow does not know the format (OpenCV may still)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(memoryview(data))) as image:
            return image.size
    except Image.DecompressionBombError:
        return (1 << 16, 1 << 16)  # Pillow's own bomb limit: far over any keyframe bound
    except (UnidentifiedImageError, ValueError, SyntaxError, EOFError):
        return None


def check_pixels(shape: tuple[int, ...], max_pixels: int, what: str, bound: str = "the keyframe pixel bound") -> None:
    """ImageFileError when an (H, W, ...) image has more than ``max_pixels`` pixels (0 = no bound)."""
    height, width = int(shape[0]), int(shape[1])
    if max_pixels and width * height > max_pixels:
        raise ImageFileError(f"{what} is {width}x{height} ({width * height / 1e6:.1f} MP), over {bound} of "
                             f"{max_pixels / 1e6:.1f} MP: downscale it, e.g. `convert IN -resize {max_pixels}@ OUT`")


def load_rgb(path: str | os.PathLike, max_pixels: int = 0) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); 16-bit and grayscale files are converted.

    Every way a file can fail (missing, a name too long for the file system, no permission,
    an I/O error, a corrupt file, more than ``max_pixels`` pixels, 0 = no bound, checked from
    the header before decoding) is an ImageFileError naming the file, so a caller that skips
    bad keyframes skips exactly that one."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ImageFileError(f"image file '{path}' does not exist")
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:  # ENAMETOOLONG from is_file(), PermissionError, EIO...
        raise ImageFileError(f"image file '{path}' cannot be read: {exc.strerror or exc}") from None
    if max_pixels and data.size * MAX_PIXELS_PER_BYTE > max_pixels:
        size = header_size(data)
        if size is not None:
            check_pixels((size[1], size[0]), max_pixels, f"image file '{path}'")
    if data.size == 0:
        raise ImageFileError(f"image file '{path}' is empty (0 bytes)")
    if data[:2].tobytes() == b"\xff\xd8" and (scans := jpeg_scans(data)) > MAX_JPEG_SCANS:
        raise ImageFileError(f"image file '{path}' is a JPEG of {scans} scans > {MAX_JPEG_SCANS}: too costly to "
                             "decode (each scan is a pass over the whole image); save it as PNG or baseline JPEG")
    with quiet_opencv() as codec:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        said = f": {'; '.join(codec)}" if codec else ""
        raise ImageFileError(f"image file '{path}' is not a readable image (corrupt, or not JPEG/PNG/...){said}")
    check_pixels(image.shape, max_pixels, f"image file '{path}'")
    return to_rgb8(image, source=str(path))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Scale a 16-bit image to 8 bit by the largest value present.

    Why not ``>> 8``: many "16-bit" cameras (and PNGs written from them) hold 10-16 bit data, and a
    12-bit image shifted by 8 is nearly black (max 15), which starves the matcher. Scaling by the
    image's own maximum uses the full 8-bit range for any bit depth, keeps zero at zero (no offset,
    unlike min/max stretching) and is exact for full-range data (65535 -> 255). The gain can vary
    between frames, which RoMa, trained with photometric augmentation, tolerates.
    """
    if img.dtype == np.uint8:
        return img
    peak = int(img.max()) if img.size else 0
    if peak == 0:
        return np.zeros(img.shape, np.uint8)
    scaled = (img.astype(np.uint32) * 255 + peak // 2) // peak
    return scaled.astype(np.uint8)


def to_rgb8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """OpenCV-ordered (BGR/BGRA/gray, 8 or 16 bit) array -> RGB uint8 (16 bit as in ``to_uint8``,
    the same rule as for 16-bit query images)."""
    if image.dtype == np.uint16:
        image = to_uint8(image)
    elif image.dtype != np.uint8:
        raise ImageFileError(f"{source}: unsupported pixel type {image.dtype}; use 8 or 16-bit images")
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries to disk: a rename (or a new file) lives in its directory,
    so without this a power loss can undo it even though the file's data was synced."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace`` that survives a power loss: fsync the target's folder (and the source's,
    when it differs) after the rename."""
    src, dst = Path(src), Path(dst)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if src.parent.resolve() != dst.parent.resolve():
        fsync_dir(src.parent)


def make_dirs_durably(folder: Path) -> None:
    """``mkdir -p`` whose new folders survive a power loss (each parent is synced)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)


def _atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder and rename it, so readers and crashes
    never see a half-written file; the file, then its folder, are synced, so a power loss
    cannot lose an acknowledged write either."""
    make_dirs_durably(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; keyframes are ordinary files
        replace_durably(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_rgb(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Save an RGB uint8 image atomically; the format follows the suffix (.png, .jpg)."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageFileError(f"could not encode image for '{path}' (suffix '{path.suffix}')")
    _atomic_write(path, lambda f: f.write(encoded.tobytes()))
    return path


def save_json(path: str | os.PathLike, data: Any) -> Path:
    path = Path(path)
    text = json.dumps(data, indent=1)
    _atomic_write(path, lambda f: f.write(text.encode()))
    return path


def save_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    _atomic_write(path, lambda f: f.write(data))
    return path
