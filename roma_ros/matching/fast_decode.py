"""Faster ways to run romatch's decoder that keep its arithmetic.

- ``folded_refiners``: each refiner block's BatchNorm folded into the convolution before
  it (eval mode: the norm is a fixed per-channel affine map), one kernel less per block.
- ``GraphedDecode``: the decode replayed as one CUDA graph per batch bucket. A query
  decodes K candidates as ~3,000 small kernel launches; replaying a captured graph costs
  one. K is padded up to the bucket (1, 2, 4, ... up to the batch size); the padding rows
  repeat the last real pair and are dropped. romatch's coarse GP runs before the replay,
  outside the graph: its Cholesky factorization syncs with the host (error flag) and it
  copies its temperature to the device per call. Off by default: on an H200 it gained 5 %
  at 560 but held 6 GiB more memory (the graph's private pool), and at 864 it was slower
  (bench/results/gpu-h200-round2-run2.log).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

Pyramids = dict[str, dict[int, torch.Tensor]]


@dataclass
class DecodeOptions:
    """Switches for the decode levers (bench/speed.py measures each one on and off)."""

    fold_batchnorm: bool = True
    cuda_graphs: bool = False  # CUDA only; the CPU runs the decoder as it is
    batch_vgg: bool = False  # CUDA only: the candidates' VGG pyramids in one batch, not one call each


# ------------------------------------------------------------------ BatchNorm folding
def folded_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """``conv`` followed by ``norm`` (eval mode) as one convolution, computed in float64."""
    scale = norm.running_var.double().add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        fused.weight.copy_(weight.to(conv.weight.dtype))
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        fused.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return fused


def folded_sequential(block: nn.Sequential) -> nn.Sequential:
    """A copy of ``block`` with every Conv2d -> BatchNorm2d pair folded (the norm becomes
    an Identity); other layers are shared with ``block``, not copied."""
    layers = list(block)
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.BatchNorm2d) and i and isinstance(layers[i - 1], nn.Conv2d):
            out[-1] = folded_conv(layers[i - 1], layer)
            out.append(nn.Identity())
        else:
            out.append(layer)
    return nn.Sequential(*out)


def folded_refiners(refiners: nn.ModuleDict) -> nn.ModuleDict:
    """Views of romatch's ConvRefiners with folded blocks; the originals are untouched,
    so romatch's own ``match()`` (the parity reference) still runs the unfolded network."""
    if any(m.training for m in refiners.modules()):
        raise ValueError("BatchNorm can only be folded in eval mode")
    views = {}
    for scale, refiner in refiners.items():
        view = copy.copy(refiner)
        view._modules = dict(refiner._modules)
        view._modules["block1"] = folded_sequential(refiner.block1)
        view._modules["hidden_blocks"] = nn.Sequential(*(folded_sequential(b) for b in refiner.hidden_blocks))
        views[scale] = view
    return nn.ModuleDict(views)


