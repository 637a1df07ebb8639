#!/usr/bin/env python
"""Sampling speed of generate() against reference-style loops and against the bare network, one run.

One randomly initialised DSL model (a DiT with the GPT-2 vocabulary; width and depth from the
flags), one process, in this order:

1. The bare forward: hidden states and the LM head on all B·L positions for a random z (the
   cost of one network evaluation as a plain loop pays it), fastest of `--repeats + 1` calls.
2. Reference-style loops written here, as the original code does them, on the same model:
   * MDLM/ReMDM (`Diffusion._sample` with `ddpm_cache`, the ReMDM repository): every step the
     full-sequence logits, p_x0 over the whole (B, L, V), the posterior q over (B, L, V+1) cast to
     float64 and a Gumbel draw argmax(q / (1e-10 − log(U + 1e-10))) over all of it; the network
     runs again only when the draft changed; a final noise-removal argmax. Used for mdlm (σ = 0)
     and ReMDM-loop (σ = η in the loop phase: visible tokens kept with 1 − σ, remasked with σ).
   * LLaDA (`generate.py`): every step the full-sequence logits, float64 softmax over the whole
     (B, L, V) (and float64 Gumbel noise when the temperature is > 0), confidence of the drawn
     token, per-row top-k commit of the step's quota. Used for low_confidence.
   sde and hybrid have no reference-style loop of their own; their ratio column compares them
   with the MDLM-style loop at the same step budget.
3. Our samplers through `generate()` with every setting given explicitly (steps, strategy,
   remdm_mode="loop", η, top_p, temperature, block_length, ...), unconditional, B rows of L
   tokens, per-row seeds; the fastest of `--repeats` calls (the first call of a sampler also pays
   one-time costs: new GEMM shapes, first-touch memory).
4. With `--compile`: the masked samplers and sde called directly on `Denoiser.from_model(model)`
   and on `Denoiser.from_model(model, compile=True)`; same tokens checked, compile time reported
   apart (a first call), then both timed, fastest of `--repeats` calls each. Also timed: the calls
   that `compile=True` compiles (the trunk on the draft, the whole network for sde), eager and
   compiled, and their share of the eager run, whose complement bounds what compiling them can
   give (the speed-up if they took no time at all).

Times are the process's CPU time on a CPU device (`--clock auto`; run with `--threads 1`, see
`measure.timed`: on a shared machine the elapsed time mostly measures the other jobs) and wall-clock
time on CUDA.

Printed per sampler: NFE, seconds, samples/s, tokens/s, speed-up over its reference loop, and
time / (NFE × bare forward), the sampler's cost per network evaluation relative to one bare
forward (below 1: the sampler evaluates less than a full forward per step, e.g. the converter only
on changed positions and the LM head only on drawn rows).

    python benchmarks/bench_sampling.py                                    # small defaults, minutes on 2 cores
    python benchmarks/bench_sampling.py --threads 1 --batch_size 4 --seq_len 256 --steps 64 --samplers mdlm,remdm
    python benchmarks/bench_sampling.py --device cuda --dtype bfloat16 --hidden_size 768 --num_layers 12 \\
        --num_heads 12 --seq_len 1024 --steps 128 --batch_size 16
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import time

import measure

SAMPLERS = ("mdlm", "remdm", "sde", "hybrid", "low_confidence")
COMPILED = ("mdlm", "remdm", "sde", "low_confidence")
REFERENCE_OF = {"mdlm": "mdlm", "remdm": "remdm_loop", "sde": "mdlm", "hybrid": "mdlm",
                "low_confidence": "low_confidence"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    measure.add_model_flags(parser, hidden_size=128, num_layers=2, num_heads=2, seq_len=128, batch_size=4)
    parser.add_argument("--steps", type=int, default=16, help="step budget T of every sampler and reference loop")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help=f"comma-separated subset of {SAMPLERS}")
    parser.add_argument("--temperature", type=float, default=1.0, help="mdlm, remdm")
    parser.add_argument("--lc_temperature", type=float, default=0.0,
                        help="low_confidence and hybrid's low_confidence finish (LLaDA's default 0: argmax)")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus of mdlm/remdm and their reference "
                                                                 "(1 = none)")
    parser.add_argument("--eta", type=float, default=None, help="ReMDM-loop η; None: η_cap(T) of Eq. 24")
    parser.add_argument("--block_length", type=int, default=None, help="low_confidence block; None: one block")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls of each sampler (fastest reported); "
                                                                 "the reference loops run once")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd denoisers against eager")
    parser.add_argument("--compile_mode", default=None,
                        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                        help="torch.compile mode of --compile (None: torch's default); 'reduce-overhead' adds CUDA "
                             "graphs on a GPU")
    parser.add_argument("--no_reference", action="store_true", help="skip the reference-style loops")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast dtype")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    measure.add_clock_flag(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    measure.check_positive(args, ("vocab_size", "hidden_size", "num_layers", "num_heads", "noise_dim", "seq_len",
                                  "batch_size", "steps", "repeats"))
    args.sampler_list = [s.strip() for s in args.samplers.split(",") if s.strip()]
    unknown = sorted(set(args.sampler_list) - set(SAMPLERS))
    if unknown or not args.sampler_list:
        raise ValueError(f"--samplers must name some of {SAMPLERS}, got {args.samplers!r}")
    if not 0.0 < args.top_p <= 1.0:
        raise ValueError(f"--top_p must be in (0, 1], got {args.top_p}")
    block = args.block_length or args.seq_len
    if args.seq_len % block or args.steps % (args.seq_len // block):
        raise ValueError("--block_length must divide --seq_len and the number of blocks must divide --steps")
    if "hybrid" in args.sampler_list and args.steps < 2:
        raise ValueError("hybrid needs --steps >= 2")
    measure.resolve_clock(args.clock, measure.resolve_device(args.device))
    return args


def build_model(args, device):
    """The benchmark's DSL model; zero-initialised matrices (MDLM's adaLN and head) redrawn, so p_θ
    is not uniform."""
    import torch

    from modeling_dsl import DSLForDiffusionLM

    config = measure.dit_config(args)
    torch.manual_seed(args.seed)
    model = DSLForDiffusionLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not bool(p.any()):
                p.normal_(0.0, config.initializer_range)
    return model.to(device).eval()


# ----------------------------------------------------------------------------- reference-style loops


def full_logits(model, z):
    """The bare forward: (B, L, d) → fp32 logits on all B·L positions."""
    return model.logits_from_hidden(model.hidden_states(z))


def draft_z(model, x, snr):
    vocab = model.config.vocab_size
    visible = (x != model.config.mask_token_id).unsqueeze(-1)
    return model.noise_embeddings()[x.clamp(max=vocab - 1)] * visible * snr


def sample_categorical(q, generator):
    """ReMDM's fp64 Gumbel draw over the whole tensor: argmax(q / (1e-10 − log(U + 1e-10)))."""
    import torch

    u = torch.rand(q.shape, generator=generator, dtype=torch.float64, device=q.device)
    gumbel_norm = 1e-10 - (u + 1e-10).log()
    return (q / gumbel_norm).argmax(dim=-1)


