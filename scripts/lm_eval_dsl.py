#!/usr/bin/env python
"""lm-evaluation-harness with the `dsl` model type registered: lm-eval's own command line, unchanged.

lm-eval 0.4.13 reads no plugin entry point for models (../shared/reference/lm_eval.md §1), so the
stock `lm_eval` says "Unknown model 'dsl'". This runner imports `evaluation.lm_eval_dsl` (which
registers `dsl`) and then calls `lm_eval.__main__.cli_evaluate()`; every `lm_eval` flag works.
Before lm-eval starts it checks that `pretrained=` names an existing folder (or a Hub id), and
adds `--device cpu` when no `--device` is given and torch finds no GPU (lm-eval's default is cuda:0).

Example (model arguments: see `evaluation/lm_eval_dsl.py`):
    python scripts/lm_eval_dsl.py --model dsl \\
        --model_args pretrained=demo_output/model,strategy=mdlm,steps=16,gen_length=16,mc_num=32 \\
        --tasks my_task --include_path my_tasks/ --batch_size 8 --output_path lm_eval_out
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.cli_checks import check_source  # noqa: E402


def model_args_of(argv):
    """The `--model_args` value of an lm-eval command line (None when absent)."""
    for i, arg in enumerate(argv):
        if arg in ("--model_args", "-a") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--model_args="):
            return arg.split("=", 1)[1]
    return None


def check_argv(argv):
    """Fail fast, naming the argument, on a `dsl` run whose model folder is missing; returns argv
    with `--device cpu` added when no device is given and there is no GPU."""
    if "-h" in argv or "--help" in argv:
        return argv
    model_args = model_args_of(argv)
    if model_args is not None and not model_args.lstrip().startswith("{"):
        pairs = dict(part.split("=", 1) for part in model_args.split(",") if "=" in part)
        if "pretrained" not in pairs and "--model" in argv and argv[argv.index("--model") + 1:][:1] == ["dsl"]:
            raise ValueError("--model_args: the dsl model needs pretrained=FOLDER_OR_HUB_ID")
        check_source(pairs.get("pretrained"), "--model_args pretrained=")
        check_source(pairs.get("tokenizer"), "--model_args tokenizer=")
    if not any(a == "--device" or a.startswith("--device=") for a in argv):
        import torch

        if not torch.cuda.is_available():
            argv = argv + ["--device", "cpu"]
    return argv


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
    try:
        argv = check_argv(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import evaluation.lm_eval_dsl  # noqa: F401  (registers the `dsl` model type)
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0]] + argv
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