# ------------------------------------------------------------------ graph pieces
class Precomputed(nn.Module):
    """Stands in for the GP inside a graph: returns the posterior computed before replay."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, *_, **__) -> torch.Tensor:
        return self.value


# ------------------------------------------------------------------ CUDA graphs
def buckets_for(batch_size: int) -> list[int]:
    """Batch sizes graphs are captured for: powers of two below the batch size, and it."""
    sizes, b = [], 1
    while b < batch_size:
        sizes.append(b)
        b *= 2
    return sizes + [batch_size]


@dataclass
class _Static:
    """Input buffers shared by every bucket of one input shape (bucket b uses rows[:halves*b])."""

    f_q: Pyramids
    f_c: Pyramids
    gp: torch.Tensor
    graphs: dict  # bucket -> (CUDAGraph | None, outputs)


class GraphedDecode:
    """Decode a query against n candidates by replaying a graph captured for the smallest
    bucket >= n. ``decode(f_q, f_c, gp)`` is the pure tensor function captured: paired
    pyramids per pass ("coarse", "fine") and the GP posterior in, (flow, logits) out.

    Rows of every paired input are laid out as romatch stacks them: query against each
    candidate, then (symmetric) each candidate against the query. With ``capture=False``
    (the CPU) the same padded buffers are decoded eagerly, which tests the bookkeeping.
    """

    def __init__(self, decode: Callable[[Pyramids, Pyramids, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 batch_size: int, halves: int, capture: bool,
                 capture_guard: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        self.decode = decode
        self.buckets = buckets_for(batch_size)
        self.halves = halves
        self.capture = capture
        self.capture_guard = capture_guard
        self._static: dict[tuple, _Static] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self._lock = threading.Lock()
        self.failed: str = ""  # why capture failed (then every bucket decodes eagerly)

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _buffers(self, query: Pyramids, candidates: list[Pyramids], gp: torch.Tensor) -> _Static:
        rows = self.halves * self.buckets[-1]
        key = tuple((p, s, tuple(t.shape), t.dtype) for p, pyr in query.items() for s, t in pyr.items())

        def empty(like: torch.Tensor) -> torch.Tensor:
            out = like.new_empty((rows, *like.shape[1:]))
            if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
                out = out.contiguous(memory_format=torch.channels_last)
            return out

        if key not in self._static:
            f_q = {p: {s: empty(t) for s, t in pyr.items()} for p, pyr in query.items()}
            f_c = {p: {s: empty(t) for s, t in pyr.items()} for p, pyr in candidates[0].items()}
            self._static[key] = _Static(f_q, f_c, empty(gp), {})
        return self._static[key]

    def _fill(self, static: _Static, b: int, query: Pyramids, candidates: list[Pyramids], gp: torch.Tensor) -> None:
        """Write the paired rows of bucket ``b`` (padding repeats the last candidate)."""
        n = len(candidates)
        padded = candidates + [candidates[-1]] * (b - n)
        for p in query:
            for s, q in query[p].items():
                fq, fc = static.f_q[p][s], static.f_c[p][s]
                fq[:b].copy_(q.expand(b, *q.shape[1:]))
                for i, cand in enumerate(padded):
                    fc[i].copy_(cand[p][s][0])
                if self.halves == 2:
                    fq[b:2 * b].copy_(fc[:b])
                    fc[b:2 * b].copy_(fq[:b])
        for h in range(self.halves):
            static.gp[h * b:h * b + n].copy_(gp[h * n:(h + 1) * n])
            static.gp[h * b + n:(h + 1) * b].copy_(gp[(h + 1) * n - 1:(h + 1) * n].expand(b - n, *gp.shape[1:]))

    def _views(self, static: _Static, b: int) -> tuple[Pyramids, Pyramids, torch.Tensor]:
        rows = self.halves * b
        cut = {p: {s: t[:rows] for s, t in pyr.items()} for p, pyr in static.f_q.items()}
        cut_c = {p: {s: t[:rows] for s, t in pyr.items()} for p, pyr in static.f_c.items()}
        return cut, cut_c, static.gp[:rows]

    def _captured(self, static: _Static, b: int) -> tuple[torch.cuda.CUDAGraph | None, tuple | None]:
        if b in static.graphs:
            return static.graphs[b]
        entry: tuple = (None, None)
        if self.capture and not self.failed:
            inputs = self._views(static, b)
            try:
                with self.capture_guard():
                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):  # warm-up: lazy inits stay out of the graph
                        self.decode(*inputs)
                    torch.cuda.current_stream().wait_stream(side)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self._pool):
                        outputs = self.decode(*inputs)
                entry = (graph, outputs)
            except Exception as exc:  # noqa: BLE001 - a host sync or an allocation we did not foresee
                self.failed = str(exc).strip().splitlines()[0]
                log.warning("CUDA graph capture failed (%s); decoding without graphs", self.failed)
            torch.cuda.empty_cache()  # the warm-up's blocks; the graph keeps its own pool
        static.graphs[b] = entry
        return entry

    def __call__(self, query: Pyramids, candidates: list[Pyramids], gp: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(flow, logits) of the n real pairs, rows laid out as romatch's (n or 2n)."""
        n = len(candidates)
        b = self.bucket(n)
        with self._lock:
            static = self._buffers(query, candidates, gp)
            self._fill(static, b, query, candidates, gp)
            graph, outputs = self._captured(static, b)
            if graph is not None:
                graph.replay()
            else:
                outputs = self.decode(*self._views(static, b))
            # Copies: the next replay overwrites the graph's outputs.
            return tuple(torch.cat([out[h * b:h * b + n] for h in range(self.halves)]) for out in outputs)


@contextlib.contextmanager
def attributes_set(modules: list[nn.Module], name: str, value) -> Iterator[None]:
    """Temporarily set an attribute on several modules (restored on exit)."""
    saved = [getattr(m, name) for m in modules]
    for m in modules:
        setattr(m, name, value)
    try:
        yield
    finally:
        for m, old in zip(modules, saved):
            setattr(m, name, old)
