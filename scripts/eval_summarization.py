#!/usr/bin/env python
"""Zero-shot summarization with ROUGE (the DSL-LLaDA protocol; library: `evaluation.summarization`).

    # DSL-LLaDA's SDE vs LLaDA's low-confidence baseline at NFE 8 and 16, plus lead-k, on two sets
    python scripts/eval_summarization.py run --model CKPT --data xsum.jsonl cnn_dailymail.jsonl \\
        --methods dsl_llada_sde original_remask lead-k --nfe 8 16 --output_dir out
    # the same split over 8 processes / GPUs, then combined
    python scripts/eval_summarization.py run ... --num_shards 8 --shard_index 3 --device cuda:3
    python scripts/eval_summarization.py merge out

A method is `[LABEL=]NAME[:key=value,...]`: a preset (original_remask, original_remask_eosInf_b32,
dsl_llada_sde), any generate() strategy with its settings (e.g.
`heun=sde:integrator=heun,snr_schedule=sensitive`), `lead-k` (k per dataset) or `lead-N`. A rerun
with the same output_dir resumes: finished samples are skipped.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain clone without installing

from evaluation.summarization import DEFAULT_NFE, DEFAULT_SEED, DEFAULT_SPLIT, PROTOCOLS, EvalSettings, merge, run  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("run", help="generate and score (resumes in an existing output_dir)")
    r.add_argument("--output_dir", required=True)
    r.add_argument("--methods", nargs="+", required=True, help="methods (see the top of --help)")
    r.add_argument("--nfe", type=int, nargs="+", default=list(DEFAULT_NFE),
                   help="NFE budgets (default: the reference §6 sweep, 8 16 32 64)")
    data = r.add_argument_group("data")
    data.add_argument("--data", nargs="*", default=[], help="jsonl files (id, document, summary); the file name "
                      f"selects the template ({', '.join(PROTOCOLS)})")
    data.add_argument("--hf_dataset", help="a Hugging Face dataset name or a save_to_disk folder")
    data.add_argument("--hf_config", help="its config (cnn_dailymail: 3.0.0 by default)")
    data.add_argument("--split", default=DEFAULT_SPLIT, help="default: test (reference §6)")
    data.add_argument("--document_column", help="default: document (jsonl) or the dataset's own column")
    data.add_argument("--summary_column", help="default: summary (jsonl) or the dataset's own column")
    data.add_argument("--id_column", help="default: id when present, else the row number")
    data.add_argument("--num_samples", type=int, help="the first N usable records (default: all)")
    data.add_argument("--shuffle_seed", type=int, help="shuffle the records first (default: no; the 1000-sample build used 42)")
    prompt = r.add_argument_group("protocol overrides (defaults: reference §6 per dataset)")
    prompt.add_argument("--template", help=f"dataset template for every input: {', '.join(PROTOCOLS)}")
    prompt.add_argument("--instruction", help="instruction text (the document follows after a blank line)")
    prompt.add_argument("--max_words", type=int, help="document word cap (0: none; default: the dataset's); a document within the cap "
                        "stays as it is, a longer one is cut and re-joined with single spaces (the 1000-sample build)")
    prompt.add_argument("--gen_length", type=int, help="tokens generated per sample (default: the dataset's)")
    prompt.add_argument("--lead_k", type=int, help="sentences of lead-k (default: the dataset's, data README)")
    prompt.add_argument("--chat_template", choices=["auto", "on", "off"], default="auto",
                        help="auto (default): use the tokenizer's chat template when it has one")
    prompt.add_argument("--keep_special_tokens", action="store_true", help="decode without skip_special_tokens")
    prompt.add_argument("--truncate_at_eos", action="store_true", help="cut each output at its first EOS")
    prompt.add_argument("--seed", type=int, default=DEFAULT_SEED, help="sample i uses seed + i (default: 42, reference §6)")
    model = r.add_argument_group("model")
    model.add_argument("--model", help="a LLaDA-format checkpoint (e.g. GSAI-ML/LLaDA-8B-Instruct, loaded with "
                       "from_llada) or a saved DSL checkpoint; folder or Hub id (not needed for lead-k only)")
    model.add_argument("--revision", help="Hub branch, tag or commit of --model (and of its tokenizer)")
    model.add_argument("--tokenizer", help="default: the model's")
    model.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="default: float32")
    model.add_argument("--device", help="default: cuda when available, else cpu")
    model.add_argument("--batch_size", type=int, default=8, help="prompts per generate() call (default: 8)")
    run_group = r.add_argument_group("run")
    run_group.add_argument("--num_shards", type=int, default=1, help="default: 1")
    run_group.add_argument("--shard_index", type=int, default=0, help="this process takes the samples i "
                           "with i %% num_shards == shard_index (default: 0)")
    run_group.add_argument("--no_progress", action="store_true")
    run_group.add_argument("--no_evaluate_check", action="store_true",
                           help="skip the cross-check with evaluate's rouge (it runs only when it loads offline)")
    m = commands.add_parser("merge", help="combine finished shards and write the reports")
    m.add_argument("output_dir")
    m.add_argument("--no_evaluate_check", action="store_true")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "merge":
            result = merge(args.output_dir, check_evaluate=not args.no_evaluate_check)
        else:
            settings = EvalSettings(
                output_dir=args.output_dir, methods=args.methods, nfe=args.nfe, data=args.data,
                hf_dataset=args.hf_dataset, hf_config=args.hf_config, split=args.split,
                document_column=args.document_column, summary_column=args.summary_column, id_column=args.id_column,
                num_samples=args.num_samples, shuffle_seed=args.shuffle_seed, template=args.template,
                instruction=args.instruction, max_words=args.max_words, gen_length=args.gen_length,
                lead_k=args.lead_k, chat_template=args.chat_template, skip_special_tokens=not args.keep_special_tokens,
                truncate_at_eos=args.truncate_at_eos, seed=args.seed, model=args.model, revision=args.revision,
                tokenizer=args.tokenizer, dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                num_shards=args.num_shards, shard_index=args.shard_index, progress=not args.no_progress,
                check_evaluate=not args.no_evaluate_check)
            result = run(settings)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
