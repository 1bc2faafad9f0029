"""RoMa's local correlation: romatch's grid_sample path against our dense one, per refiner.

For each refiner at a given resolution (coarse 280/560, upsample 864), the shape RoMa
feeds it for one decode batch (8 candidates, symmetric: 16 image pairs): time of both
implementations, their ratio, and which one ``use_dense`` picks; on a GPU with RoMa's fused
kernel installed (``fused-local-corr``, fp32 only) also its time and its largest difference
from ours. Sets the DENSE_MAX_PIXELS_PER_SAMPLE thresholds in roma_ros/matching/local_corr.py.

    .venv/bin/python bench/correlation.py              # CPU (2 threads)
    python3 bench/correlation.py --device cuda         # GPU, fp32 and bf16
"""
from __future__ import annotations

import argparse

import torch
from romatch.utils.local_correlation import local_correlation as romatch_local_correlation

from roma_ros.matching.device import resolve_device
from roma_ros.matching.local_corr import dense_local_correlation, use_dense
from roma_ros.matching.roma import has_fused_correlation
from speed import timed

# (resolution, scale, channels, radius): RoMa's refiners with a local correlation.
REFINERS = [(280, 16, 512, 7), (280, 8, 512, 3), (280, 4, 256, 2),
            (560, 16, 512, 7), (560, 8, 512, 3), (560, 4, 256, 2),
            (864, 8, 512, 3), (864, 4, 256, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.startswith("cuda")
    if not gpu:
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    dtypes = (torch.float32, torch.bfloat16) if gpu else (torch.float32,)
    resolutions = (560, 864) if gpu else (280, 560)
    fused = gpu and has_fused_correlation()
    print(f"{'res':>4} {'scale':>5} {'HxW':>9} {'K':>4} {'dtype':>8} {'romatch ms':>11} {'dense ms':>9} "
          f"{'speed-up':>9}  picks" + ("    fused ms  dense/fused  max |fused - dense|" if fused else ""))
    for res, scale, c, r in REFINERS:
        if res not in resolutions:
            continue
        side = res // 14 if scale == 16 else res // scale
        for dtype in dtypes:
            gen = torch.Generator(device=device).manual_seed(0)
            f0, f1 = (torch.randn(args.batch, c, side, side, device=device, dtype=dtype, generator=gen)
                      .contiguous(memory_format=torch.channels_last) for _ in range(2))
            warp = torch.rand(args.batch, 2, side, side, device=device, generator=gen) * 2 - 1
            # As inside RoMa's refiners: bf16 features under autocast, fp32 matches.
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                                                        enabled=dtype == torch.bfloat16):
                ref = timed(lambda: romatch_local_correlation(f0, f1, r, warp, use_custom_corr=False), device, 3)[0]
                ours, _, dense = timed(lambda: dense_local_correlation(f0, f1, r, warp), device, 3)
                extra = ""
                if fused:
                    kernel, _, out = timed(lambda: romatch_local_correlation(f0, f1, r, warp, use_custom_corr=True),
                                           device, 3)
                    extra = (f"  {1000 * kernel:>10.1f} {ours / kernel:>11.2f}x "
                             f"{(out.float() - dense.float()).abs().max().item():>20.2e}")
            picks = "dense" if use_dense(side, side, r, dtype) else "romatch"
            print(f"{res:>4} {scale:>5} {side:>4}x{side:<4} {(2 * r + 1) ** 2:>4} {str(dtype)[6:]:>8} "
                  f"{1000 * ref:>11.1f} {1000 * ours:>9.1f} {ref / ours:>8.1f}x  {picks:<7}{extra}")


if __name__ == "__main__":
    main()
