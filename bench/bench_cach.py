"""Benchmark the CACH change model on this CPU: time, parameters and FLOPs per image pair.

Prints, for DINOv2 ViT-S/14 and ViT-B/14 with random weights, the forward time of the backbone
(both dates in one batch of 2), of the full head (six outputs) and of the change-only head path
used for inference, with parameter counts and FLOPs counted by ``torch.utils.flop_counter``.

Usage: ``python bench/bench_cach.py [--size 504] [--repeats 3] [--variants vits14 vitb14] [--threads N]``

Timings on a shared machine are noisy; the best-of-N column is the steadier figure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from seg2change_core.backbones import DinoVisionTransformer, build_dinov2
from seg2change_core.cach import CACHHead


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and best wall time of ``fn`` in seconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matrix products and convolutions, as FlopCounterMode counts)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=504, help="tile side in pixels (multiple of 14)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["vits14", "vitb14"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, tile {args.size}x{args.size}, per pair"
    )
    header = f"{'model':<16}{'part':<14}{'params':>12}{'GFLOP':>10}{'median s':>10}{'best s':>10}"
    print(header)
    print("-" * len(header))
    pair = torch.randn(2, 3, args.size, args.size)
    for variant in args.variants:
        backbone = build_dinov2(variant)
        head = CACHHead(backbone.embed_dim).eval()
        with torch.no_grad():
            feats = backbone.get_intermediate_layers(pair)
        feats_a, feats_b = [f[:1] for f in feats], [f[1:] for f in feats]

        def run_backbone(bb: DinoVisionTransformer = backbone) -> object:
            with torch.no_grad():
                return bb.get_intermediate_layers(pair)

        def run_head(
            h: CACHHead = head, a: list[torch.Tensor] = feats_a, b: list[torch.Tensor] = feats_b
        ) -> object:
            with torch.no_grad():
                return h(a, b)

        def run_change(
            h: CACHHead = head, a: list[torch.Tensor] = feats_a, b: list[torch.Tensor] = feats_b
        ) -> object:
            with torch.no_grad():
                return h.change_logits(a, b)

        backbone_params = sum(p.numel() for p in backbone.parameters())
        head_params = sum(p.numel() for p in head.parameters())
        rows: list[tuple[str, int, Callable[[], object]]] = [
            ("backbone x2", backbone_params, run_backbone),
            ("head (all 6)", head_params, run_head),
            ("head (change)", head_params, run_change),
        ]
        for part, params, fn in rows:
            gflop = flops(fn) / 1e9
            median, best = timed(fn, args.repeats)
            print(
                f"{'dinov2_' + variant:<16}{part:<14}{params:>12,}{gflop:>10.1f}{median:>10.3f}{best:>10.3f}"
            )


if __name__ == "__main__":
    main()