def reference_masked(model, args, mode, eta, generator):
    """MDLM (σ = 0) or ReMDM-loop, `ddpm_cache` style; returns (tokens, NFE)."""
    import torch

    from modeling_dsl.sampling_dsl import _remdm_row_rates, top_p_filter  # our samplers' own schedule

    batch, length = args.batch_size, args.seq_len
    mask_id, snr, eps = model.config.mask_token_id, float(model.config.snr_max), 1e-5
    device = next(model.parameters()).device
    x = torch.full((batch, length), mask_id, dtype=torch.long, device=device)
    timesteps = torch.linspace(1, eps, args.steps + 1, dtype=torch.float64)[:-1]
    dt = torch.tensor((1 - eps) / args.steps, dtype=torch.float64)
    sigmas, unmasks = _remdm_row_rates(mode, timesteps, dt, eta, 0.55, 0.05, 0.9)
    p_x0, nfe = None, 0
    for i in range(args.steps):
        sigma, unmask = float(sigmas[i]), float(unmasks[i])  # the mask keeps 1 − unmask
        if p_x0 is None:
            p_x0 = torch.softmax(full_logits(model, draft_z(model, x, snr)), dim=-1)  # (B, L, V)
            nfe += 1
            if args.top_p < 1.0:
                p_x0 = top_p_filter(p_x0, args.top_p)
        masked = (x == mask_id).unsqueeze(-1)
        mask_col = torch.full((batch, length, 1), 1 - unmask, device=device)
        q = torch.cat([p_x0 * unmask, mask_col], dim=-1).double()  # (B, L, V+1)
        if sigma > 0:  # ReMDM: a visible token is kept with 1 − σ and remasked with σ
            q_visible = torch.zeros_like(q).scatter_(-1, x.unsqueeze(-1), 1 - sigma)
            q_visible[..., mask_id] = sigma
            q = torch.where(masked, q, q_visible)
        x_new = sample_categorical(q, generator)
        if sigma == 0:
            x_new = torch.where(masked.squeeze(-1), x_new, x)  # MDLM's copy flag
        if not torch.equal(x_new, x):
            p_x0 = None
        x = x_new
        del q
    still = x == mask_id
    if bool(still.any()):  # noise removal
        x = torch.where(still, full_logits(model, draft_z(model, x, snr)).argmax(dim=-1), x)
        nfe += 1
    return x, nfe


