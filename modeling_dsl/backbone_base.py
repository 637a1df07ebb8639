"""The one interface every DSL backbone offers (DESIGN.md, "Backbone interface").

`modeling_dsl.py` knows a backbone only through this class and its registry
`modeling_dsl.BACKBONES` (backbone_type → class): a new backbone is one file with one subclass
plus one registry entry (and its name in `configuration_dsl.BACKBONE_TYPES`, which config
validation reads; a test keeps the two equal).

A backbone is bidirectional, has no time input and no token embedding of its own: the converter
feeds it `inputs_embeds`. Its LM head predicts the V real tokens and runs per position, so the
model can apply it to any subset of positions.
"""

from typing import NamedTuple, Optional

import torch
from torch import nn


class PublishedWeights(NamedTuple):
    """A published checkpoint's tensors, mapped to a DSL backbone.

    state_dict: backbone tensors under the backbone module's own parameter names.
    input_embedding: (V_src ≥ V, D) the published model's input embedding; its first V rows become
        the converter's W_trans token columns, so a one-hot π reproduces the published inputs.
    mask_embedding: (D,) the published model's [MASK] input embedding (W_trans's mask column).
    unexpected: published keys that have no place in the backbone (reported, never loaded).
    dsl_state_dict: tensors of an already DSL-trained release (e.g. DSL-LLaDA's converter and noise
        embeddings) under this model's own names (`embed.weight`, `converter.*`); they replace the
        fresh converter init. Empty for a plain published model.
    """

    state_dict: dict
    input_embedding: torch.Tensor
    mask_embedding: torch.Tensor
    unexpected: list
    dsl_state_dict: dict = {}


class DSLBackbone(nn.Module):
    """Base class of DSL backbones. Subclasses set the class attributes and implement every method.

    Class attributes:
        backbone_type: the `DSLConfig.backbone_type` naming this backbone.
        published_format: the published checkpoint family `weights_from_published` reads
            (e.g. "kuleshov-group/mdlm-owt").
        no_split_modules: class names `device_map="auto"` must not split (HF `_no_split_modules`).
        lora_target_modules: default PEFT LoRA targets, a regular expression over module names
            relative to the backbone (the model prefixes `backbone\\.`; PEFT full-matches it).
    """

    backbone_type: str = ""
    published_format: str = ""
    no_split_modules: tuple = ()
    lora_target_modules: str = ""

    def forward(self, inputs_embeds: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """(B, L, D) inputs (the converter output) and an optional (B, L) key-padding mask (1 = real
        key) → hidden states (B, L, D), before the LM head. Keep the residual stream in the dtype of
        `inputs_embeds` (fp32 under autocast); block internals may run in bf16."""
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head on hidden states of any leading shape (..., D) → logits (..., V) over the real
        tokens. The model calls it with autocast off and fp32 hidden states."""
        raise NotImplementedError

    def head_features(self, hidden: torch.Tensor) -> Optional[torch.Tensor]:
        """The LM head's input on hidden states (..., D): whatever comes before its output projection
        (norms, modulation), so that `logits(hidden) == get_output_embeddings()(head_features(hidden))`.
        The model then computes a training loss chunk by chunk without (…, V) logits
        (`HeadCrossEntropy`). Optional: None (the default) makes the model use `logits` instead."""
        return None

    def get_output_embeddings(self) -> nn.Module:
        """The LM head's output projection (HF `get_output_embeddings`)."""
        raise NotImplementedError

    def token_embedding(self) -> Optional[nn.Module]:
        """The backbone's own token embedding (ids → (…, D)), used to feed clean prompt tokens
        without the converter (`DSLConfig.prompt_embedding="backbone"`); None when it has none."""
        return None

    def init_module(self, module: nn.Module) -> None:
        """Fresh-init one of this backbone's own submodules (called by `_init_weights` for every
        module inside the backbone); use `transformers.initialization` so loaded weights are kept."""
        raise NotImplementedError

    @classmethod
    def config_from_published(cls, published_config: dict, state_dict: dict) -> dict:
        """`DSLConfig` fields (backbone shape, vocab_size, mask_token_id, …) read from a published
        checkpoint's `config.json` and tensors. Raise `ValueError` naming missing fields."""
        raise NotImplementedError

    @classmethod
    def weights_from_published(cls, state_dict: dict, config) -> PublishedWeights:
        """Map a published checkpoint's tensors onto this backbone and name the converter's W_trans
        init source. Raise `ValueError` when the input embedding is missing."""
        raise NotImplementedError
