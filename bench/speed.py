"""Per-query cost of relocalizing against K keyframes: RoMa's demo loop against our pipeline.

Naive (as RoMa's demo does, per keyframe): romatch ``match()`` on both images, then
``sample()`` with its defaults (KDE-balanced), then the fundamental-matrix check.
Ours: the query encoded once, keyframe DINOv2 features prepared at load time,
candidates decoded in batches, our grid sampler, the same check.
Same random weights, same images, one process; timings are medians of --repeat runs
after a warm-up, printed with ratios. Random weights run the same arithmetic as real
ones, so times and memory carry over; the match counts do not.

With --vs-romatch: the GPU user's alternative, romatch's batched ``match()`` on the K
pairs (with and without RoMa's fused local-correlation kernel when it imports), alone and
with romatch ``sample()`` and the F check per pair, against ``Relocalizer.process`` with
each decode lever switched off and on (fast_decode.DecodeOptions, ransac.max_points).

    .venv/bin/python bench/speed.py                      # CPU: coarse 280, no upsampling
    python3 bench/speed.py --coarse 560 --upsample 864   # GPU: RoMa's defaults
    python3 bench/speed.py --gpu-table                   # GPU: resolution x precision table
    python3 bench/speed.py --vs-romatch --ks 8 --upsample 0   # GPU: levers and romatch's batched match()
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import measure  # noqa: E402

from roma_ros.localize.geometry import verify_fundamental  # noqa: E402
from roma_ros.matching.base import MatcherConfig  # noqa: E402
from roma_ros.matching.device import resolve_device  # noqa: E402
from roma_ros.matching.fast_decode import DecodeOptions  # noqa: E402
from roma_ros.matching.roma import RomaMatcher, as_romatch_builds_it, build_roma, has_fused_correlation  # noqa: E402
from roma_ros.matching.sampling import normalized_to_pixels  # noqa: E402
from roma_ros.localize.pipeline import DecisionConfig, Relocalizer  # noqa: E402
from roma_ros.store import Keyframe  # noqa: E402
from roma_ros.demo.photo_pairs import PHOTO_NAMES, make_pair  # noqa: E402


def scene(k: int) -> tuple[np.ndarray, list[Keyframe]]:
    """A 480x640 query and k keyframes (real photos under strong viewpoint change)."""
    query = make_pair("astronaut", seed=0).query
    keyframes = [Keyframe(name=f"kf{i}", image_file=f"kf{i}.png",
                          image=make_pair(PHOTO_NAMES[i % len(PHOTO_NAMES)], seed=i).candidate) for i in range(k)]
    return query, keyframes


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def naive_pair(model, query: np.ndarray, keyframe: np.ndarray, decision: DecisionConfig) -> int:
    """RoMa demo: match, sample with romatch's defaults, to pixels, F check."""
    warp, certainty = model.match(Image.fromarray(query), Image.fromarray(keyframe))
    matches, _ = model.sample(warp[0], certainty[0], num=10000)
    kq = normalized_to_pixels(matches[:, :2].float(), *query.shape[:2]).cpu().numpy()
    kc = normalized_to_pixels(matches[:, 2:].float(), *keyframe.shape[:2]).cpu().numpy()
    return verify_fundamental(kq, kc, method=decision.method, threshold=decision.threshold).num_inliers


def timed(fn, device: str, repeat: int) -> tuple[float, int, object]:
    """Median seconds over ``repeat`` runs, the peak memory of the first, the last result."""
    _, _, peak = measure(fn, device)
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak, result


def config_for(args, device: str, upsample: int, precision: str) -> MatcherConfig:
    return MatcherConfig(model="roma_outdoor", device=device, coarse_res=args.coarse, upsample_res=upsample,
                         random_weights=True, precision=precision, batch_size=args.batch_size,
                         num_samples=10000, symmetric=not args.one_way, keep_vgg=args.keep_vgg)