def reference_low_confidence(model, args, generator):
    """LLaDA's generate(): full logits, float64 softmax over (B, L, V), per-row top-k commits."""
    import torch

    from modeling_dsl.sampling_dsl import transfer_schedule

    batch, length = args.batch_size, args.seq_len
    mask_id, snr = model.config.mask_token_id, float(model.config.snr_max)
    device = next(model.parameters()).device
    block = args.block_length or length
    steps_per_block = args.steps // (length // block)
    x = torch.full((batch, length), mask_id, dtype=torch.long, device=device)
    nfe = 0
    for b in range(length // block):
        lo, hi = b * block, (b + 1) * block
        quota = transfer_schedule((x[:, lo:hi] == mask_id).sum(dim=1), steps_per_block)
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = full_logits(model, draft_z(model, x, snr))
            nfe += 1
            if args.lc_temperature > 0:
                logits64 = logits.double()
                noise = torch.rand(logits64.shape, generator=generator, dtype=torch.float64, device=device)
                x0 = (logits64.exp() / (-noise.log()) ** args.lc_temperature).argmax(dim=-1)
            else:
                x0 = logits.argmax(dim=-1)
            p = torch.softmax(logits.double(), dim=-1)
            x0_p = p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, hi:] = -float("inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.full_like(x0_p, -float("inf")))
            transfer = torch.zeros_like(x, dtype=torch.bool)
            for j in range(batch):
                _, picked = torch.topk(confidence[j], k=int(quota[j, i]))
                transfer[j, picked] = True
            x[transfer] = x0[transfer]
    return x, nfe


# ----------------------------------------------------------------------------- our samplers


def generate_kwargs(name, args, snr_max, eta):
    common = dict(strategy=name, steps=args.steps, gen_length=args.seq_len, num_return_sequences=args.batch_size,
                  seed=args.seed, visible_snr=snr_max, truncate_at_eos=False, output_diagnostics=False)
    masked = dict(temperature=args.temperature, top_p=args.top_p, top_k=None)
    block = dict(block_length=args.block_length or args.seq_len, temperature=args.lc_temperature,
                 remasking="low_confidence", cfg_scale=0.0, top_p=None, top_k=None, stop_at_eos=False)
    sde = dict(integrator="euler", snr_schedule="geometric", snr_min=0.01, snr_max=snr_max, noise_scale=1.0,
               posterior_top_k=None)
    by_name = {
        "mdlm": masked,
        "remdm": dict(masked, remdm_mode="loop", eta=eta, t_on=0.55, t_off=0.05, alpha_on=0.9),
        "sde": sde,
        "hybrid": dict(sde, **block, switch_snr=snr_max, switch_steps=max(1, args.steps // 4),
                       hybrid_finish="low_confidence", hybrid_threshold=0.9),
        "low_confidence": block,
    }
    return {**common, **by_name[name]}


def direct_call(name, den, args, snr_max, eta, device):
    """The sampler function itself on `den` (for compiled vs eager), unconditional rows."""
    import torch

    import modeling_dsl.sampling_dsl as S
    from modeling_dsl.noise_dsl import snr_schedule

    tokens = torch.full((args.batch_size, args.seq_len), den.mask_token_id, dtype=torch.long, device=device)
    generate_mask = torch.ones_like(tokens, dtype=torch.bool)
    gens = [torch.Generator(device=device).manual_seed(args.seed + r) for r in range(args.batch_size)]
    draw = dict(temperature=args.temperature, top_p=args.top_p)
    if name == "mdlm":
        return S.mdlm(den, tokens, generate_mask, steps=args.steps, generator=gens, **draw)
    if name == "remdm":
        return S.remdm(den, tokens, generate_mask, steps=args.steps, mode="loop", eta=eta, generator=gens, **draw)
    if name == "sde":
        path = snr_schedule("geometric", args.steps, 0.01, snr_max)
        return S.sde(den, tokens, generate_mask, path, integrator="euler", generator=gens)
    return S.low_confidence(den, tokens, generate_mask, steps=args.steps, block_length=args.block_length,
                            temperature=args.lc_temperature, generator=gens)


def compiled_parts_timed(den, device, clock: str):
    """`den` with its fixed-shape calls (`trunk_fn`, `features_fn`: what `compiled()` compiles) timed
    into a list of seconds, so the benchmark can report what share of a run compilation can touch."""
    import torch

    now = time.process_time if clock == "cpu" else time.perf_counter
    spent = []

    def timing(fn):
        def run(*a, **k):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = now()
            out = fn(*a, **k)
            if device.type == "cuda":
                torch.cuda.synchronize()
            spent.append(now() - start)
            return out

        return run

    den.features_fn = timing(den.features_fn)
    if den.trunk_fn is not None:
        den.trunk_fn = timing(den.trunk_fn)
    return den, spent


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from modeling_dsl.sampling_dsl import Denoiser, eta_cap_default

    if args.threads:
        torch.set_num_threads(args.threads)
    device = measure.resolve_device(args.device)
    clock = measure.resolve_clock(args.clock, device)
    timed = functools.partial(measure.timed, clock=clock)
    model = build_model(args, device)
    snr_max = float(model.config.snr_max)
    eta = args.eta if args.eta is not None else eta_cap_default(args.steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16" else contextlib.nullcontext()
    batch, length = args.batch_size, args.seq_len
    print(f"Sampling, DSL DiT D={args.hidden_size}, layers={args.num_layers}, heads={args.num_heads}, "
          f"V={args.vocab_size}, d={args.noise_dim}; B={batch}, L={length}, T={args.steps}, {args.dtype}, "
          f"on {measure.describe_device(device)}, {time.strftime('%Y-%m-%d %H:%M')}, {measure.load_average()}; "
          f"times are {'CPU' if clock == 'cpu' else 'wall-clock'} seconds", flush=True)
    results = {"args": {k: v for k, v in vars(args).items() if k != "sampler_list"}, "clock": clock, "samplers": {},
               "references": {}, "compiled": {}}

    with torch.no_grad(), autocast:
        z = torch.randn(batch, length, args.noise_dim, generator=torch.Generator().manual_seed(1)).to(device) * 3
        times, _ = timed(lambda: full_logits(model, z), device, args.repeats + 1)
        bare = min(times)
        results["bare_forward_seconds"] = bare
        print(f"bare forward (converter + blocks + LM head on {batch * length} positions): {bare:.3f} s "
              f"(fastest of {[round(t, 3) for t in times]})", flush=True)

        needed = sorted({REFERENCE_OF[name] for name in args.sampler_list}) if not args.no_reference else []
        for ref in needed:
            gen = torch.Generator(device=device).manual_seed(args.seed)
            if ref == "low_confidence":
                fn = lambda: reference_low_confidence(model, args, gen)  # noqa: E731
            else:
                fn = lambda: reference_masked(model, args, "loop" if ref == "remdm_loop" else "mdlm", eta, gen)  # noqa: E731
            (seconds,), (_, nfe) = timed(fn, device)
            results["references"][ref] = {"seconds": seconds, "nfe": nfe}
            print(f"reference-style {ref}: {seconds:.2f} s, NFE {nfe}", flush=True)

        for name in args.sampler_list:
            kwargs = generate_kwargs(name, args, snr_max, eta)
            times, out = timed(lambda: model.generate(return_dict_in_generate=True, **kwargs), device,
                                       args.repeats)
            seconds = min(times)
            ref = results["references"].get(REFERENCE_OF[name])
            row = {"seconds": seconds, "nfe": out.nfe, "samples_per_second": batch / seconds,
                   "tokens_per_second": batch * length / seconds,
                   "speedup_vs_reference": None if ref is None else ref["seconds"] / seconds,
                   "reference": REFERENCE_OF[name], "time_per_nfe_over_bare_forward": seconds / (out.nfe * bare)}
            results["samplers"][name] = row
            print(f"generate {name}: {seconds:.2f} s (of {[round(t, 2) for t in times]}), NFE {out.nfe}", flush=True)

        if args.compile:
            for name in [n for n in args.sampler_list if n in COMPILED]:
                eager, eager_parts = compiled_parts_timed(Denoiser.from_model(model, visible_snr=snr_max), device,
                                                          clock)
                mode = {} if args.compile_mode is None else {"mode": args.compile_mode}
                compiled, compiled_parts = compiled_parts_timed(
                    Denoiser.from_model(model, visible_snr=snr_max).compiled(**mode), device, clock)
                eager_times, a = timed(lambda: direct_call(name, eager, args, snr_max, eta, device), device,
                                               args.repeats)
                (t_first,), b = timed(lambda: direct_call(name, compiled, args, snr_max, eta, device), device)
                compiled_parts.clear()  # the first call's compile time is not the compiled parts' run time
                comp_times, c = timed(lambda: direct_call(name, compiled, args, snr_max, eta, device), device,
                                              args.repeats)
                t_eager, t_comp = min(eager_times), min(comp_times)
                parts_eager = sum(eager_parts) / args.repeats  # per call (the parts' time of each call)
                parts_comp = sum(compiled_parts) / args.repeats
                same = torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens, c.tokens)
                share = parts_eager / t_eager
                results["compiled"][name] = {"eager_seconds": t_eager, "first_call_seconds": t_first,
                                             "compiled_seconds": t_comp, "speedup": t_eager / t_comp,
                                             "same_tokens": same, "compiled_parts_eager_seconds": parts_eager,
                                             "compiled_parts_compiled_seconds": parts_comp,
                                             "compiled_parts_share": share,
                                             "speedup_ceiling": 1 / max(1 - share, 1e-9)}
                print(f"compiled {name}: eager {t_eager:.2f} s, first compiled call {t_first:.1f} s, compiled "
                      f"{t_comp:.2f} s, same tokens {same}; the compiled calls (trunk / whole network) take "
                      f"{parts_eager:.2f} s eager ({100 * share:.0f} % of the run) and {parts_comp:.2f} s compiled",
                      flush=True)
                torch._dynamo.reset()

    print(f"\nfinished {time.strftime('%H:%M')}, {measure.load_average()}")
    print(f"{'sampler':>15} {'NFE':>4} {'time (s)':>9} {'samples/s':>10} {'tokens/s':>9} {'reference':>15} "
          f"{'ref (s)':>8} {'speed-up':>9} {'time/(NFE·fwd)':>15}")
    for name, row in results["samplers"].items():
        ref = results["references"].get(row["reference"])
        speedup = "—" if row["speedup_vs_reference"] is None else f"{row['speedup_vs_reference']:.2f}x"
        print(f"{name:>15} {row['nfe']:>4} {row['seconds']:>9.2f} {row['samples_per_second']:>10.3f} "
              f"{row['tokens_per_second']:>9.1f} {row['reference']:>15} "
              f"{'—' if ref is None else format(ref['seconds'], '.2f'):>8} {speedup:>9} "
              f"{row['time_per_nfe_over_bare_forward']:>15.3f}")
    for name, row in results["compiled"].items():
        print(f"compiled {name}: {row['speedup']:.2f}x eager ({row['eager_seconds']:.2f} s → "
              f"{row['compiled_seconds']:.2f} s; first call {row['first_call_seconds']:.1f} s), same tokens: "
              f"{row['same_tokens']}; compiled calls {row['compiled_parts_eager_seconds']:.2f} s → "
              f"{row['compiled_parts_compiled_seconds']:.2f} s, {100 * row['compiled_parts_share']:.0f} % of the eager "
              f"run (ceiling if they took no time: {row['speedup_ceiling']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
