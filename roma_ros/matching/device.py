"""Device and precision choices shared by the RoMa models."""
from __future__ import annotations

import torch


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'. romatch switches to fp32 only for the
    exact string 'cpu', so CPU is always spelled that way."""
    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}' requested but CUDA is not available here: use 'auto' or 'cpu'")
        return device
    raise ValueError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N")


def amp_dtype(device: str, precision: str = "auto") -> torch.dtype:
    """'auto': bf16 where the GPU supports it (no fp16 overflow risk), else fp16 on GPU;
    always fp32 on CPU. 'fp32' forces full precision (reference runs, parity checks)."""
    if device == "cpu" or precision == "fp32":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def configure_backend(device: str) -> None:
    """TF32 matmuls on Ampere+ GPUs: fp32 layers run on tensor cores at negligible accuracy cost."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