def compare(args, device: str) -> None:
    ks = [int(k) for k in args.ks.split(",")]
    decision = DecisionConfig(top_k=0)  # every keyframe is decoded, like the naive loop
    matcher = RomaMatcher(config_for(args, device, args.upsample, "auto"))
    query, keyframes = scene(max(ks))
    print(f"device {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}), "
          f"coarse {args.coarse}, upsample {args.upsample or 'off'}, "
          f"precision {str(matcher.model.encoder.amp_dtype).replace('torch.', '')}, "
          f"symmetric {not args.one_way}, batch {args.batch_size}, keep_vgg {args.keep_vgg}, random weights")
    naive_repeat = args.repeat if device.startswith("cuda") else 1
    with as_romatch_builds_it(matcher.model) as model:
        naive_s, naive_peak, _ = timed(lambda: naive_pair(model, query, keyframes[0].image, decision),
                                    device, naive_repeat)
        measured_naive = {1: naive_s}
        if device.startswith("cuda"):
            for k in ks[1:]:
                measured_naive[k], _, _ = timed(
                    lambda k=k: [naive_pair(model, query, kf.image, decision) for kf in keyframes[:k]],
                    device, naive_repeat)
    print(f"{'K':>3} {'naive s':>9} {'ours s':>8} {'(match':>7} {'verify)':>8} {'speed-up':>9} "
          f"{'naive peak MB':>14} {'ours peak MB':>13}")
    for k in ks:
        reloc = Relocalizer(matcher, decision)
        reloc.set_keyframes(keyframes[:k])
        reloc.process(query)  # warm-up
        ours_s, ours_peak, last = timed(lambda: reloc.process(query), device, args.repeat)
        naive = measured_naive.get(k, naive_s * k)
        note = "" if k in measured_naive else "  (naive extrapolated: K x measured pair)"
        print(f"{k:>3} {naive:>9.2f} {ours_s:>8.2f} {last.timings['match']:>7.2f} {last.timings['verify']:>8.2f} "
              f"{naive / ours_s:>8.1f}x {naive_peak / 2**20:>14.0f} {ours_peak / 2**20:>13.0f}{note}")


def gpu_table(args, device: str) -> None:
    """ms per query and peak GPU memory, K keyframes, at two resolutions and two precisions."""
    k = max(int(v) for v in args.ks.split(","))
    query, keyframes = scene(k)
    print(f"{torch.cuda.get_device_name()}: K={k} keyframes per query, coarse {args.coarse}, batch {args.batch_size}")
    print(f"{'upsample':>8} {'precision':>9} {'ms/query':>9} {'pairs/s':>8} {'peak MB':>8}")
    reference = None
    for precision in ("fp32", "auto"):
        model = build_roma(config_for(args, device, 864, precision), device)
        for upsample in (864, 0):
            matcher = RomaMatcher(config_for(args, device, upsample, precision), model=model)
            reloc = Relocalizer(matcher, DecisionConfig(top_k=0))
            reloc.set_keyframes(keyframes)
            reloc.process(query)
            torch.cuda.empty_cache()
            seconds, peak, _ = timed(lambda: reloc.process(query), device, args.repeat)
            name = str(model.encoder.amp_dtype).replace("torch.", "")
            reference = reference or seconds
            print(f"{upsample or 'off':>8} {name:>9} {1000 * seconds:>9.1f} {k / seconds:>8.1f} {peak / 2**20:>8.0f}"
                  f"   ({reference / seconds:.2f}x the fp32/864 run)")
        reloc = matcher = model = None  # free this precision's weights before the next
        torch.cuda.empty_cache()


# name -> (decode options, ransac.max_points). "default" is what ships (BatchNorm folding,
# max_points 5000, the fused kernel where it wins); "all" adds CUDA graphs and batched VGG.
# Explicit options, so logs stay reproducible when defaults change.
FOLD, GRAPHS, BATCH = (DecodeOptions(fold_batchnorm=f, cuda_graphs=g, batch_vgg=b) for f, g, b in
                       ((True, False, False), (False, True, False), (False, False, True)))
