#!/usr/bin/env python
"""Training step of DSL against the same DiT trained as MDLM publishes it: tokens/s, memory, FLOPs, MFU.

Two objectives on the same data (one random batch of token ids), each in a fresh subprocess:

* dsl: `DSLForDiffusionLM` as `DSLTrainer` trains it (Algorithm 1: per-token SNRs, spherical
  embeddings, softmax converter, DiT, token CE over every position).
* mdlm: the same `MDLMDiT` module (same config, same output layer) fed by a plain
  `nn.Embedding(V + 1, D)` table with the mask row, no converter, trained with MDLM's objective:
  t ~ U(eps, 1) per row (antithetic), each token masked with probability (1 − eps)·t
  (`noise_dsl.mdlm_masking`, as `DSLTrainer(objective="mdlm")`), logits on every
  position, CE at the masked positions weighted 1/t (the log-linear schedule's SUBS weight), mean
  over all tokens. Our `objective="mdlm"` runs through the converter, so it cannot show the
  converter's cost; this baseline does. `--mdlm_loss full_logits` (default) computes that CE as
  MDLM's code does, from the (B, L, V) logits; `--mdlm_loss chunked` with the chunked LM head + CE
  the DSL step uses (`HeadCrossEntropy`), so the ratio isolates the converter.

Peak memory: per objective a fresh process runs a warm-up step and one measured step
(`benchmarks/measure.py`). Time: one more process builds both models and, after a warm-up step
of each, alternates their steps `--steps` times (DSL, MDLM, DSL, …), so a change of machine load
during the run affects both alike; the median step time is reported (on a CPU device the
process's CPU time, `--clock`, see `measure.timed`). FLOPs per step are counted from the shapes
(matmuls only, training = forward + 2× forward for backward): the DiT blocks (QKV, output,
MLP, attention scores and values), the LM head on every position, and for DSL the converter: the
(V+1)×d slot logits, the (V+1)×D projection, and the slot logits once more in backward (the
recomputation of π). MFU = FLOPs / time / peak; the peak is `--peak_tflops` or, on a known GPU,
its dense bf16 (or TF32 for fp32) figure.

    python benchmarks/bench_training.py                                    # DiT-170M shape, V=50257, L=256, B=4
    python benchmarks/bench_training.py --device cuda --dtype bfloat16 --seq_len 1024 --batch_size 32
"""

from __future__ import annotations

import argparse
import functools
import statistics

import measure

