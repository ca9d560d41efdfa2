"""The analytic cost model (:mod:`bridges.cost_model`) at paper scale: does it reproduce mPLUG-Owl3's claims?

Usage::

    python -m benchmarks.cost --paper [--ns 1 4 16 50 64 128 256 400] [--gpu-gib 80] [--out DIR]

Qwen2-7B + SigLIP-so400m at 384 px (729 tokens per image, the penultimate of 27 blocks read), bf16, one sample of N
images and 64 text tokens. LLaVA-Next-Interleave concatenates every image's 729 projected tokens into the LM
(``mlp2x_gelu``); mPLUG-Owl3 keeps one ``<image>`` token per image and reads the 729 tokens from 4 Hyper Attention
layers (0, 8, 16, 24). The bridges are the real ones, built on the meta device for their declared FLOPs and shapes.
mPLUG-Owl3 reports a 6x lower first-token latency than LLaVA-Interleave and 8x more images, up to 400 on one 80 GB
A100; the table shows the prefill FLOPs ratio (a compute-bound prefill's latency ratio), the peak memory (weights +
KV cache + visual K/V + largest transient) with fused (flash) attention and with eager attention (``2 H S^2`` scores),
and the largest N that fits the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.run import _atomic_write
from bridges.base import BRIDGES, BridgeIO, EncoderInfo, LMInfo
from bridges.cost_model import EncoderShape, LMShape, bridge_shape, predict

# blocks 1-26 of 27 run (the penultimate layer is read)
SIGLIP_SO400M_384 = EncoderShape(patches=729, width=1152, layers=26, ffn=4304, patch=14, heads=16)
SIGLIP_PARAMS = 0.428e9
QWEN2_7B = LMShape(layers=28, width=3584, heads=28, kv_heads=4, head_dim=128, ffn=18944, vocab=152064)
PAPER_BRIDGES = {
    "llava_interleave (mlp)": {"name": "mlp", "projector": "mlp2x_gelu"},
    "mplug_owl3 (hyper_attention)": {"name": "hyper_attention", "num_hyper_layers": 4},
}
NS = (1, 4, 16, 50, 64, 128, 256, 400)
TEXT_TOKENS = 64
BF16 = 2


def lm_params(lm: LMShape) -> float:
    inner = lm.heads * lm.head_dim
    per_layer = lm.width * (2 * inner + 2 * lm.kv_width) + 3 * lm.width * lm.ffn
    return lm.layers * per_layer + 2 * lm.vocab * lm.width  # untied embeddings and head (Qwen2-7B)


def paper_bridges() -> dict[str, tuple[Any, int]]:
    """``{label: (BridgeShape, parameter count)}`` of the two bridges at paper scale (built on the meta device)."""
    lm = QWEN2_7B
    enc = SIGLIP_SO400M_384
    io = BridgeIO((EncoderInfo("siglip", enc.width, (27, 27), 27),),
                  LMInfo(lm.width, lm.layers, lm.heads, lm.kv_heads, lm.head_dim, lm.vocab, "qwen2"))
    out = {}
    for label, spec in PAPER_BRIDGES.items():
        with torch.device("meta"):
            bridge = BRIDGES.build(spec, io)
        out[label] = (bridge_shape(bridge, lm), sum(p.numel() for p in bridge.parameters()))
    return out


def paper_table(ns: Sequence[int] = NS, gpu_gib: float = 80.0) -> dict[str, Any]:
    """Per bridge and N: prefill TFLOPs, decode GFLOPs per token, peak GiB (fused / eager attention), fits?"""
    bridges = paper_bridges()
    rows, limits = [], {}
    gpu = gpu_gib * 2**30
    for label, (shape, params) in bridges.items():
        weights = (lm_params(QWEN2_7B) + SIGLIP_PARAMS + params) * BF16

        def peak(n: int, fused: bool, shape: Any = shape, weights: float = weights) -> float:
            c = predict(SIGLIP_SO400M_384, shape, QWEN2_7B, n, TEXT_TOKENS + n, BF16, fused_attention=fused)
            return weights + c.prefill_peak_bytes

        for n in ns:
            c = predict(SIGLIP_SO400M_384, shape, QWEN2_7B, n, TEXT_TOKENS + n, BF16)
            rows.append({
                "bridge": label, "n": n, "lm_sequence_length": c.lm_sequence_length,
                "prefill_tflops": c.prefill_flops / 1e12, "encoder_tflops": c.parts["encoder"] / 1e12,
                "decode_gflops_per_token": c.decode_flops_per_token / 1e9, "kv_gib": c.kv_cache_bytes / 2**30,
                "visual_kv_gib": c.visual_kv_bytes / 2**30, "peak_gib_fused": peak(n, True) / 2**30,
                "peak_gib_eager": peak(n, False) / 2**30, "weights_gib": weights / 2**30,
            })
        limits[label] = {kind: _max_n(lambda n, f=fused: peak(n, f), gpu) for kind, fused in
                         (("fused", True), ("eager", False))}
    by = {(r["bridge"], r["n"]): r for r in rows}
    a, b = list(bridges)
    ratios = [{"n": n, "prefill_flops": by[(a, n)]["prefill_tflops"] / by[(b, n)]["prefill_tflops"],
               "prefill_flops_without_encoder": (by[(a, n)]["prefill_tflops"] - by[(a, n)]["encoder_tflops"])
               / (by[(b, n)]["prefill_tflops"] - by[(b, n)]["encoder_tflops"]),
               "decode_flops": by[(a, n)]["decode_gflops_per_token"] / by[(b, n)]["decode_gflops_per_token"]}
              for n in ns]
    return {"rows": rows, "ratios": ratios, "max_images": limits, "gpu_gib": gpu_gib, "pair": f"{a} / {b}"}


def _max_n(peak: Any, budget: float, hi: int = 1 << 14) -> int:
    """Largest N with ``peak(N) <= budget`` (0 if none), by bisection (peak grows with N)."""
    if peak(1) > budget:
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if peak(mid) <= budget else (lo, mid - 1)
    return lo


def to_markdown(table: dict[str, Any]) -> str:
    lines = [
        f"# Cost model at paper scale (Qwen2-7B + SigLIP-so400m-384, bf16, {TEXT_TOKENS} text tokens)", "",
        ("| bridge | N | LM seq | prefill TFLOP | of which encoder | decode GFLOP/token | KV GiB | visual K/V GiB "
        "| peak GiB fused attn | peak GiB eager attn |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table["rows"]:
        lines.append(
            f"| {r['bridge']} | {r['n']} | {r['lm_sequence_length']} | {r['prefill_tflops']:.3g} | "
            f"{r['encoder_tflops']:.3g} | {r['decode_gflops_per_token']:.3g} | {r['kv_gib']:.3g} | "
            f"{r['visual_kv_gib']:.3g} | {r['peak_gib_fused']:.3g} | {r['peak_gib_eager']:.3g} |"
        )
    lines += ["", f"Ratios {table['pair']}:", ""]
    lines += ["| N | prefill FLOPs | prefill FLOPs without encoder | decode FLOPs |", "|---:|---:|---:|---:|"]
    for r in table["ratios"]:
        lines.append(f"| {r['n']} | {r['prefill_flops']:.2f} | {r['prefill_flops_without_encoder']:.2f} | "
                     f"{r['decode_flops']:.2f} |")
    lines += ["", f"Most images per sample within {table['gpu_gib']:g} GiB (weights included):", ""]
    for label, lim in table["max_images"].items():
        lines.append(f"- {label}: {lim['fused']} with fused attention, {lim['eager']} with eager attention")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", action="store_true", help="the paper-scale table (the only table for now)")
    parser.add_argument("--ns", type=int, nargs="+", default=list(NS))
    parser.add_argument("--gpu-gib", type=float, default=80.0)
    parser.add_argument("--out", help="also write cost.md and cost.json here")
    args = parser.parse_args(argv)
    if not args.paper:
        parser.error("give --paper (the paper-scale evaluation of the cost model)")
    table = paper_table(args.ns, args.gpu_gib)
    text = to_markdown(table)
    print(text, end="")
    if args.out:
        _atomic_write(Path(args.out) / "cost.md", text)
        _atomic_write(Path(args.out) / "cost.json", json.dumps(table, indent=2) + "\n")
        print(f"wrote {args.out}/cost.md and cost.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
