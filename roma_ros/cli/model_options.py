"""Model options shared by the command-line tools, so `roma-match` and `roma-keyframes
build-cache` describe and build matchers the same way."""
from __future__ import annotations

import argparse

from roma_ros.matching.base import MODEL_NAMES, MatcherConfig


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODEL_NAMES, default="roma_outdoor")
    parser.add_argument("--weights", default="",
                        help="RoMa / Tiny RoMa checkpoint (default: torch hub cache, then download)")
    parser.add_argument("--dinov2-weights", default="", help="DINOv2 ViT-L/14 checkpoint (same default)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--coarse-res", type=int, default=560, help="multiple of 14 (Tiny RoMa: longer side)")
    parser.add_argument("--upsample-res", type=int, default=864, help="multiple of 8; 0 = off")
    parser.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)


def model_config(args: argparse.Namespace, **extra) -> MatcherConfig:
    """MatcherConfig from the options above plus tool-specific settings."""
    return MatcherConfig(model=args.model, weights=args.weights, dinov2_weights=args.dinov2_weights,
                         device=args.device, coarse_res=args.coarse_res, upsample_res=args.upsample_res,
                         random_weights=args.random_weights, **extra)
