"""One GPU check of the models: golden vectors, CPU/GPU agreement, and speed on the GPU.

Needs only ``seg2change_core`` (torch, numpy, safetensors, pyyaml), so it runs on a GPU machine
that has PyTorch but not the pipeline's geo stack. Prints:

1. the CACH head of the golden fixtures on the GPU against the reference outputs, with TF32 off
   and on (max |delta| of the six outputs, agreement of the change argmax);
2. the demo change checkpoint, the spectral segmenter and the fusion on the same batch of
   generated 512 px tiles on the CPU and on the GPU (max |delta| of the probabilities, share of
   pixels whose binary change / class / transition agree);
3. GPU time per tile pair of the demo change model and of DINOv2 ViT-S/14 + CACH head (random
   weights, 504 px tiles) in float32 and under bfloat16 autocast.

Usage::

    python bench/gpu_check.py --fixtures ../shared/fixtures/cach
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from seg2change_core.backbones import build_dinov2
from seg2change_core.cach import CACHHead
from seg2change_core.checkpoints import load_change_model
from seg2change_core.fusion import fuse
from seg2change_core.prompts import PromptSet
from seg2change_core.segmenters import get_segmenter

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "seg2change_core" / "assets" / "demo_cach.safetensors"
OUTPUTS = ("out.change", "out.aux1_path1", "out.aux2_path2", "out.aux3_path3", "out.A", "out.B")
CLASSES = "water;forest,tree;grass;cropland;building,roof,house;bare soil;burned area"


def golden(fixtures: Path, device: torch.device) -> None:
    """The golden head on ``device`` against the reference outputs."""
    head = CACHHead(in_channels=384, hidden_dim=64, nclass=2)
    head.load_state_dict(load_file(str(fixtures / "golden_vits14_seed0.safetensors")), strict=True)
    head = head.eval().to(device)
    io = load_file(str(fixtures / "golden_vits14_seed0_io.safetensors"))
    feats_a = [io[f"in.feats_A.{i}"].to(torch.float32).to(device) for i in range(4)]
    feats_b = [io[f"in.feats_B.{i}"].to(torch.float32).to(device) for i in range(4)]
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        with torch.no_grad():
            outputs = head(feats_a, feats_b)
        worst = max(float((o.cpu() - io[n]).abs().max()) for o, n in zip(outputs, OUTPUTS, strict=True))
        agree = float((outputs.change.argmax(1).cpu() == io["out.change"].argmax(1)).float().mean())
        print(
            f"golden CACH on {device}, TF32 {'on ' if tf32 else 'off'}: max |delta| {worst:.2e}, change argmax agrees {agree:.4%}"
        )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def tiles(bands: int, n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` smooth random reflectance tiles and a changed copy (blocks of other reflectances)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, bands, size // 32, size // 32, generator=generator) * 0.4
    before = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    after = before.clone()
    patch = torch.rand(n, bands, 1, 1, generator=generator) * 0.4
    after[:, :, size // 4 : size // 2, size // 4 : size // 2] = patch
    return before, after


def agreement(device: torch.device) -> None:
    """Demo change model + spectral segmenter + fusion on the CPU and on ``device``."""
    model = load_change_model(DEMO_CHECKPOINT)
    assert isinstance(model, torch.nn.Module)
    prompts = PromptSet.from_string(CLASSES, targets=["building", "water", "burned area"])
    segmenter = get_segmenter("spectral", bands=model.bands)
    before, after = tiles(len(model.bands), 4, 512, seed=0)
    results = {}
    for where in (torch.device("cpu"), device):
        model.to(where).eval()
        with torch.inference_mode():
            change = model.predict(before.to(where), after.to(where))
            classes = segmenter.segment(torch.cat([before, after]).to(where), prompts)
            fused = fuse(change, classes[:4], classes[4:], prompts)
        results[where.type] = (change.cpu(), classes.cpu(), fused)
    (c_cpu, k_cpu, f_cpu), (c_gpu, k_gpu, f_gpu) = results["cpu"], results[device.type]
    print(
        f"demo change model CPU vs {device}: max |delta prob| {float((c_cpu - c_gpu).abs().max()):.2e}; "
        f"binary change agrees {float((f_cpu.change == f_gpu.change.cpu()).float().mean()):.4%}"
    )
    print(
        f"spectral segmenter CPU vs {device}: max |delta prob| {float((k_cpu - k_gpu).abs().max()):.2e}; "
        f"class before agrees {float((f_cpu.class_before == f_gpu.class_before.cpu()).float().mean()):.4%}; "
        f"transition agrees {float((f_cpu.transition == f_gpu.transition.cpu()).float().mean()):.4%}"
    )


def timed(fn: Callable[[], object], repeats: int = 10) -> float:
    """Median seconds of ``fn`` on the GPU after three warm-ups."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def speed(device: torch.device, batch: int) -> None:
    """GPU seconds per tile pair, float32 and bfloat16 autocast."""
    model = load_change_model(DEMO_CHECKPOINT)
    assert isinstance(model, torch.nn.Module)
    model.to(device).eval()
    before, after = (t.to(device) for t in tiles(len(model.bands), batch, 512, seed=1))
    backbone = build_dinov2("dinov2_vits14").to(device).eval()
    head = CACHHead(backbone.embed_dim).to(device).eval()
    pair = torch.randn(2 * batch, 3, 504, 504, device=device)

    def demo() -> object:
        with torch.inference_mode():
            return model.predict(before, after)

    def vits() -> object:
        with torch.inference_mode():
            feats = backbone.get_intermediate_layers(pair)
            return head.change_logits([f[:batch] for f in feats], [f[batch:] for f in feats])

    for name, fn, size in (("demo change model", demo, 512), ("ViT-S/14 + CACH head", vits, 504)):
        for precision in ("float32", "bfloat16"):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                seconds = timed(fn)
            print(
                f"{name:<22} {size} px, batch {batch}, {precision:<8}: {seconds / batch * 1e3:8.2f} ms per pair "
                f"({batch / seconds:7.1f} pairs/s)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fixtures", type=Path, required=True, help="folder of the golden CACH fixtures")
    parser.add_argument("--batch", type=int, default=8, help="tile pairs per call in the timings")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible: run this on a GPU machine")
    device = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}")
    golden(args.fixtures, device)
    agreement(device)
    speed(device, args.batch)


if __name__ == "__main__":
    main()
