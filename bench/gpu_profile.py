"""Where a query's GPU time goes, and which switches move it (exploration, not a test).

One model, K keyframes at 560 without upsampling: a torch.profiler table of the top
operators for one query, its encode/match/verify split, then ms per query for each
variant (each switches one thing off or on against the baseline).

    python3 bench/gpu_profile.py [--k 10]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile

from roma_ros.matching.base import MatcherConfig
from roma_ros.matching import local_corr
from roma_ros.matching.roma import RomaMatcher, as_romatch_builds_it, build_roma
from roma_ros.localize.pipeline import DecisionConfig, Relocalizer
from speed import scene


def ms_per_query(reloc: Relocalizer, query, repeat: int = 5) -> float:
    reloc.process(query)
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        reloc.process(query)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    query, keyframes = scene(args.k)
    base = dict(model="roma_outdoor", device="cuda", coarse_res=560, upsample_res=0, random_weights=True)
    model = build_roma(MatcherConfig(**base), "cuda")

    def reloc_for(**overrides) -> Relocalizer:
        reloc = Relocalizer(RomaMatcher(MatcherConfig(**(base | overrides)), model=model), DecisionConfig(top_k=0))
        reloc.set_keyframes(keyframes)
        return reloc

    reloc = reloc_for()
    reloc.process(query)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        reloc.process(query)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    split = reloc.process(query).timings
    print("one query, seconds: " + ", ".join(f"{k} {v:.3f}" for k, v in split.items()))
    variants = {
        "baseline (symmetric, batch 8)": ({}, contextlib.nullcontext()),
        "romatch's local correlation": ({}, mock.patch.object(local_corr, "use_dense", lambda *a: False)),
        "dense local correlation always": ({}, mock.patch.object(local_corr, "use_dense", lambda *a: True)),
        "romatch's NCHW decoder layout": ({}, as_romatch_builds_it(model)),
        "verification in one thread": ({}, mock.patch.object(os, "cpu_count", lambda: 1)),
        "batch 16": (dict(batch_size=16), contextlib.nullcontext()),
        "one-way": (dict(symmetric=False), contextlib.nullcontext()),
        "keep_vgg": (dict(keep_vgg=True), contextlib.nullcontext()),
    }
    for name, (overrides, context) in variants.items():
        reloc = reloc_for(**overrides)
        with context:
            print(f"{name:<32} {ms_per_query(reloc, query):8.1f} ms/query (K={args.k})")
    torch.backends.cudnn.benchmark = True
    print(f"{'cudnn.benchmark':<32} {ms_per_query(reloc_for(), query):8.1f} ms/query")


if __name__ == "__main__":
    main()
