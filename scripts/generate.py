#!/usr/bin/env python
"""Generate text from a DSL checkpoint directory with any sampler.

Loads the model with `AutoModel.from_pretrained(dir, trust_remote_code=True)` (the code shipped
next to the weights) and the tokenizer from the same directory. Examples:

    python scripts/generate.py ckpt --strategy remdm --steps 256 --gen-length 256 --num-samples 4
    python scripts/generate.py ckpt --strategy low_confidence --steps 64 --block-length 32 \\
        --prompt "The capital of France is" --plot-diagnostics traces.png
    python scripts/generate.py ckpt --strategy correct --prompt "Teh cat sat on the mat ."

Every generation-config field has a flag (generated from `modeling_dsl.generation_dsl.FIELDS`;
`none` sets an optional field to None); unset flags keep the checkpoint's
`generation_config.json` values. Nothing is cut after an EOS unless `--truncate-at-eos`; the text
is decoded with special tokens removed unless `--no-skip-special-tokens` (as DSL-LLaDA decodes).
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain clone without installing

import torch  # noqa: E402

from modeling_dsl.generation_dsl import FIELDS, DSLGenerationConfig, field_help  # noqa: E402
from scripts.cli_checks import check_output_file, check_source, describe_missing  # noqa: E402

# Fields this script sets through its own options: --seed (row r of the run uses seed + r) and
# --plot-diagnostics (turns output_diagnostics on).
SCRIPT_FIELDS = ("seed", "output_diagnostics")


def field_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_field_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per generation field, grouped as in FIELDS; a flag that is not given is absent
    from the parsed namespace (so the checkpoint's value stands)."""
    groups = {}
    for name, f in FIELDS.items():
        if name in SCRIPT_FIELDS:
            continue
        if f.group not in groups:
            groups[f.group] = parser.add_argument_group(f"generation: {f.group}")
        text = field_help(name) + ("; `none` for None" if f.optional else "")
        kwargs = dict(dest=name, default=argparse.SUPPRESS, help=text.replace("%", "%%"))
        if f.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=value_parser(f.type, f.optional, f.many), choices=f.choices or None)
            if f.many:
                kwargs["help"] += "; several values separated by commas"
        groups[f.group].add_argument(field_flag(name), **kwargs)


