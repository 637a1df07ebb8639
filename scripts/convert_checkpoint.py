#!/usr/bin/env python
"""Convert a published MDLM checkpoint (`kuleshov-group/mdlm-owt` format) into a DSL checkpoint.

The converted, untrained model behaves like the MDLM it came from (masks at γ = 0, visible tokens
at the preset's visible SNR; the converter's mask bias starts at ln(99(V+1)), the authors' MDLM
init). The output folder loads anywhere with
`AutoModel.from_pretrained(out, trust_remote_code=True)` (code files are written beside the
weights, with a model card as README.md) and is the usual starting point of `scripts/continue_pretrain.py`.

Example:
    python scripts/convert_checkpoint.py --mdlm kuleshov-group/mdlm-owt --tokenizer gpt2 \
        --output dsl-mdlm-owt --preset paper
"""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_cards import write_model_card  # noqa: E402
from modeling_dsl import DSLForDiffusionLM  # noqa: E402
from modeling_dsl.configuration_dsl import SNR_PRESETS  # noqa: E402
from scripts.cli_checks import check_output_dir, check_source  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mdlm", required=True, help="MDLM checkpoint: local folder or Hub repo id")
    parser.add_argument("--output", required=True, help="folder to write the DSL checkpoint to")
    parser.add_argument("--preset", default="paper", choices=SNR_PRESETS,
                        help="converter init and training-SNR preset (default: paper)")
    parser.add_argument("--noise-dim", type=int, default=None, help="dimension d of the spherical embeddings")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer to save beside the model (folder or Hub id; MDLM uses GPT-2)")
    parser.add_argument("--no-strict", action="store_true", help="load despite missing or mis-shaped keys")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh spherical embeddings")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    return parser.parse_args(argv)


def check_tokenizer(tokenizer, config, name: str) -> None:
    """The tokenizer must fit the model: as many tokens as the model predicts (`vocab_size`), every
    special id inside the vocabulary, and its mask token (if any) at the model's mask id."""
    size = len(tokenizer)
    if size != config.vocab_size:
        raise ValueError(f"--tokenizer {name!r} has {size} tokens but the model's vocabulary has "
                         f"vocab_size={config.vocab_size}: they must be equal")
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None and not 0 <= value < config.vocab_size:
            raise ValueError(f"--tokenizer {name!r}: {attr}={value} is outside the model's vocabulary "
                             f"[0, {config.vocab_size})")
    mask = getattr(tokenizer, "mask_token_id", None)
    if mask is not None and mask != config.mask_token_id:
        raise ValueError(f"--tokenizer {name!r}: mask_token_id={mask} but the model's mask_token_id is "
                         f"{config.mask_token_id}")


def main(argv=None):
    args = parse_args(argv)
    # Everything is checked and loaded before anything is written; the folder is written under a
    # temporary name beside --output and moved into place at the end, so a failure leaves no
    # half-written checkpoint.
    check_source(args.mdlm, "--mdlm")
    check_source(args.tokenizer, "--tokenizer")
    check_output_dir(args.output, "--output", args.overwrite, "pass --overwrite to replace it")
    import torch

    torch.manual_seed(args.seed)
    overrides = {} if args.noise_dim is None else {"noise_dim": args.noise_dim}
    model = DSLForDiffusionLM.from_mdlm(args.mdlm, preset=args.preset, strict=not args.no_strict, **overrides)
    tokenizer = None
    if args.tokenizer is not None:
        from modeling_dsl import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
        check_tokenizer(tokenizer, model.config, args.tokenizer)
    output = os.path.abspath(args.output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.partial-", dir=parent)
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        write_model_card(staging, base_model=args.mdlm)  # README.md: config, usage, base model
        if os.path.isdir(output):  # empty, or --overwrite
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    n_params = sum(p.numel() for p in model.parameters())
    config = model.config
    print(f"wrote {args.output}: {n_params / 1e6:.1f}M parameters, preset {config.snr_preset}, "
          f"V={config.vocab_size}, mask id {config.mask_token_id}, mask bias {config.effective_mask_bias_init:.2f} "
          f"(MDLM warm start), visible SNR {config.effective_visible_snr:g}")


if __name__ == "__main__":
    main()