OBJECTIVES = ("dsl", "mdlm")
MDLM_LOSSES = ("full_logits", "chunked")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    measure.add_model_flags(parser)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per objective (after warm-up and the "
                                                              "memory step)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="autocast dtype (the converter's softmax stays fp32)")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--mdlm_loss", default="full_logits", choices=MDLM_LOSSES,
                        help="the baseline's CE: from full logits as MDLM's code, or the chunked head + CE as DSL's")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the device's dense peak TFLOP/s for MFU (known GPUs: looked up)")
    measure.add_optimizer_flag(parser)
    measure.add_clock_flag(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of every worker (default: torch's)")
    parser.add_argument("--worker", default=None, choices=OBJECTIVES + ("timing",), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    measure.check_positive(args, ("vocab_size", "hidden_size", "num_layers", "num_heads", "noise_dim", "seq_len",
                                  "batch_size", "steps"))
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise ValueError(f"--peak_tflops must be > 0, got {args.peak_tflops}")
    measure.resolve_clock(args.clock, measure.resolve_device(args.device))
    return args


def step_flops(args, objective: str) -> dict:
    """Matmul FLOPs of one training step by part (forward ×3 for forward + backward)."""
    tokens = args.batch_size * args.seq_len
    d_model, vocab, layers = args.hidden_size, args.vocab_size, args.num_layers
    mlp_ratio = 4
    per_token_block = 2 * (3 + 1 + 2 * mlp_ratio) * d_model**2 + 2 * 2 * args.seq_len * d_model
    parts = {"blocks": 3 * layers * per_token_block * tokens, "lm_head": 3 * 2 * d_model * vocab * tokens}
    if objective == "dsl":
        slot_logits = 2 * (vocab + 1) * args.noise_dim * tokens
        parts["converter"] = 3 * (slot_logits + 2 * (vocab + 1) * d_model * tokens) + slot_logits
    return parts


def build_mdlm_baseline(config):
    """MDLM as published: an embedding table with the mask row in front of the same DiT."""
    import torch
    from torch import nn

    from modeling_dsl.backbone_mdlm import MDLMDiT

    class MDLMBaseline(nn.Module):
        def __init__(self):
            super().__init__()
            self.vocab_embed = nn.Embedding(config.vocab_size + 1, config.hidden_size)
            self.backbone = MDLMDiT(config)

        def forward(self, noisy_ids):
            return self.backbone(self.vocab_embed(noisy_ids))  # hidden states (B, L, D)

    model = MDLMBaseline()
    with torch.no_grad():  # the DSL model's init (MDLM's: adaLN and the final linear start at zero)
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                zero = getattr(module, "zero_init", False)
                module.weight.zero_() if zero else module.weight.normal_(0.0, config.initializer_range)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    return model


def mdlm_step(model, optimizer, ids, generator, autocast, mask_id: int, eps: float = 1e-3, loss="full_logits"):
    import torch
    import torch.nn.functional as F

    from modeling_dsl.modeling_dsl import DSLForDiffusionLM, HeadCrossEntropy
    from modeling_dsl.noise_dsl import mdlm_masking

    batch, length = ids.shape
    head = model.backbone.get_output_embeddings()
    chunk_rows = max(1, DSLForDiffusionLM.head_chunk_elements // head.weight.shape[0])

    def weighted_ce(hidden, weights):
        """Σ_n weights_n CE_n / (B·L) of the LM head on hidden (B, L, D)."""
        if loss == "chunked":
            features = model.backbone.head_features(hidden).reshape(batch * length, -1)
            divisor = torch.tensor(float(batch * length), device=ids.device)
            return HeadCrossEntropy.apply(features, head.weight, head.bias, ids.reshape(-1), weights.reshape(-1),
                                          divisor, chunk_rows, True)[0]
        logits = model.backbone.logits(hidden)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids.reshape(-1), reduction="none")
        return (nll.view(batch, length) * weights).sum() / (batch * length)

    def step():
        t, masked = mdlm_masking(batch, length, generator, ids.device, eps)  # what DSLTrainer's "mdlm" uses
        noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
        with autocast:
            hidden = model(noisy)
        value = weighted_ce(hidden, masked / t[:, None])
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value.detach().item()

    return step


def build_step(args, objective: str, device):
    """(model, step callable) of one objective on the benchmark's fixed batch."""
    import torch

    from modeling_dsl import DSLForDiffusionLM
    from modeling_dsl.noise_dsl import SNRSampler

    config = measure.dit_config(args)
    torch.manual_seed(0)
    gen = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), generator=gen, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    if objective == "dsl":
        model = DSLForDiffusionLM(config).to(device).train()
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model, measure.dsl_training_step(model, measure.adamw(model, args.optim), ids,
                                                SNRSampler.from_config(config), gen, autocast)
    model = build_mdlm_baseline(config).to(device).train()
    if args.gradient_checkpointing:  # what gradient_checkpointing_enable sets on each DiT block
        for block in model.backbone.blocks:
            block.gradient_checkpointing = True
            block._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint,
                                                                   use_reentrant=False)
    return model, mdlm_step(model, measure.adamw(model, args.optim), ids, gen, autocast, config.vocab_size,
                            loss=args.mdlm_loss)


def worker(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = measure.resolve_device(args.device)
    if args.worker == "timing":
        steps = {name: build_step(args, name, device)[1] for name in OBJECTIVES}
        for step in steps.values():
            step()  # warm-up
        times = {name: [] for name in OBJECTIVES}
        for _ in range(args.steps):
            for name, step in steps.items():
                (seconds,), _ = measure.timed(step, device, clock=measure.resolve_clock(args.clock, device))
                times[name].append(seconds)
        return {name: [round(t, 3) for t in values] for name, values in times.items()}
    model, step = build_step(args, args.worker, device)
    step()  # warm-up
    peak, _, loss = measure.peak_step_memory(step, device)
    return {"objective": args.worker, "peak_step_bytes": int(peak), "loss": round(loss, 4),
            "parameters": sum(p.numel() for p in model.parameters())}


def main(argv=None) -> list:
    args = parse_args(argv)
    device = measure.worker_or_device(args, worker)
    if device is None:
        return []
    flags = [a for a in measure.passthrough(args, skip=("worker", "gradient_checkpointing", "peak_tflops"))]
    if args.gradient_checkpointing:
        flags.append("--gradient_checkpointing")
    start_load = measure.load_average()
    results = [measure.run_worker(__file__, [*flags, f"--worker={name}"], name) for name in OBJECTIVES]
    timing = measure.run_worker(__file__, [*flags, "--worker=timing"], "timing")
    for r in results:
        r["all_step_seconds"] = timing[r["objective"]]
        r["step_seconds"] = statistics.median(timing[r["objective"]])
    peak = args.peak_tflops or measure.known_peak_tflops(device, args.dtype)
    tokens = args.batch_size * args.seq_len
    print(f"Training step, DiT D={args.hidden_size}, layers={args.num_layers}, V={args.vocab_size}, "
          f"d={args.noise_dim}, B={args.batch_size}, L={args.seq_len}, {args.dtype}, {args.optim}, "
          f"checkpointing={args.gradient_checkpointing}, MDLM loss {args.mdlm_loss}, on {measure.describe_device(device)}"
          f"{'' if args.threads is None else f' ({args.threads} torch threads)'}; {start_load} at the start, "
          f"{measure.load_average()} at the end; step times in "
          f"{'CPU' if measure.resolve_clock(args.clock, device) == 'cpu' else 'wall-clock'} seconds")
    header = f"{'objective':>10} {'params (M)':>10} {'step (s)':>9} {'tokens/s':>9} {'peak MiB':>9} {'GFLOP/step':>11} " \
             f"{'converter':>10} {'TFLOP/s':>8} {'MFU':>6} {'loss':>8}"
    print(header)
    for r in results:
        parts = step_flops(args, r["objective"])
        flops = sum(parts.values())
        rate = flops / r["step_seconds"]
        r.update(tokens_per_second=tokens / r["step_seconds"], flops=flops, flops_by_part=parts, tflops=rate / 1e12,
                 mfu=None if peak is None else rate / (peak * 1e12))
        mfu = "—" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"{r['objective']:>10} {r['parameters'] / 1e6:>10.1f} {r['step_seconds']:>9.2f} "
              f"{r['tokens_per_second']:>9.0f} {r['peak_step_bytes'] / 2**20:>9.1f} {flops / 1e9:>11.1f} "
              f"{100 * parts.get('converter', 0) / flops:>9.1f}% {r['tflops']:>8.3f} {mfu:>6} {r['loss']:>8.4f}")
    dsl, mdlm = results
    print(f"DSL / MDLM: step time {dsl['step_seconds'] / mdlm['step_seconds']:.2f}x, FLOPs "
          f"{dsl['flops'] / mdlm['flops']:.2f}x, peak memory {dsl['peak_step_bytes'] / max(mdlm['peak_step_bytes'], 1):.2f}x"
          + ("" if peak is not None else "; MFU needs --peak_tflops on this device"))
    return results


if __name__ == "__main__":
    main()
