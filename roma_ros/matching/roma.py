"""RoMa (romatch's RegressionMatcher) split into encode and decode.

romatch's ``match()`` encodes BOTH images (DINOv2 ViT-L + VGG19) for every pair.
For relocalization the query is compared with many keyframes, so we encode each
image once (``encode``) and decode the query against any number of candidates in
one batch (``decode``). The arithmetic is romatch's own modules called in the same
order as ``RegressionMatcher.match``; test/test_roma.py checks that both agree.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.machinery
import importlib.util
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from romatch.models.matcher import RegressionMatcher
from romatch.models.model_zoo.roma_models import roma_model
from romatch.models.transformer import vit_large
from romatch.utils import get_tuple_transform_ops
from romatch.utils.utils import get_autocast_params

from roma_ros.matching.base import Matches, MatcherConfig, check_rgb_image
from roma_ros.matching.dense import DenseMatcher, DenseWarp
from roma_ros.matching.device import amp_dtype
from roma_ros.matching.fast_decode import DecodeOptions, GraphedDecode, Precomputed, attributes_set, folded_refiners
from roma_ros.matching.local_corr import dense_correlation_in_romatch
from roma_ros.matching.weights import checkpoints_for, load_checkpoints

# romatch's scale factors divide by the resolution RoMa was trained at.
TRAIN_RES = 560
VIT_KWARGS = dict(img_size=518, patch_size=14, init_values=1.0, ffn_layer="mlp", block_chunks=0)


@dataclass
class EncodedImage:
    """One image prepared for decoding against others.

    ``coarse`` is the feature pyramid at the coarse resolution (scales 1..8 from VGG,
    16 from DINOv2); ``fine`` the VGG pyramid at the upsample resolution (None when
    upsampling is off). ``dino`` alone is what caches keep; the VGG parts are cheap
    to recompute from ``rgb`` (a reference to the caller's uint8 image, not a copy:
    normalized float inputs would cost 12 MB per keyframe at 560/864).
    """

    size: tuple[int, int]  # original (height, width)
    rgb: np.ndarray
    coarse: dict[int, torch.Tensor]
    fine: dict[int, torch.Tensor] | None
    # Decoder-ready (projected) coarse and fine pyramids, kept for keyframes with keep_vgg.
    ready: tuple[dict[int, torch.Tensor], dict[int, torch.Tensor] | None] | None = None

    @property
    def dino(self) -> torch.Tensor:
        return self.coarse[16]


def build_random_roma(device: str, **kwargs) -> RegressionMatcher:
    """RoMa's architecture with random weights, for tests and benchmarks only.

    romatch insists on loading a state dict; we skip that one call while building.
    """
    torch.manual_seed(0)
    dino_sd = vit_large(**VIT_KWARGS).state_dict()
    with mock.patch.object(RegressionMatcher, "load_state_dict", lambda *a, **k: None):
        return roma_model(weights=None, dinov2_weights=dino_sd, device=device, **kwargs)


def has_fused_correlation() -> bool:
    """Whether RoMa's optional fused CUDA kernel imports; romatch fails on the first match
    if told to use it when it is missing.

    The kernel ships as the ``fused-local-corr`` wheel: a package ``local_corr`` holding an
    ``__init__.py`` and a compiled ``_C`` module, built for one torch version (0.3.211 for
    torch 2.11), fp32 only. An older build installed the compiled module ``local_corr``
    itself; both are accepted. Anything else of that name (a ``local_corr.py`` script on
    the path) is not the kernel and is never imported. A wheel built for another torch
    fails to import and counts as missing.
    """
    spec = importlib.util.find_spec("local_corr")
    if spec is None:
        return False
    compiled = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    if spec.submodule_search_locations is None:  # a plain module: only a compiled one will do
        if not str(spec.origin).endswith(compiled):
            return False
    elif not any(Path(folder, "_C" + suffix).is_file()
                 for folder in spec.submodule_search_locations for suffix in compiled):
        return False
    try:
        module = importlib.import_module("local_corr")
    except Exception:  # noqa: BLE001 - a broken or mismatched build is as good as none
        return False
    return callable(getattr(module, "local_corr", None))


def build_roma(config: MatcherConfig, device: str) -> RegressionMatcher:
    """Build romatch's RegressionMatcher for ``config`` on ``device``."""
    kwargs = dict(
        resolution=config.coarse_res,
        upsample_preds=config.upsample_res > 0,
        upsample_res=config.upsample_res or None,
        amp_dtype=amp_dtype(device, config.precision),
        symmetric=config.symmetric,
        use_custom_corr=device.startswith("cuda") and has_fused_correlation(),
    )
    if config.random_weights:
        model = build_random_roma(device, **kwargs)
    else:
        weights, dino = load_checkpoints(config.model, config.weights, config.dinov2_weights, config.allow_download)
        model = roma_model(weights=weights, dinov2_weights=dino, device=device, **kwargs)
    return model.eval()


