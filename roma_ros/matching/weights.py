"""Finding model checkpoints: a local path, else the torch hub cache, else the official URL.

Missing weights are the most common first-run failure on a robot (no network on
the vehicle), so every way of failing ends in one WeightsError that names each
missing file, where it was looked for, and the URL to fetch it from.

A checkpoint is a pickle, and unpickling can run code. Every checkpoint (a given path, the hub
cache, a fresh download) is therefore loaded with ``weights_only=True``: tensors and plain
containers only, so a replaced or tampered file is refused instead of run. The official URLs
carry no hash (torch.hub checks the ``-<sha256 prefix>`` in a file name, and these names have
none), so no download can be verified beyond that; ``check_hash=True`` is passed anyway and
takes effect should a URL with a hash ever be listed.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from roma_ros.matching.base import WeightsError

URLS = {
    "roma_outdoor.pth": "https://github.com/Parskatt/storage/releases/download/roma/roma_outdoor.pth",
    "roma_indoor.pth": "https://github.com/Parskatt/storage/releases/download/roma/roma_indoor.pth",
    "tiny_roma_v1_outdoor.pth": "https://github.com/Parskatt/storage/releases/download/roma/tiny_roma_v1_outdoor.pth",
    "dinov2_vitl14_pretrain.pth": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
}
MODEL_FILES = {
    "roma_outdoor": ("roma_outdoor.pth", "dinov2_vitl14_pretrain.pth"),
    "roma_indoor": ("roma_indoor.pth", "dinov2_vitl14_pretrain.pth"),
    "tiny_roma_outdoor": ("tiny_roma_v1_outdoor.pth",),
}


@dataclass
class Checkpoint:
    """One checkpoint a model needs and where it may come from."""

    filename: str
    given_path: str

    @property
    def cache_path(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename

    @property
    def url(self) -> str:
        return URLS[self.filename]

    def describe(self) -> str:
        where = f"parameter path '{self.given_path}'" if self.given_path else f"torch hub cache '{self.cache_path}'"
        return f"{self.filename} (looked in {where}; download: {self.url})"


def checkpoints_for(model: str, weights: str = "", dinov2_weights: str = "") -> list[Checkpoint]:
    files = MODEL_FILES[model]
    given = [weights, dinov2_weights][: len(files)]
    return [Checkpoint(name, os.path.expanduser(path or "")) for name, path in zip(files, given)]


def _refused(exc: Exception) -> str:
    """Why a checkpoint failed to load, in words for the user."""
    if isinstance(exc, pickle.UnpicklingError):
        return ("it is not a plain checkpoint: it holds Python objects or code that loading with "
                f"weights_only=True refuses to run ({str(exc).splitlines()[0]})")
    return str(exc)


def _load_file(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download, a wrong file, or a pickle carrying code
        raise WeightsError(
            f"could not read checkpoint '{path}': {_refused(exc)}. Delete it and download it again."
        ) from exc


def load_checkpoints(
    model: str, weights: str = "", dinov2_weights: str = "", allow_download: bool = True
) -> list[dict]:
    """Load every checkpoint of ``model`` (state dicts on the CPU), in MODEL_FILES order."""
    wanted = checkpoints_for(model, weights, dinov2_weights)
    loaded: list[dict | None] = []
    missing: list[tuple[Checkpoint, str]] = []
    for ckpt in wanted:
        if ckpt.given_path:
            path = Path(ckpt.given_path)
            if path.is_file():
                loaded.append(_load_file(path))
            else:
                loaded.append(None)
                missing.append((ckpt, "file does not exist"))
        elif ckpt.cache_path.is_file():
            loaded.append(_load_file(ckpt.cache_path))
        elif allow_download:
            try:
                loaded.append(torch.hub.load_state_dict_from_url(
                    ckpt.url, map_location="cpu", progress=False, check_hash=True, weights_only=True))
            except pickle.UnpicklingError as exc:
                raise WeightsError(
                    f"refusing the downloaded checkpoint '{ckpt.cache_path}' from {ckpt.url}: {_refused(exc)}. "
                    "Delete it, and check where the download came from.") from exc
            except Exception as exc:
                loaded.append(None)
                missing.append((ckpt, f"download failed: {exc}"))
        else:
            loaded.append(None)
            missing.append((ckpt, "not cached and downloads are disabled"))
    if missing:
        lines = "\n".join(f"  - {c.describe()}: {why}" for c, why in missing)
        all_files = ", ".join(c.filename for c in wanted)
        raise WeightsError(
            f"model '{model}' needs {all_files}; missing:\n{lines}\n"
            f"Fix: download them and pass their paths (weights / dinov2_weights), "
            f"or place them in '{Path(torch.hub.get_dir()) / 'checkpoints'}'. "
            f"Use model 'classical' to run without weights."
        )
    return loaded  # type: ignore[return-value]
