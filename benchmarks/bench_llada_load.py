#!/usr/bin/env python
"""Peak host memory of `DSLForDiffusionLM.from_llada` on a generated LLaDA-format checkpoint.

Writes a random bf16 checkpoint in the published LLaDA format (config.json with the keys of
reference llada_dsl.md §1.1, `model.transformer.*` shards + index; the shape keeps LLaDA-8B's
proportions: the converter's W_trans is ≈ 6 % of the checkpoint) of about `--size_gb` GB, streaming
shard by shard from a child process, then loads it with `from_llada` in a fresh child process and
prints the resident-set high-water mark (`ru_maxrss`) against the checkpoint size, after reading
one value per memory page of every parameter (safetensors tensors may be file-mapped pages that only
become resident when used):

    peak / size               the whole process (Python, torch and transformers included)
    (peak − baseline) / size  what loading added, baseline = RSS after the imports

The loader builds the model on the `meta` device and assigns each published tensor in place, so the
backbone is never allocated twice nor randomly initialised; what it allocates besides the
checkpoint's tensors is the converter (W_trans, D × (V+1)) and the spherical embeddings.

    python benchmarks/bench_llada_load.py                  # ≈ 1.2 GB checkpoint
    python benchmarks/bench_llada_load.py --size_gb 16     # any size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the one LLaDA config writer (tests/llada_checkpoint.py)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size_gb", type=float, default=1.2, help="approximate checkpoint size (1e9 bytes)")
    parser.add_argument("--vocab_size", type=int, default=16384)
    parser.add_argument("--hidden_size", type=int, default=2048)
    parser.add_argument("--intermediate_size", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--shard_mb", type=int, default=256, help="target shard size (MB)")
    parser.add_argument("--folder", default=None, help="write the checkpoint here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint folder")
    parser.add_argument("--_write", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_load", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def layers_for(args) -> int:
    d, f, v = args.hidden_size, args.intermediate_size, args.vocab_size
    per_layer = 2 * (4 * d * d + 3 * d * f + 2 * d)
    return max(1, math.ceil((args.size_gb * 1e9 - 2 * (2 * v * d + d)) / per_layer))


def write(args, folder: Path) -> None:
    """Stream random bf16 tensors to shards of about `shard_mb` MB (never the whole model in memory)."""
    import torch
    from safetensors.torch import save_file

    from llada_checkpoint import llada_config

    d, f, v = args.hidden_size, args.intermediate_size, args.vocab_size
    n_layers = layers_for(args)
    config = llada_config(v, v - 128, v - 383, d_model=d, n_layers=n_layers, n_heads=args.heads,
                          n_kv_heads=args.heads, mlp_hidden_size=f)
    config["max_sequence_length"] = 4096
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    p = "model.transformer."
    shapes = [(p + "wte.weight", (v, d))]
    for i in range(n_layers):
        b = f"{p}blocks.{i}."
        shapes += [(b + "attn_norm.weight", (d,)), (b + "q_proj.weight", (d, d)), (b + "k_proj.weight", (d, d)),
                   (b + "v_proj.weight", (d, d)), (b + "attn_out.weight", (d, d)), (b + "ff_norm.weight", (d,)),
                   (b + "ff_proj.weight", (f, d)), (b + "up_proj.weight", (f, d)), (b + "ff_out.weight", (d, f))]
    shapes += [(p + "ln_f.weight", (d,)), (p + "ff_out.weight", (v, d))]
    groups, current, size = [], [], 0
    for name, shape in shapes:
        current.append((name, shape))
        size += 2 * math.prod(shape)
        if size >= args.shard_mb * 1e6:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    weight_map, total = {}, 0
    gen = torch.Generator().manual_seed(0)
    for k, group in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        part = {key: (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16) for key, shape in group}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in part.values())
        weight_map.update({key: name for key in part})
        del part
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def load(folder: Path) -> dict:
    """In a fresh process: RSS after the imports, then the peak while `from_llada` runs."""
    import torch

    from modeling_dsl import DSLForDiffusionLM

    def rss_bytes():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    baseline = rss_bytes()
    start = time.perf_counter()
    model = DSLForDiffusionLM.from_llada(str(folder))
    seconds = time.perf_counter() - start
    loaded = rss_bytes()
    with torch.no_grad():  # read one element per 4 KiB page of every tensor: all of them resident
        for p in model.parameters():
            flat = p.detach().reshape(-1)
            flat[:: max(1, 4096 // p.element_size())].float().sum()
    peak = rss_bytes()
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"checkpoint_bytes": size, "model_bytes": params, "baseline_rss": baseline, "peak_rss": peak,
            "peak_rss_before_touch": loaded, "peak_over_size": peak / size, "added_over_size": (peak - baseline) / size,
            "model_over_size": params / size, "load_seconds": seconds, "dtype": str(model.dtype),
            "layers": model.config.num_hidden_layers, "torch": torch.__version__}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args._write:
        write(args, Path(args._write))
        return {}
    if args._load:
        print(json.dumps(load(Path(args._load))))
        return {}
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="llada-bench-"))
    me = [sys.executable, str(Path(__file__).resolve())]
    passthrough = ["--size_gb", str(args.size_gb), "--vocab_size", str(args.vocab_size), "--hidden_size",
                   str(args.hidden_size), "--intermediate_size", str(args.intermediate_size), "--heads",
                   str(args.heads), "--shard_mb", str(args.shard_mb)]
    try:
        subprocess.run(me + passthrough + ["--_write", str(folder)], check=True)
        out = subprocess.run(me + ["--_load", str(folder)], check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep and not args.folder:
            shutil.rmtree(folder, ignore_errors=True)
    result["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    gib = 1024 ** 3
    print(f"checkpoint {result['checkpoint_bytes'] / gib:.2f} GiB ({result['layers']} layers, {result['dtype']}), "
          f"model {result['model_bytes'] / gib:.2f} GiB; peak RSS {result['peak_rss'] / gib:.2f} GiB = "
          f"{result['peak_over_size']:.2f}x the checkpoint; added by loading {result['added_over_size']:.2f}x "
          f"(baseline after imports {result['baseline_rss'] / gib:.2f} GiB); {result['load_seconds']:.1f} s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
