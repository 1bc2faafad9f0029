"""Our encode-once / batched decode against romatch's match() on the same weights and images.

Prints the largest warp and certainty differences at full precision and at the
device's mixed precision (on CPU both are fp32), with the shipped decode levers on
(folded BatchNorm, the fused kernel where it wins). On a GPU it also compares CUDA-graph
replay with the eager decode for three candidates (padded to a bucket of 4) and four. The test suite
asserts the fp32 case at small resolution; this script shows it at real resolutions.

    python3 bench/parity.py [--device auto] [--coarse 560] [--upsample 864]
"""
from __future__ import annotations

import argparse

import torch
from PIL import Image

from roma_ros.matching.base import MatcherConfig
from roma_ros.matching.device import resolve_device
from roma_ros.matching.fast_decode import DecodeOptions
from roma_ros.matching.roma import RomaMatcher, as_romatch_builds_it
from roma_ros.demo.photo_pairs import make_pair


def off(dw: torch.Tensor) -> str:
    """Share of warp entries off by more than 1e-3. With random weights the coarse classifier
    is nearly flat, so rounding differences (another GEMM kernel for another batch size) can
    move its argmax: a few coarse cells then jump, which the max shows and this share bounds."""
    return f"{(dw > 1e-3).float().mean().item():.1e} of warp entries off by > 1e-3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--coarse", type=int, default=560)
    parser.add_argument("--upsample", type=int, default=864)
    args = parser.parse_args()
    device = resolve_device(args.device)
    pair = make_pair("coffee", seed=2)
    for precision in ("fp32", "auto"):
        matcher = RomaMatcher(MatcherConfig(model="roma_outdoor", device=device, coarse_res=args.coarse,
                                            upsample_res=args.upsample, random_weights=True, precision=precision))
        # The fp32 comparison is without TF32, which would round both sides differently.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
        q, c = matcher.encode(pair.query), matcher.encode(pair.candidate)
        ours = matcher.decode(q, [c])[0]
        kw = dict(im_A_high_res=matcher.model_input(pair.query, matcher.fine_hw),
                  im_B_high_res=matcher.model_input(pair.candidate, matcher.fine_hw)) if args.upsample else {}
        with as_romatch_builds_it(matcher.model):
            warp, cert = matcher.model.match(Image.fromarray(pair.query), Image.fromarray(pair.candidate), **kw)
        dtype = str(matcher.model.encoder.amp_dtype).replace("torch.", "")
        dw = (ours.warp.float() - warp[0].float()).abs()
        dc = (ours.certainty.float() - cert[0].float()).abs()
        print(f"{device} {dtype:>8}: warp max {dw.max():.2e} mean {dw.mean():.2e}; "
              f"certainty max {dc.max():.2e} mean {dc.mean():.2e}; {off(dw)}")
        if device.startswith("cuda"):
            graphs = RomaMatcher(matcher.config, model=matcher.model, options=DecodeOptions(cuda_graphs=True))
            for cands in ([c, q, c], [c, q, c, q]):
                graphed = graphs.decode(q, cands)
                for i, (g, e) in enumerate(zip(graphed, matcher.decode(q, cands))):
                    dw = (g.warp - e.warp).abs()
                    print(f"   graphs vs eager, K={len(cands)} (bucket 4), pair {i}: warp max {dw.max():.2e}, "
                          f"certainty max {(g.certainty - e.certainty).abs().max():.2e}; {off(dw)}"
                          + (f"  [graphs failed: {graphs._graphed.failed}]" if graphs._graphed.failed else ""))
            del graphs, graphed
        del matcher, q, c, ours, warp, cert
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