def value_parser(kind, optional: bool, many: bool = False):
    """Parse one flag value; `many` fields also take `a,b,c` (a list)."""

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        if many and "," in text:
            return [kind(part) for part in text.split(",")]
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="model directory (config.json, weights, tokenizer, remote code)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", action="append", help="a prompt (repeat for several); none = unconditional")
    source.add_argument("--prompts-file", help="text file with one prompt per line")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt (or unconditional samples)")
    parser.add_argument("--seed", type=int, default=0, help="row r of the run uses seed + r")
    parser.add_argument("--skip-special-tokens", action=argparse.BooleanOptionalAction, default=True,
                        help="drop special tokens when decoding (default: drop, as DSL-LLaDA's evaluation)")
    parser.add_argument("--add-special-tokens", action="store_true", help="let the tokenizer add BOS/EOS to prompts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per generate() call")
    parser.add_argument("--plot-diagnostics", metavar="OUT.png", help="draw u_t, H_t, k_t, r_t, Δ_t traces")
    parser.add_argument("--output", metavar="OUT.jsonl", help="also write {prompt, text} lines here")
    parser.add_argument("--progress", action="store_true", help="show a progress bar over steps")
    add_field_flags(parser)
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error("--num-samples must be >= 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    # Every path is checked before the model loads, so no sampling is lost to a bad output path.
    try:
        check_source(args.checkpoint, "checkpoint")
        check_output_file(args.output, "--output")
        check_output_file(args.plot_diagnostics, "--plot-diagnostics")
        if args.prompts_file is not None and not Path(args.prompts_file).is_file():
            raise FileNotFoundError(f"--prompts-file: no such file: {args.prompts_file!r}")
    except (OSError, ValueError) as err:
        parser.error(str(err))
    if os.path.isfile(os.path.join(args.checkpoint, "adapter_config.json")):
        try:
            import peft  # noqa: F401
        except ImportError:
            parser.error(f"{args.checkpoint} holds a PEFT LoRA adapter; loading it needs the `peft` package "
                         f"(pip install peft)")
    if args.plot_diagnostics:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot-diagnostics needs matplotlib (pip install matplotlib)")
    return args


def overrides(args) -> dict:
    """generate() keyword arguments for the field flags that were given."""
    return {name: getattr(args, name) for name in FIELDS if name not in SCRIPT_FIELDS and hasattr(args, name)}


def plot_diagnostics(traces, path: str, switch_step=None) -> None:
    """Fig. 2-style traces: mean over samples of each per-step diagnostic, one panel each.

    Tick labels are plain numbers (no matplotlib offset such as "1e-6+9.9995e-1" for u_t ≈ 0.99998);
    every step is drawn as a marker, so a one-step run shows its point; a diagnostic the sampler
    does not record (all NaN) says so in its panel; `switch_step` (hybrid: the number of SDE steps)
    draws a dashed line where the discrete finish takes over."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [("u_t", "uncertainty u_t"), ("H_t", "entropy H_t (nats)"), ("k_t", "nucleus size k_t"),
             ("r_t", "remask ratio r_t"), ("delta_t", "change rate Δ_t")]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.2))
    for ax, (key, title) in zip(axes, names):
        values = torch.cat([t[key] for t in traces], dim=1).float()  # (steps, samples)
        mean = torch.nanmean(values, dim=1)
        steps = range(1, len(mean) + 1)
        ax.plot(steps, mean.numpy(), marker="o", markersize=4 if len(mean) <= 64 else 0)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.set_xlim(0.5, len(mean) + 0.5)
        if bool(torch.isnan(mean).all()):
            ax.text(0.5, 0.5, "not recorded\nby this sampler", ha="center", va="center", transform=ax.transAxes)
        if switch_step is not None and 0 < switch_step < len(mean):
            ax.axvline(switch_step + 0.5, color="grey", linestyle="--", linewidth=1, label="SDE → discrete")
            ax.legend(loc="best", fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("step")
    rewrites = torch.cat([t["rewrites"].flatten() for t in traces]).float()
    axes[-1].hist(rewrites.numpy(), bins=max(1, int(rewrites.max().item()) + 1))
    axes[-1].set_title("rewrites per token")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def hybrid_switch_step(model, args):
    """The number of SDE steps of a hybrid run (where its trace switches to the discrete finish), else None."""
    config = DSLGenerationConfig.from_dict(model.generation_config.to_dict())
    config.update(**overrides(args))
    return config.hybrid_step_split()[0] if config.strategy == "hybrid" else None


def generate_texts(model, tokenizer, args, prompts):
    """Run generate() over (prompt, sample) jobs in batches; print and return {prompt, text}
    records and the diagnostics traces."""
    kwargs = overrides(args)
    has_eos = (model.generation_config.eos_token_id is not None
               or getattr(model.config, "eos_token_id", None) is not None)
    if not has_eos and tokenizer.eos_token_id is not None:  # for --truncate-at-eos and --stop-at-eos
        kwargs["eos_token_id"] = tokenizer.eos_token_id
    if args.plot_diagnostics:
        kwargs["output_diagnostics"] = True
    correcting = kwargs.get("strategy", model.generation_config.strategy) == "correct"
    jobs = [(p, s) for p in prompts for s in range(args.num_samples)]
    traces, records = [], []
    for start in range(0, len(jobs), args.batch_size):
        chunk = jobs[start : start + args.batch_size]
        seeds = [args.seed + start + i for i in range(len(chunk))]
        common = dict(seed=seeds, return_dict_in_generate=True, progress_bar=args.progress, **kwargs)
        if chunk[0][0] is None:
            out = model.generate(num_return_sequences=len(chunk), **common)
            prompt_len = 0
        else:
            encoded = tokenizer([p for p, _ in chunk], add_special_tokens=args.add_special_tokens,
                                return_tensors="pt", padding=True)
            out = model.generate(encoded["input_ids"].to(args.device), encoded["attention_mask"].to(args.device),
                                 **common)
            prompt_len = encoded["input_ids"].shape[1]
        if out.diagnostics:
            traces.append({k: v.cpu() for k, v in out.diagnostics.items()})
        for (prompt, _), seq, mask in zip(chunk, out.sequences, out.attention_mask):
            ids = seq[mask.bool()] if correcting else seq[prompt_len:]
            text = tokenizer.decode(ids.tolist(), skip_special_tokens=args.skip_special_tokens)
            records.append({"prompt": prompt, "text": text})
            header = "" if prompt is None else f"[prompt] {prompt}\n"
            print(f"{header}{text}\n{'-' * 40}")
        print(f"(NFE per batch: {out.nfe})", file=sys.stderr)
    return records, traces


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoModel

    from modeling_dsl import load_tokenizer

    try:
        tokenizer = load_tokenizer(args.checkpoint)
    except OSError as err:
        raise OSError(f"{describe_missing(args.checkpoint, 'checkpoint')}: {err}") from None
    if tokenizer.pad_token is None:  # GPT-2 has none; generate() only reads the attention mask
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(args.checkpoint, trust_remote_code=True,
                                      dtype=getattr(torch, args.dtype)).to(args.device).eval()
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
    else:
        prompts = args.prompt or [None]
    records, traces = generate_texts(model, tokenizer, args, prompts)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
    if args.plot_diagnostics:
        plot_diagnostics(traces, args.plot_diagnostics, switch_step=hybrid_switch_step(model, args))
        print(f"diagnostics plot written to {args.plot_diagnostics}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
