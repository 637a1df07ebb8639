#!/usr/bin/env python
"""Peak memory of one DSL training step with and without gradient checkpointing.

Each setting runs in a fresh subprocess, so one measurement cannot inherit the other's allocator
state. A step is Algorithm 1 as `DSLTrainer` runs it: per-token SNRs from the config's sampler,
forward with `snr=`, token CE, backward, AdamW step (fused, `Trainer`'s default optimiser). The
memory measure (CUDA allocator peak; on CPU the resident-set peak of the step with glibc's mmap
threshold fixed) is described in `benchmarks/measure.py`.

    python benchmarks/bench_grad_checkpointing.py                       # DiT-170M shape, L=256, B=4
    python benchmarks/bench_grad_checkpointing.py --seq_len 1024 --batch_size 8 --device cuda
"""

from __future__ import annotations

import argparse

import measure


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    measure.add_model_flags(parser)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="autocast dtype of the backbone (bfloat16 only on CUDA)")
    measure.add_optimizer_flag(parser)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # 0/1: checkpointing
    args = parser.parse_args(argv)
    measure.check_positive(args, ("vocab_size", "hidden_size", "num_layers", "num_heads", "noise_dim", "seq_len",
                                  "batch_size"))
    measure.resolve_device(args.device)
    return args


def worker(args) -> dict:
    import torch

    from modeling_dsl import DSLForDiffusionLM
    from modeling_dsl.noise_dsl import SNRSampler

    device = measure.resolve_device(args.device)
    config = measure.dit_config(args)
    torch.manual_seed(0)
    model = DSLForDiffusionLM(config).to(device).train()
    if args.worker:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    gen = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), generator=gen, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    step = measure.dsl_training_step(model, measure.adamw(model, args.optim), ids, SNRSampler.from_config(config),
                                     gen, autocast)
    step()  # warm-up: AdamW state and allocator pools exist afterwards
    peak, seconds, loss = measure.peak_step_memory(step, device)
    return {"gradient_checkpointing": bool(args.worker), "peak_step_bytes": int(peak),
            "step_seconds": round(seconds, 2), "loss": round(loss, 4), "device": device.type}


def main(argv=None) -> list:
    args = parse_args(argv)
    device = measure.worker_or_device(args, worker)
    if device is None:
        return []
    results = [measure.run_worker(__file__, [*measure.passthrough(args), f"--worker={gc}"],
                                  f"gradient_checkpointing={bool(gc)}") for gc in (0, 1)]
    print(f"DSL training step, V={args.vocab_size}, D={args.hidden_size}, layers={args.num_layers}, "
          f"d={args.noise_dim}, B={args.batch_size}, L={args.seq_len}, {args.dtype}, {args.optim}, "
          f"on {measure.describe_device(device)}")
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
