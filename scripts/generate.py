#!/usr/bin/env python
"""Generate text from a DSL checkpoint directory with any sampler.

Loads the model with `AutoModel.from_pretrained(dir, trust_remote_code=True)` (the code shipped
next to the weights, so this package need not be installed) and the tokenizer from the same
directory. Examples:

    python scripts/generate.py ckpt --strategy remdm --steps 256 --gen-length 256 --num-samples 4
    python scripts/generate.py ckpt --strategy low_confidence --steps 64 --block-length 32 \\
        --prompt "The capital of France is" --plot-diagnostics traces.png
    python scripts/generate.py ckpt --strategy correct --prompt "Teh cat sat on the mat ."

Unset options keep the checkpoint's `generation_config.json` values.
"""

import argparse
import json
import sys

import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="model directory (config.json, weights, tokenizer, remote code)")
    parser.add_argument("--strategy", choices=["sde", "mdlm", "remdm", "hybrid", "low_confidence", "roar", "correct"])
    parser.add_argument("--steps", type=int, help="sampling steps T")
    parser.add_argument("--gen-length", type=int, help="tokens to generate per sample")
    parser.add_argument("--block-length", type=int,
                        help="block size of low_confidence (and of hybrid's low_confidence finish)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", action="append", help="a prompt (repeat for several); none = unconditional")
    source.add_argument("--prompts-file", help="text file with one prompt per line")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt (or unconditional samples)")
    parser.add_argument("--seed", type=int, default=0, help="row r uses seed + r")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--remdm-mode", choices=["cap", "rescale", "conf", "loop"])
    parser.add_argument("--eta", type=float)
    parser.add_argument("--integrator", choices=["euler", "heun"])
    parser.add_argument("--snr-schedule", choices=["geometric", "linear", "sensitive"])
    parser.add_argument("--noise-scale", type=float)
    parser.add_argument("--posterior-top-k", type=int, help="SDE: x̂ from the k most likely tokens")
    parser.add_argument("--switch-snr", type=float, help="hybrid: SNR where the SDE hands over")
    parser.add_argument("--switch-steps", type=int, help="hybrid: SDE integration steps (default steps // 4)")
    parser.add_argument("--hybrid-finish", choices=["low_confidence", "remdm"])
    parser.add_argument("--hybrid-threshold", type=float, help="hybrid: keep draft tokens with p > this")
    parser.add_argument("--remasking", choices=["low_confidence", "random"])
    parser.add_argument("--cfg-scale", type=float, help="low_confidence classifier-free guidance w")
    parser.add_argument("--stop-at-eos", action="store_true",
                        help="low_confidence / hybrid with a low_confidence finish: stop once every row has an EOS")
    parser.add_argument("--keep-after-eos", action="store_true",
                        help="do not cut the text after the first EOS (default: cut with the tokenizer's EOS when "
                             "the checkpoint sets none)")
    parser.add_argument("--add-special-tokens", action="store_true", help="let the tokenizer add BOS/EOS to prompts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per generate() call")
    parser.add_argument("--plot-diagnostics", metavar="OUT.png", help="draw u_t, H_t, k_t, r_t, Δ_t traces")
    parser.add_argument("--output", metavar="OUT.jsonl", help="also write {prompt, text} lines here")
    parser.add_argument("--progress", action="store_true", help="show a progress bar over steps")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error("--num-samples must be >= 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    return args


def overrides(args) -> dict:
    """generate() keyword arguments for the options that were given."""
    mapping = {
        "strategy": args.strategy, "steps": args.steps, "gen_length": args.gen_length,
        "block_length": args.block_length, "temperature": args.temperature, "top_p": args.top_p,
        "top_k": args.top_k, "remdm_mode": args.remdm_mode, "eta": args.eta, "integrator": args.integrator,
        "snr_schedule": args.snr_schedule, "noise_scale": args.noise_scale, "switch_snr": args.switch_snr,
        "hybrid_finish": args.hybrid_finish, "posterior_top_k": args.posterior_top_k,
        "switch_steps": args.switch_steps, "hybrid_threshold": args.hybrid_threshold, "remasking": args.remasking,
        "cfg_scale": args.cfg_scale, "stop_at_eos": True if args.stop_at_eos else None,
    }
    return {k: v for k, v in mapping.items() if v is not None}


def plot_diagnostics(traces, path: str) -> None:
    """Fig. 2-style traces: mean over samples of each per-step diagnostic, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [("u_t", "uncertainty u_t"), ("H_t", "entropy H_t (nats)"), ("k_t", "nucleus size k_t"),
             ("r_t", "remask ratio r_t"), ("delta_t", "change rate Δ_t")]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.2))
    for ax, (key, title) in zip(axes, names):
        values = torch.cat([t[key] for t in traces], dim=1).float()  # (steps, samples)
        mean = torch.nanmean(values, dim=1)
        ax.plot(range(1, len(mean) + 1), mean.numpy())
        ax.set_title(title)
        ax.set_xlabel("step")
    rewrites = torch.cat([t["rewrites"].flatten() for t in traces]).float()
    axes[-1].hist(rewrites.numpy(), bins=max(1, int(rewrites.max().item()) + 1))
    axes[-1].set_title("rewrites per token")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    if tokenizer.pad_token is None:  # GPT-2 has none; generate() only reads the attention mask
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(args.checkpoint, trust_remote_code=True,
                                      dtype=getattr(torch, args.dtype)).to(args.device).eval()
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
    else:
        prompts = args.prompt or [None]
    kwargs = overrides(args)
    has_eos = (model.generation_config.eos_token_id is not None
               or getattr(model.config, "eos_token_id", None) is not None)
    if not args.keep_after_eos and not has_eos and tokenizer.eos_token_id is not None:
        # Cut each sample after its first EOS (an unprompted sample's leading BOS = EOS is kept).
        kwargs["eos_token_id"] = tokenizer.eos_token_id
    if args.plot_diagnostics:
        kwargs["output_diagnostics"] = True
    jobs = [(p, s) for p in prompts for s in range(args.num_samples)]
    traces, records, row = [], [], 0
    for start in range(0, len(jobs), args.batch_size):
        chunk = jobs[start : start + args.batch_size]
        seeds = [args.seed + row + i for i in range(len(chunk))]
        row += len(chunk)
        if chunk[0][0] is None:
            out = model.generate(num_return_sequences=len(chunk), seed=seeds, return_dict_in_generate=True,
                                 progress_bar=args.progress, **kwargs)
            prompt_len = 0
        else:
            encoded = tokenizer([p for p, _ in chunk], add_special_tokens=args.add_special_tokens,
                                return_tensors="pt", padding=True)
            out = model.generate(encoded["input_ids"].to(args.device), encoded["attention_mask"].to(args.device),
                                 seed=seeds, return_dict_in_generate=True, progress_bar=args.progress, **kwargs)
            prompt_len = encoded["input_ids"].shape[1]
        if out.diagnostics:
            traces.append({k: v.cpu() for k, v in out.diagnostics.items()})
        correcting = kwargs.get("strategy", model.generation_config.strategy) == "correct"
        for (prompt, _), seq, mask in zip(chunk, out.sequences, out.attention_mask):
            ids = seq[mask.bool()] if correcting else seq[prompt_len:]
            text = tokenizer.decode(ids.tolist(), skip_special_tokens=True)
            records.append({"prompt": prompt, "text": text})
            header = "" if prompt is None else f"[prompt] {prompt}\n"
            print(f"{header}{text}\n{'-' * 40}")
        print(f"(NFE per batch: {out.nfe})", file=sys.stderr)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
    if args.plot_diagnostics:
        plot_diagnostics(traces, args.plot_diagnostics)
        print(f"diagnostics plot written to {args.plot_diagnostics}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