VARIANTS = {
    "none": (DecodeOptions(fold_batchnorm=False, cuda_graphs=False, batch_vgg=False), 0),
    "+fold": (FOLD, 0),
    "+graphs": (GRAPHS, 0),
    "+max_points": (DecodeOptions(fold_batchnorm=False, cuda_graphs=False, batch_vgg=False), 5000),
    "default": (FOLD, 5000),
    "all": (DecodeOptions(fold_batchnorm=True, cuda_graphs=True, batch_vgg=True), 5000),
    "all-graphs": (DecodeOptions(fold_batchnorm=True, cuda_graphs=False, batch_vgg=True), 5000),
    "all-batch_vgg": (DecodeOptions(fold_batchnorm=True, cuda_graphs=True, batch_vgg=False), 5000),
    "all-graphs-kernel": (DecodeOptions(fold_batchnorm=True, cuda_graphs=False, batch_vgg=True), 5000),  # no kernel
    "all+keep_vgg": (DecodeOptions(fold_batchnorm=True, cuda_graphs=True, batch_vgg=True), 5000),  # + keep_vgg
    "default+keep_vgg": (FOLD, 5000),
}
del GRAPHS, BATCH


def peaks(fn, device: str) -> tuple[float, float, float]:
    """GPU memory of one call in GiB, totals rather than growth over the start: peak allocated
    (tensors; a CUDA graph's replay allocates nothing, so its working memory is not in it),
    peak reserved (all the allocator holds, caching included), and what stays reserved after
    emptying the cache (weights, keyframe features, graph pools and buffers)."""
    if not device.startswith("cuda"):
        return float("nan"), float("nan"), float("nan")
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    allocated, reserved = torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30
    gc.collect()
    torch.cuda.empty_cache()
    return allocated, reserved, torch.cuda.memory_reserved() / 2**30


