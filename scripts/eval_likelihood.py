#!/usr/bin/env python
"""Likelihood of text under a DSL checkpoint: the DSL path-integral bound (paper Eq. 3–4), the ROAR
(any-order autoregressive) estimate and the MDLM ELBO, as nats/token, bits/token, bits/char and
perplexity, each with its standard error (library: `evaluation.likelihood`).

    python scripts/eval_likelihood.py --model demo_output/model --data held_out.txt --output_dir lik
    # App. A.1's autoregressive contour (one token at a time: L times the cost)
    python scripts/eval_likelihood.py ... --estimators dsl --path left_to_right
    # an objective="mdlm" model: the MDLM ELBO and ROAR are its defaults
    python scripts/eval_likelihood.py --model mdlm-owt-baseline --data owt_valid.jsonl --output_dir lik_mdlm

Writes OUTPUT_DIR/likelihood.json (every setting, the environment, the figures) and likelihood.md.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain clone without installing

from evaluation.likelihood import (  # noqa: E402
    DEFAULT_MDLM_EPS, DEFAULT_NUM_NODES, DEFAULT_REPEATS, ESTIMATORS, SAMPLE_BY, LikelihoodOptions,
    LikelihoodSettings, run,
)
from modeling_dsl.noise_dsl import NLL_PATHS, QUADRATURE_RULES, QUADRATURE_TRANSFORMS  # noqa: E402
from scripts.cli_checks import check_output_dir, check_source, looks_like_hub_id, run_reporting_errors  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="DSL checkpoint folder or Hub id")
    parser.add_argument("--tokenizer", help="default: the model's folder")
    parser.add_argument("--output_dir", required=True, help="where likelihood.json / likelihood.md go")
    parser.add_argument("--overwrite", action="store_true", help="allow an output_dir that already holds files")
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, help="a .txt file, a .jsonl file, a save_to_disk folder or a Hub dataset")
    data.add_argument("--text_column", default="text", help="jsonl / dataset field (default: text)")
    data.add_argument("--sample_by", choices=SAMPLE_BY, default="paragraph",
                      help="documents of a .txt file: blank-line separated paragraphs (default), lines, or the whole file")
    data.add_argument("--split", default="test", help="dataset split (default: test)")
    data.add_argument("--dataset_config", help="dataset configuration name")
    data.add_argument("--max_documents", type=int, help="the first N documents (default: all)")
    data.add_argument("--block_size", type=int, help="tokens per row (default: the model's context)")
    data.add_argument("--no_wrap", action="store_true", help="cut the plain token stream (no BOS/EOS; "
                      "default: MDLM's wrapping, [BOS] + piece + [EOS] with EOS after each document)")
    est = parser.add_argument_group("estimators")
    est.add_argument("--estimators", nargs="+", choices=ESTIMATORS,
                     help="default: dsl roar (mdlm roar for a training_objective='mdlm' model)")
    est.add_argument("--path", choices=NLL_PATHS, default="joint",
                     help="the DSL bound's SNR path: joint (all tokens together, default), left_to_right "
                     "(App. A.1's AR contour, one stage per --block tokens), random_order")
    est.add_argument("--block", type=int, default=1, help="tokens per stage of a left_to_right / random_order path (default: 1)")
    est.add_argument("--snr_top", type=float, help="γ_top (default: 30·ln V/ln 35, the authors' integral top)")
    est.add_argument("--num_nodes", type=int, default=DEFAULT_NUM_NODES, help=f"quadrature nodes per stage (default: {DEFAULT_NUM_NODES})")
    est.add_argument("--quadrature", choices=QUADRATURE_RULES, default="gauss_legendre", help="default: gauss_legendre")
    est.add_argument("--transform", choices=QUADRATURE_TRANSFORMS, default="log1p",
                     help="integration variable: log1p (u = ln(1 + γ/snr_scale), default) or linear")
    est.add_argument("--snr_scale", type=float, default=1.0, help="the log1p transform's scale (default: 1 = ‖x‖²)")
    est.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                     help=f"Monte-Carlo repeats per sequence (default: {DEFAULT_REPEATS}, the authors' n_rep)")
    est.add_argument("--mdlm_eps", type=float, default=DEFAULT_MDLM_EPS, help=f"MDLM's t floor (default: {DEFAULT_MDLM_EPS})")
    est.add_argument("--seed", type=int, default=0, help="default: 0")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--batch_size", type=int, default=8, help="rows per forward (default: 8)")
    run_group.add_argument("--device", help="default: cuda when available, else cpu")
    run_group.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="default: float32")
    run_group.add_argument("--no_progress", action="store_true")
    return parser


def check_args(args) -> None:
    """Every check that needs no model: raises ValueError / FileNotFoundError naming the flag."""
    for flag in ("max_documents", "block_size", "num_nodes", "repeats", "batch_size", "block"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag} must be >= 1, got {value}")
    check_source(args.model, "--model", "checkpoint folder")
    check_source(args.tokenizer, "--tokenizer", "tokenizer folder")
    if not os.path.exists(args.data) and (Path(args.data).suffix or not looks_like_hub_id(args.data)):
        raise FileNotFoundError(f"--data: no such file or folder: {args.data!r}")
    check_output_dir(args.output_dir, "--output_dir", args.overwrite, "pass --overwrite to write into it")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = LikelihoodOptions(
        estimators=tuple(args.estimators or ("dsl",)), path=args.path, block=args.block, snr_top=args.snr_top,
        num_nodes=args.num_nodes, quadrature=args.quadrature, transform=args.transform, snr_scale=args.snr_scale,
        repeats=args.repeats, mdlm_eps=args.mdlm_eps, seed=args.seed)
    settings = LikelihoodSettings(
        model=args.model, data=args.data, output_dir=args.output_dir, options=options,
        estimators_given=args.estimators is not None, text_column=args.text_column, sample_by=args.sample_by,
        split=args.split, dataset_config=args.dataset_config, max_documents=args.max_documents,
        block_size=args.block_size, wrap=not args.no_wrap, tokenizer=args.tokenizer, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, progress=not args.no_progress)
    def body():
        check_args(args)
        options.validate()
        return run(settings)

    report = run_reporting_errors(body, args.model)
    if report is None:
        return 2
    print(json.dumps({name: {k: v for k, v in values.items() if k in ("nats_per_token", "nats_per_token_se",
                                                                       "bits_per_char", "perplexity")}
                      for name, values in report["results"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