def attenuation(low_res_logits: torch.Tensor, hs: int, ws: int) -> torch.Tensor:
    """romatch's certainty attenuation: half of the negative coarse (1/16) logits,
    upsampled, is subtracted from the final logits (RegressionMatcher.match)."""
    up = F.interpolate(low_res_logits, size=(hs, ws), align_corners=False, mode="bilinear")
    return 0.5 * up * (up < 0)


def gem_descriptor(features: torch.Tensor, p: float = 3.0) -> np.ndarray:
    """(1, C, h, w) feature map -> (C,) unit vector (GeM pooling: between mean and max)."""
    pooled = features.float().clamp(min=1e-6).pow(p).mean(dim=(-2, -1)).pow(1.0 / p).reshape(-1)
    return F.normalize(pooled, dim=0).cpu().numpy()


def decoder_view(decoder: nn.Module, **replaced: nn.Module) -> nn.Module:
    """A view of romatch's Decoder sharing every module except those named."""
    view = copy.copy(decoder)
    view._modules = {**decoder._modules, **replaced}
    return view


def projection_free(decoder: nn.Module) -> nn.Module:
    """A view of romatch's Decoder sharing every module except its input projections.

    Decoder.forward picks its autocast setting with ``str(features) == "cuda"``, which
    renders the whole feature tensor as text at every scale: on a GPU that is thousands
    of device-to-host copies per query (17.6k for 10 keyframes on an H200, more CPU time
    than the GPU work). RomaMatcher applies the same projections itself (``_project``), so
    the view's empty ``proj`` keeps that branch from running.
    """
    return decoder_view(decoder, proj=nn.ModuleDict())


@contextlib.contextmanager
def as_romatch_builds_it(model: RegressionMatcher) -> Iterator[RegressionMatcher]:
    """The model with romatch's own (contiguous) decoder layout while inside, for
    comparisons with romatch as shipped; RomaMatcher's channels-last layout after."""
    model.decoder.to(memory_format=torch.contiguous_format)
    try:
        yield model
    finally:
        model.decoder.to(memory_format=torch.channels_last)


def apply_settings(model: RegressionMatcher, config: MatcherConfig) -> None:
    """Resolution and symmetry are plain attributes of romatch's model, not weights: one
    built model serves any of them (tests and benchmarks share one)."""
    model.h_resized = model.w_resized = config.coarse_res
    model.upsample_preds = config.upsample_res > 0
    if config.upsample_res:
        model.upsample_res = (config.upsample_res, config.upsample_res)
    model.symmetric = config.symmetric


