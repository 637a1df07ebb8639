#!/usr/bin/env python
"""Peak memory of one DSL training step with and without gradient checkpointing.

Each setting runs in a fresh subprocess, so one measurement cannot inherit the other's allocator
state. A step is Algorithm 1 as `DSLTrainer` runs it: per-token SNRs from the config's sampler,
forward with `snr=`, token CE, backward, AdamW step.

* CUDA: `torch.cuda.max_memory_allocated()` during the step minus the memory allocated before it
  (weights and, after a warm-up step, optimiser state).
* CPU: the process's resident-set high-water mark (`resource.getrusage(...).ru_maxrss`) minus the
  RSS before the step; tracemalloc does not see torch's allocations. A warm-up step runs first so
  AdamW's state already exists, and glibc is told to return freed memory to the OS
  (`malloc_trim`), so the figure is the step's activations and gradients.

    python benchmarks/bench_grad_checkpointing.py                       # DiT-170M shape, L=256, B=4
    python benchmarks/bench_grad_checkpointing.py --seq_len 1024 --batch_size 8 --device cuda
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--vocab_size", type=int, default=50257)
    parser.add_argument("--hidden_size", type=int, default=768)
    parser.add_argument("--num_layers", type=int, default=12)
    parser.add_argument("--num_heads", type=int, default=12)
    parser.add_argument("--noise_dim", type=int, default=64)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="autocast dtype of the backbone (bfloat16 only on CUDA)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # 0/1: checkpointing
    args = parser.parse_args(argv)
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "noise_dim", "seq_len", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {args.device!r}")
    return args


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def worker(args) -> dict:
    import torch

    from modeling_dsl import DSLConfig, DSLForDiffusionLM
    from modeling_dsl.noise_dsl import SNRSampler

    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    config = DSLConfig(vocab_size=args.vocab_size, mask_token_id=args.vocab_size, hidden_size=args.hidden_size,
                       num_attention_heads=args.num_heads, num_hidden_layers=args.num_layers,
                       max_position_embeddings=max(args.seq_len, 128), noise_dim=args.noise_dim, dropout=0.0)
    torch.manual_seed(0)
    model = DSLForDiffusionLM(config).to(device).train()
    if args.worker:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sampler = SNRSampler.from_config(config)
    gen = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), generator=gen, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step():
        snr = sampler.sample(args.batch_size, args.seq_len, generator=gen, device=device)
        with autocast:
            loss = model(input_ids=ids, snr=snr, labels=ids, generator=gen).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    step()  # warm-up: AdamW state and allocator pools exist afterwards
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.time()
        loss = step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        trim()
        before = rss_bytes()
        start = time.time()
        loss = step()
        # ru_maxrss is the lifetime high-water mark (KiB on Linux); after trimming it is set by this step
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"gradient_checkpointing": bool(args.worker), "peak_step_bytes": int(peak),
            "step_seconds": round(time.time() - start, 2), "loss": round(loss, 4), "device": device.type}


def main(argv=None) -> list:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return []
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    passthrough = [f"--{k}={v}" for k, v in vars(args).items() if k != "worker"]
    results = []
    for gc in (0, 1):
        proc = subprocess.run([sys.executable, __file__, *passthrough, f"--worker={gc}"], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode != 0:
            raise RuntimeError(f"worker (gradient_checkpointing={bool(gc)}) failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.processor() or 'cpu'}, " \
                                                                        f"{os.cpu_count()} cores)"
    print(f"DSL training step, V={args.vocab_size}, D={args.hidden_size}, layers={args.num_layers}, "
          f"d={args.noise_dim}, B={args.batch_size}, L={args.seq_len}, {args.dtype}, on {where}")
    print(f"{'gradient checkpointing':>24} {'peak step memory (MiB)':>24} {'step (s)':>10} {'loss':>8}")
    for r in results:
        print(f"{str(r['gradient_checkpointing']):>24} {r['peak_step_bytes'] / 2**20:>24.1f} "
              f"{r['step_seconds']:>10.2f} {r['loss']:>8.4f}")
    saved = 1 - results[1]["peak_step_bytes"] / max(results[0]["peak_step_bytes"], 1)
    print(f"checkpointing saves {100 * saved:.0f}% of the step's peak memory; same loss: "
          f"{results[0]['loss'] == results[1]['loss']}")
    return results


if __name__ == "__main__":
    main()
