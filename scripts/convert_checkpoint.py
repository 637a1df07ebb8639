#!/usr/bin/env python
"""Convert a published MDLM checkpoint (`kuleshov-group/mdlm-owt` format) into a DSL checkpoint.

The converted, untrained model behaves like the MDLM it came from (masks at γ = 0, visible tokens
at the preset's visible SNR; the converter's mask bias starts at ln(99(V+1)), the authors' MDLM
init). The output folder loads anywhere with
`AutoModel.from_pretrained(out, trust_remote_code=True)` (code files are written beside the
weights) and is the usual starting point of `scripts/continue_pretrain.py`.

Example:
    python scripts/convert_checkpoint.py --mdlm kuleshov-group/mdlm-owt --tokenizer gpt2 \
        --output dsl-mdlm-owt --preset paper
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_dsl import DSLForDiffusionLM  # noqa: E402
from modeling_dsl.configuration_dsl import SNR_PRESETS  # noqa: E402


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
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.manual_seed(args.seed)
    overrides = {} if args.noise_dim is None else {"noise_dim": args.noise_dim}
    model = DSLForDiffusionLM.from_mdlm(args.mdlm, preset=args.preset, strict=not args.no_strict, **overrides)
    model.save_pretrained(args.output)
    if args.tokenizer is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(args.output)
    n_params = sum(p.numel() for p in model.parameters())
    config = model.config
    print(f"wrote {args.output}: {n_params / 1e6:.1f}M parameters, preset {config.snr_preset}, "
          f"V={config.vocab_size}, mask id {config.mask_token_id}, mask bias {config.effective_mask_bias_init:.2f} "
          f"(MDLM warm start), visible SNR {config.effective_visible_snr:g}")


if __name__ == "__main__":
    main()