def profiled(fn) -> None:
    """torch.profiler's top GPU operators for one call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60))


def set_fused(model, on: bool) -> None:
    """romatch's refiners call the fused kernel when this is set (romatch's default when installed)."""
    for refiner in model.decoder.conv_refiner.values():
        refiner.use_custom_corr = on


def romatch_peer(args, device: str, model, matcher: RomaMatcher, query: np.ndarray,
                 keyframes: list[Keyframe]) -> dict[str, float]:
    """romatch's batched match() on the K pairs (normalized tensors at the model's sizes,
    made outside the timing), then per pair sample() and the F check, as a GPU user writes it."""
    k = len(keyframes)
    a = matcher.model_input(query, matcher.coarse_hw).expand(k, -1, -1, -1).contiguous()
    b = torch.cat([matcher.model_input(kf.image, matcher.coarse_hw) for kf in keyframes])
    kw = {}
    if matcher.fine_hw:
        kw = dict(im_A_high_res=matcher.model_input(query, matcher.fine_hw).expand(k, -1, -1, -1).contiguous(),
                  im_B_high_res=torch.cat([matcher.model_input(kf.image, matcher.fine_hw) for kf in keyframes]))

    def full() -> int:
        warp, certainty = model.match(a, b, **kw)
        inliers = 0
        for i, kf in enumerate(keyframes):
            matches, _ = model.sample(warp[i], certainty[i], num=10000)
            kq = normalized_to_pixels(matches[:, :2].float(), *query.shape[:2]).cpu().numpy()
            kc = normalized_to_pixels(matches[:, 2:].float(), *kf.image.shape[:2]).cpu().numpy()
            inliers += verify_fundamental(kq, kc).num_inliers
        return inliers

    results = {}
    kernels = [False, True] if device.startswith("cuda") and has_fused_correlation() else [False]
    with as_romatch_builds_it(model):
        for fused in kernels:
            set_fused(model, fused)
            name = "fused" if fused else "no fused"
            model.match(a, b, **kw)  # warm-up
            results[f"match ({name})"], _, _ = timed(lambda: model.match(a, b, **kw), device, args.repeat)
            results[f"match+sample+F ({name})"], _, _ = timed(full, device, args.repeat)
            results[f"peak ({name})"] = peaks(lambda: model.match(a, b, **kw), device)
    set_fused(model, kernels[-1])
    return results


def vs_romatch(args, device: str) -> None:
    """Relocalizer.process with each lever off and on, against romatch's batched match()."""
    k = max(int(v) for v in args.ks.split(","))
    query, keyframes = scene(2 * k)
    config = config_for(args, device, args.upsample, "auto")
    model = build_roma(config, device)
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"{gpu}, torch {torch.__version__}, fused kernel {'imports' if has_fused_correlation() else 'missing'}: "
          f"K={k}, coarse {args.coarse}, upsample {args.upsample or 'off'}, "
          f"precision {str(model.encoder.amp_dtype).replace('torch.', '')}, symmetric {not args.one_way}, "
          f"batch {args.batch_size}, random weights, median of {args.repeat}")
    peer = {} if args.no_peer else romatch_peer(args, device, model, RomaMatcher(config, model=model), query,
                                                keyframes[:k])
    reference = peer.get("match (fused)", peer.get("match (no fused)", float("nan")))
    for name, seconds in peer.items():
        if not name.startswith("peak"):
            print(f"romatch {name:<28} {1000 * seconds:>8.1f} ms/query {k / seconds:>6.1f} pairs/s")
    for name, (allocated, reserved, held) in ((n, v) for n, v in peer.items() if n.startswith("peak")):
        print(f"romatch {name:<28} allocated {allocated:.2f} GiB, reserved {reserved:.2f} GiB, held {held:.2f} GiB")
    print(f"{'roma_ros variant':<18} {'K':>3} {'ms/query':>9} {'encode':>7} {'match':>7} {'verify':>7} {'pairs/s':>8} "
          f"{'alloc GiB':>9} {'resv GiB':>9} {'held GiB':>9} {'inliers':>8} {'vs none':>8} {'vs romatch match':>17}")
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    baseline = None
    for name, count in [(n, k) for n in names] + [("default", 2 * k)]:
        options, max_points = VARIANTS[name]
        matcher = RomaMatcher(replace(config, keep_vgg=name.endswith("keep_vgg")), model=model, options=options)
        if name.endswith("-kernel"):
            for refiner in matcher._refiners:
                refiner.use_custom_corr = False
        reloc = Relocalizer(matcher, DecisionConfig(top_k=0, max_points=max_points))
        reloc.set_keyframes(keyframes[:count])
        reloc.process(query)  # warm-up (captures the CUDA graphs)
        seconds, _, last = timed(lambda: reloc.process(query), device, args.repeat)
        allocated, reserved, held = peaks(lambda: reloc.process(query), device)
        if args.profile and name == "default" and count == k and device.startswith("cuda"):
            profiled(lambda: reloc.process(query))
        baseline = baseline or seconds
        t = {key: 1000 * v for key, v in last.timings.items()}
        inliers = sum(c.inliers for c in last.candidates)
        print(f"{name:<18} {count:>3} {1000 * seconds:>9.1f} {t['encode']:>7.1f} {t['match']:>7.1f} {t['verify']:>7.1f} "
              f"{count / seconds:>8.1f} {allocated:>9.2f} {reserved:>9.2f} {held:>9.2f} {inliers:>8} "
              f"{baseline / seconds:>7.2f}x "
              f"{reference * count / k / seconds:>16.2f}x")
        if matcher._graphed is not None and matcher._graphed.failed:
            print(f"   (graphs failed: {matcher._graphed.failed})")
        del reloc, matcher, last
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"(K={2 * k} row: peak memory must match the K={k} row: decoding is batched by {args.batch_size})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--coarse", type=int, default=None, help="default: 560 on GPU, 280 on CPU")
    parser.add_argument("--upsample", type=int, default=None, help="default: 864 on GPU, 0 on CPU")
    parser.add_argument("--ks", default="1,3,10")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--one-way", action="store_true")
    parser.add_argument("--keep-vgg", action="store_true", help="keep keyframes' decoder inputs in memory")
    parser.add_argument("--repeat", type=int, default=None, help="default: 5 on GPU, 1 on CPU")
    parser.add_argument("--gpu-table", action="store_true")
    parser.add_argument("--vs-romatch", action="store_true", help="levers on/off against romatch's batched match()")
    parser.add_argument("--no-peer", action="store_true", help="with --vs-romatch, leave romatch out (CPU A/B runs)")
    parser.add_argument("--profile", action="store_true", help="with --vs-romatch, profile the 'default' variant")
    parser.add_argument("--variants", default="", help=f"with --vs-romatch, comma-separated of: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.startswith("cuda")
    args.coarse = args.coarse or (560 if gpu else 280)
    args.upsample = (864 if gpu else 0) if args.upsample is None else args.upsample
    args.repeat = args.repeat or (5 if gpu else 1)
    if not gpu:
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if args.gpu_table:
        gpu_table(args, device)
    elif args.vs_romatch:
        vs_romatch(args, device)
    else:
        compare(args, device)


if __name__ == "__main__":
    main()