class RomaMatcher(DenseMatcher):
    """RoMa outdoor/indoor behind the matcher interface, plus encode/decode for reuse.
    ``options`` switches the decode levers (fast_decode.DecodeOptions; benchmarks and tests)."""

    def __init__(self, config: MatcherConfig, model: RegressionMatcher | None = None,
                 options: DecodeOptions | None = None) -> None:
        super().__init__(config, model, build_roma)
        apply_settings(self.model, config)
        self.options = options or DecodeOptions()
        # Same arithmetic; oneDNN runs these convolutions much faster channels-last (a quarter
        # off the CPU decode; 3% on an H200, bench/gpu_profile.py). Converts weights in place.
        self.model.decoder.to(memory_format=torch.channels_last)
        decoder = self.model.decoder
        refiners = folded_refiners(decoder.conv_refiner) if self.options.fold_batchnorm else decoder.conv_refiner
        self._refiners = list(refiners.values())
        self._decoder = decoder_view(decoder, proj=nn.ModuleDict(), conv_refiner=refiners)
        self._posterior = Precomputed()
        self._decoder_given_gp = decoder_view(self._decoder, gps=nn.ModuleDict({"16": self._posterior}))
        self.coarse_hw = (config.coarse_res, config.coarse_res)
        self.fine_hw = (config.upsample_res, config.upsample_res) if config.upsample_res else None
        # GPU only, off by default (not shown to pay, docs/performance.md); the CPU keeps per-image calls.
        self.batch_vgg = self.options.batch_vgg and self.device.startswith("cuda")
        self._graphed = None
        if self.options.cuda_graphs and self.device.startswith("cuda"):
            self._graphed = self.graphed_decode(capture=True)

    def graphed_decode(self, capture: bool) -> GraphedDecode:
        """The decode replayed from CUDA graphs (``capture=False``: the same padded batches
        decoded eagerly). The fused kernel launches on the legacy default stream, which a
        graph would not record, so refiners capture romatch's PyTorch correlation where they
        do not use ours."""
        return GraphedDecode(lambda f_q, f_c, gp: self._decode_pairs(lambda p: (f_q[p], f_c[p]), gp),
                             self.config.batch_size, 2 if self.config.symmetric else 1, capture,
                             lambda: attributes_set(self._refiners, "use_custom_corr", False))

    # ---------------------------------------------------------------- encode
    def _normalized(self, image: Image.Image, hw: tuple[int, int]) -> torch.Tensor:
        (tensor,) = get_tuple_transform_ops(resize=hw, normalize=True)((image,))
        return tensor[None].to(self.device)

    def _dino(self, x: torch.Tensor) -> torch.Tensor:
        """DINOv2 patch tokens as a (B, 1024, h/14, w/14) map, as romatch's encoder makes them."""
        encoder = self.model.encoder
        vit = encoder.dinov2_vitl14[0]
        if next(vit.parameters()).device != x.device:
            encoder.dinov2_vitl14[0] = vit = vit.to(x.device).to(encoder.amp_dtype)
        b, _, h, w = x.shape
        tokens = vit.forward_features(x.to(encoder.amp_dtype))["x_norm_patchtokens"]
        return tokens.permute(0, 2, 1).reshape(b, 1024, h // 14, w // 14)

    @torch.inference_mode()
    def encode(self, rgb: np.ndarray, with_vgg: bool = True) -> EncodedImage:
        """Encode an RGB uint8 image of any size; ``with_vgg=False`` keeps only DINOv2."""
        check_rgb_image(rgb, "image")
        coarse_in = self.model_input(rgb, self.coarse_hw)
        encoded = EncodedImage(rgb.shape[:2], rgb, {16: self._dino(coarse_in)}, None)
        return self.completed(encoded, coarse_in) if with_vgg else encoded

    def model_input(self, rgb: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
        """ImageNet-normalized (1, 3, h, w) input, resized exactly as romatch's match() does."""
        return self._normalized(Image.fromarray(np.ascontiguousarray(rgb)), hw)

    @torch.inference_mode()
    def completed(self, encoded: EncodedImage, coarse_in: torch.Tensor | None = None) -> EncodedImage:
        """The image with the VGG pyramids decoding needs; cached DINOv2-only encodings
        are left as they are, so caches stay small."""
        coarse, fine = encoded.coarse, encoded.fine
        if 1 not in coarse:
            if coarse_in is None:
                coarse_in = self.model_input(encoded.rgb, self.coarse_hw)
            coarse = {**self.model.encoder.cnn(coarse_in), 16: coarse[16]}
        if self.fine_hw and fine is None:
            fine = self.model.encoder.cnn(self.model_input(encoded.rgb, self.fine_hw))
        return replace(encoded, coarse=coarse, fine=fine)

    # ---------------------------------------------------------------- decode
    def _project(self, pyramid: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """The decoder's per-scale input projections, applied once per image (romatch applies
        them inside Decoder.forward, to every stacked pair) with romatch's precision rule."""
        proj = self.model.decoder.proj
        out = {}
        for scale, features in pyramid.items():
            if str(scale) not in proj:
                out[scale] = features
                continue
            device, enabled, dtype = get_autocast_params(features.device, False, self.model.decoder.amp_dtype)
            with torch.autocast(device, enabled=enabled, dtype=dtype):
                out[scale] = proj[str(scale)](features if enabled else features.float())
        return out

    def _pair_pyramids(self, query: dict, candidates: list[dict]) -> tuple[dict, dict]:
        """Stack the decoder's two inputs: (q, q, ...) against (c1, c2, ...); symmetric
        matching appends the reverse direction, as romatch's forward_symmetric does."""
        n = len(candidates)
        f_q, f_c = {}, {}
        for scale, q in query.items():
            qs = q.expand(n, *q.shape[1:])
            cs = torch.cat([c[scale] for c in candidates])
            if self.config.symmetric:
                f_q[scale], f_c[scale] = torch.cat((qs, cs)), torch.cat((cs, qs))
            else:
                f_q[scale], f_c[scale] = qs, cs
        return f_q, f_c

    @torch.inference_mode()
    def decoder_inputs(self, encoded: EncodedImage) -> tuple[dict, dict | None]:
        """Projected pyramids the decoder consumes: kept ones, or VGG + projection now."""
        if encoded.ready is not None:
            return encoded.ready
        full = self.completed(encoded)
        return self._project(full.coarse), (self._project(full.fine) if full.fine is not None else None)

    def _decode_pairs(self, pairs: Callable[[str], tuple[dict, dict]],
                      posterior: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """romatch's decoder on the paired pyramids ``pairs("coarse")`` and ``pairs("fine")``:
        the coarse pass, the upsampling pass, the certainty attenuation; (flow, logits) at the
        output size. Asking per pass lets each pass's pairs be freed before the next is made.
        With ``posterior`` the coarse GP is not run: that is its result."""
        decoder = self._decoder
        if posterior is not None:
            self._posterior.value = posterior
            decoder = self._decoder_given_gp
        hs, ws = self.coarse_hw
        with dense_correlation_in_romatch():
            corresps = decoder(*pairs("coarse"), upsample=False,
                               scale_factor=math.sqrt(hs * ws / TRAIN_RES**2))
            low_res_logits = corresps[16]["certainty"]
            if self.fine_hw:
                hs, ws = self.fine_hw
                corresps = decoder(*pairs("fine"), upsample=True,
                                   scale_factor=math.sqrt(hs * ws / TRAIN_RES**2), **corresps[1])
        logits = corresps[1]["certainty"]
        if self.model.attenuate_cert:
            logits = logits - attenuation(low_res_logits, hs, ws)
        return corresps[1]["flow"], logits

    @torch.inference_mode()
    def decoder_inputs_many(self, encoded: Sequence[EncodedImage]) -> list[tuple[dict, dict | None]]:
        """``decoder_inputs`` of several images; on a GPU (``batch_vgg``) the VGG pyramids and
        projections of those not kept run as one batch instead of one launch sequence each."""
        out = [e.ready for e in encoded]
        todo = [i for i, e in enumerate(encoded) if e.ready is None]
        if len(todo) < 2 or not self.batch_vgg:
            return [self.decoder_inputs(e) for e in encoded]
        rgbs = [encoded[i].rgb for i in todo]
        cnn = self.model.encoder.cnn
        coarse = self._project({**cnn(torch.cat([self.model_input(x, self.coarse_hw) for x in rgbs])),
                                16: torch.cat([encoded[i].coarse[16] for i in todo])})
        fine = self._project(cnn(torch.cat([self.model_input(x, self.fine_hw) for x in rgbs]))) if self.fine_hw else None
        for j, i in enumerate(todo):
            out[i] = ({s: t[j:j + 1] for s, t in coarse.items()},
                      None if fine is None else {s: t[j:j + 1] for s, t in fine.items()})
        return out

    @torch.inference_mode()
    def decode(self, query: EncodedImage, candidates: list[EncodedImage]) -> list[DenseWarp]:
        """Dense warps of ``query`` against each candidate, decoded as one batch."""
        if not candidates:
            return []
        q_coarse, q_fine = self.decoder_inputs(query)
        c_inputs = self.decoder_inputs_many(candidates)
        passes = ("coarse", "fine") if self.fine_hw else ("coarse",)
        query_p = dict(zip(passes, (q_coarse, q_fine)))
        cands_p = [dict(zip(passes, c)) for c in c_inputs]
        if self._graphed is not None:
            f_q, f_c = self._pair_pyramids({16: q_coarse[16]}, [{16: c[16]} for c, _ in c_inputs])
            flow, logits = self._graphed(query_p, cands_p, self.model.decoder.gps["16"](f_q[16], f_c[16]))
        else:
            flow, logits = self._decode_pairs(lambda p: self._pair_pyramids(query_p[p], [c[p] for c in cands_p]))
        hs, ws = self.fine_hw or self.coarse_hw
        return self._to_warps(flow, logits, hs, ws, len(candidates))

    def _to_warps(
        self, flow: torch.Tensor, logits: torch.Tensor, hs: int, ws: int, n: int
    ) -> list[DenseWarp]:
        """Same post-processing as the end of RegressionMatcher.match."""
        flow = flow.permute(0, 2, 3, 1)
        certainty = logits.sigmoid()
        ys = torch.linspace(-1 + 1 / hs, 1 - 1 / hs, hs, device=flow.device)
        xs = torch.linspace(-1 + 1 / ws, 1 - 1 / ws, ws, device=flow.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack((grid_x, grid_y), dim=-1)[None].expand(n, hs, ws, 2)
        wrong = (flow.abs() > 1).any(dim=-1)
        certainty = certainty[:, 0].masked_fill(wrong, 0)
        flow = flow.clamp(-1, 1)
        if self.config.symmetric:
            a_to_b, b_to_a = flow.chunk(2)
            warp = torch.cat((torch.cat((coords, a_to_b), -1), torch.cat((b_to_a, coords), -1)), dim=2)
            certainty = torch.cat(certainty.chunk(2), dim=2)
        else:
            warp = torch.cat((coords, flow), dim=-1)
        return [DenseWarp(warp[i], certainty[i]) for i in range(n)]

    # ---------------------------------------------------------------- sample
    def output_hw(self, original_hw: tuple[int, int]) -> tuple[int, int]:
        """Pixel frame matches are reported in: the original image, or the model's output
        resolution when ``resize_to_model`` (RoMa's demo habit) is on."""
        if self.config.resize_to_model:
            return self.fine_hw or self.coarse_hw
        return original_hw

    def prepare(self, rgb: np.ndarray) -> EncodedImage:
        """A keyframe's kept part: DINOv2 features; with ``keep_vgg`` also the projected
        decoder inputs, which skip VGG and the projections per query at a memory cost
        (about 65 MB per keyframe at 560 in fp32, plus 145 MB with upsampling at 864)."""
        encoded = self.encode(rgb, with_vgg=False)
        if self.config.keep_vgg:
            encoded.ready = self.decoder_inputs(encoded)
        return encoded

    def cache_key(self) -> str:
        """Folder name for cached keyframe features: everything they depend on."""
        cfg = self.config
        dtype = str(self.model.encoder.amp_dtype).replace("torch.", "")
        parts = [cfg.model, f"c{cfg.coarse_res}", dtype]
        if cfg.keep_vgg:
            parts.append(f"ready-u{cfg.upsample_res}")
        if cfg.random_weights:
            identity = "random-weights-seed0"
        else:
            identity = "|".join(
                f"{c.filename}:{p}:{p.stat().st_size}:{int(p.stat().st_mtime)}" if p.is_file() else c.filename
                for c in checkpoints_for(cfg.model, cfg.weights, cfg.dinov2_weights)
                for p in [Path(c.given_path) if c.given_path else c.cache_path]
            )
        return "-".join(parts) + "-" + hashlib.sha1(identity.encode()).hexdigest()[:10]

    def export_prepared(self, encoded: EncodedImage) -> dict[str, torch.Tensor]:
        """The cacheable part of a prepared keyframe, on the CPU."""
        state = {"dino": encoded.dino.cpu()}
        if encoded.ready is not None:
            coarse, fine = encoded.ready
            state.update({f"ready_coarse_{s}": t.cpu() for s, t in coarse.items()})
            state.update({f"ready_fine_{s}": t.cpu() for s, t in (fine or {}).items()})
        return state

    def import_prepared(self, rgb: np.ndarray, state: dict[str, torch.Tensor]) -> EncodedImage:
        """Rebuild a prepared keyframe from cached features and its image."""
        check_rgb_image(rgb, "image")
        expected = (1, 1024, self.coarse_hw[0] // 14, self.coarse_hw[1] // 14)
        if tuple(state["dino"].shape) != expected:
            raise ValueError(f"cached DINOv2 features have shape {tuple(state['dino'].shape)}, expected {expected}")
        encoded = EncodedImage(rgb.shape[:2], rgb, {16: state["dino"].to(self.device)}, None)
        if self.config.keep_vgg:

            def pyramid(prefix: str) -> dict[int, torch.Tensor]:
                return {int(k.rsplit("_", 1)[1]): v.to(self.device) for k, v in state.items() if k.startswith(prefix)}

            coarse = pyramid("ready_coarse_")
            if not coarse:
                raise ValueError("cache holds no decoder inputs although keep_vgg is on")
            encoded.ready = (coarse, pyramid("ready_fine_") or None)
        return encoded

    def descriptor_key(self) -> str:
        """Global descriptors depend on what the cached features do (store/persisted.py)."""
        return self.cache_key()

    def describe(self, encoded: EncodedImage) -> np.ndarray:
        """Global descriptor for the shortlist from the DINOv2 features the matcher computes
        anyway: generalized-mean (p=3) pooling of the patch tokens, L2-normalized."""
        return gem_descriptor(encoded.dino)

    def match_prepared(self, query: EncodedImage, candidates: Sequence[EncodedImage]) -> list[Matches]:
        """Decode the (once-encoded) query against the candidates in batches; its decoder
        inputs (VGG + projections) are computed once, not once per batch."""
        query = replace(query, ready=self.decoder_inputs(query))
        out_q = self.output_hw(query.size)
        results: list[Matches] = []
        step = self.config.batch_size
        for start in range(0, len(candidates), step):
            chunk = list(candidates[start:start + step])
            warps = self.decode(query, chunk)
            results.extend(self.sample(dense, out_q, self.output_hw(cand.size)) for dense, cand in zip(warps, chunk))
            del warps  # a batch's warps go before the next is decoded: memory stays one batch's
        return results

    def match_many(self, query: np.ndarray, candidates: Sequence[np.ndarray]) -> list[Matches]:
        """Match one query against several candidate images."""
        return self.match_prepared(self.prepare(query), [self.prepare(c) for c in candidates])

    def match(self, query: np.ndarray, candidate: np.ndarray) -> Matches:
        return self.match_many(query, [candidate])[0]
