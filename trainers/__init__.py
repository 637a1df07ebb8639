"""Training for DSL models: `DSLTrainer` (Algorithm 1 and the MDLM baseline), EMA, data pipelines."""

from .data import (
    DSLDataCollator,
    detokenize_wikitext,
    load_raw_dataset,
    pack_dataset,
    pack_token_stream,
    prompt_response_dataset,
    split_train_eval,
    train_bpe_tokenizer,
)
from .dsl_trainer import EVAL_SNRS, DSLTrainer, EMACallback, mdlm_masking

__all__ = [
    "DSLTrainer", "EMACallback", "EVAL_SNRS", "mdlm_masking", "DSLDataCollator", "detokenize_wikitext",
    "load_raw_dataset", "pack_dataset", "pack_token_stream", "prompt_response_dataset", "split_train_eval",
    "train_bpe_tokenizer",
]
