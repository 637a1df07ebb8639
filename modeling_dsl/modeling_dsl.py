"""DSL diffusion language model: spherical embeddings → corruption → softmax converter → backbone.

    ids ─E─► x ─(γ)─► z = γx + √γ ε ─converter─► h ─backbone (no time input)─► logits p_θ(s | z)
                                                     denoiser x̂(z) = p_θ(· | z) @ E

A masked token is γ = 0 (z = 0, the converter's mask slot wins); a visible token is γ =
`config.effective_visible_snr`. The backbone is reached only through the `DSLBackbone` interface
(backbone_base.py) and the registry `BACKBONES`. Only single-dot sibling imports: this folder is
shipped flat as Hub remote code.
"""

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .backbone_base import DSLBackbone
from .backbone_llada import LLaDATransformer
from .backbone_mdlm import MDLMDiT
from .configuration_dsl import DSLConfig, warm_start_mask_bias
from .converter_dsl import SoftmaxConverter, SphericalEmbedding, accumulate_matmul, matmul_into, softmax_
from .generation_dsl import DSLGenerationConfig, DSLGenerationMixin
from .noise_dsl import corrupt
from .sampling_dsl import posterior_mean

logger = logging.getLogger(__name__)

# The one registry of backbones: backbone_type → DSLBackbone subclass.
BACKBONES = {cls.backbone_type: cls for cls in (MDLMDiT, LLaDATransformer)}


def backbone_class(backbone_type: str) -> type:
    """The registered `DSLBackbone` subclass of `backbone_type`."""
    if backbone_type not in BACKBONES:
        raise ValueError(f"backbone_type must be one of {tuple(BACKBONES)}, got {backbone_type!r}")
    return BACKBONES[backbone_type]


@dataclass
class DSLDiffusionOutput(ModelOutput):
    """Output of [`DSLForDiffusionLM.forward`].

    loss: token cross-entropy (nats), when `labels` are given: Σ w·CE over scored positions divided
        by their number (or by `num_items_in_batch`).
    logits: (B, L, V) fp32 logits of p_θ(token | z); None with `return_logits=False`.
    snr: (B, L) the per-token SNRs used (None when `noisy_embeds` were given).
    token_loss: (B, L) fp32 per-position CE (unweighted, 0 where not scored), detached; with `labels`.
    """

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    snr: Optional[torch.FloatTensor] = None
    token_loss: Optional[torch.FloatTensor] = None


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor] = None,
                        num_items_in_batch=None):
    """Cross-entropy in nats over positions with `labels != -100`, from full logits.

    Args:
        logits: (B, L, V) or (N, V).
        labels: (B, L) or (N,), -100 = not scored.
        weights: optional per-position weights of labels' shape (e.g. MDLM's 1/t).
        num_items_in_batch: the divisor of the weighted sum (a number or 0-d tensor); default the
            number of scored positions (a token mean).
    Returns:
        (loss, token_loss): the scalar loss and the unweighted per-position CE of labels' shape
        (0 where not scored; it carries the graph, callers detach it for logging).
    """
    scored = labels != -100
    token_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).clamp(min=0),
                                 reduction="none").view(labels.shape) * scored
    weighted = token_loss if weights is None else token_loss * weights
    return weighted.sum() / loss_divisor(scored, num_items_in_batch), token_loss


def loss_divisor(scored: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """`num_items_in_batch` (a number or tensor) or else the number of scored positions, at least 1."""
    if num_items_in_batch is None:
        return scored.sum().clamp(min=1)
    return torch.as_tensor(num_items_in_batch, device=scored.device).clamp(min=1)


class HeadCrossEntropy(torch.autograd.Function):
    """loss = Σ_n w_n CE(x_n Wᵀ + b, y_n) / N without the (N, V) logits: the LM head and the
    cross-entropy of a training step, chunk by chunk.

    The plain path keeps the fp32 (N, V) logits, the cross-entropy's log-softmax and, in backward,
    their gradients: at V = 50k, N = 1024 four 206 MB tensors, the largest part of a DiT-170M
    step's memory after the converter's. Here forward walks `chunk_rows` positions at a time and,
    when a gradient is needed, forms each chunk's logit gradient (softmax − one-hot) · w_n / N at
    once and folds it into the gradients of x, W and b; backward only scales those by the incoming
    gradient. Same matmul FLOPs as the plain path (one forward and two gradient matmuls per chunk),
    nothing of size (N, V) outlives a chunk; the loss and gradients equal the plain path's up to
    float rounding (`tests/test_performance_paths.py`). One backward per forward (the precomputed
    gradients are handed over, not copied).

    Args (of `apply`): features x (N, D) in W's dtype; weight W (V, D); bias b (V,) or None; labels
    y (N,) ids in [0, V) or -100 (not scored); label_weights w (N,) fp32 or None (1); divisor N
    (0-d tensor); chunk_rows; build_grads: `torch.is_grad_enabled()` of the caller (no gradient
    work under `no_grad`). Returns (loss (), token_loss (N,) fp32 unweighted CE, 0 where not
    scored, not differentiable).
    """

    @staticmethod
    def forward(ctx, features, weight, bias, labels, label_weights, divisor, chunk_rows, build_grads):
        # needs_input_grad says True under no_grad as well: the caller passes torch.is_grad_enabled()
        need_x, need_w, need_b = (bool(build_grads) and need for need in ctx.needs_input_grad[:3])
        need_b = need_b and bias is not None
        rows_total, vocab = features.shape[0], weight.shape[0]
        token_loss = torch.zeros(rows_total, dtype=torch.float32, device=features.device)
        grad_x = torch.empty(features.shape, dtype=torch.float32, device=features.device) if need_x else None
        grad_w = None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if need_b else None
        scale = (labels != -100).float() / divisor.float()
        if label_weights is not None:
            scale = scale * label_weights.float()
        buffer = torch.empty(min(chunk_rows, rows_total), vocab, dtype=torch.float32, device=features.device)
        for lo in range(0, rows_total, chunk_rows):
            rows = slice(lo, lo + chunk_rows)
            x, y = features[rows], labels[rows]
            logits = matmul_into(buffer[: x.shape[0]], x, weight.t(), bias)  # (m, V) fp32
            target = logits.gather(1, y.clamp(min=0).unsqueeze(1)).squeeze(1)
            lse = softmax_(logits).squeeze(1)  # logits now hold the softmax
            token_loss[rows] = (lse - target) * (y != -100)
            if not (need_x or need_w or need_b):
                continue
            # ∂loss/∂logits = (softmax − one-hot(y)) · scale_n, in the buffer
            grad = logits
            grad[torch.arange(grad.shape[0], device=grad.device), y.clamp(min=0)] -= 1.0
            grad.mul_(scale[rows].unsqueeze(1))
            if need_b:
                grad_b += grad.sum(dim=0)
            grad_mm = grad.to(weight.dtype)
            if need_x:
                matmul_into(grad_x[rows], grad_mm, weight)
            if need_w:
                grad_w = accumulate_matmul(grad_w, grad_mm.t(), x)
        if need_w and grad_w is None:  # no positions
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        ctx.grads = (grad_x, grad_w, grad_b)
        ctx.dtypes = (features.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(token_loss)
        return (token_loss * scale).sum(), token_loss

    @staticmethod
    def backward(ctx, grad_loss, grad_token_loss):
        if ctx.grads is None:
            raise RuntimeError("HeadCrossEntropy supports one backward per forward (its gradients are precomputed "
                               "and handed over); recompute the loss for a second backward")
        grads, ctx.grads = ctx.grads, None
        out = [None if g is None else g.mul_(grad_loss).to(dtype) for g, dtype in zip(grads, ctx.dtypes)]
        return (*out, None, None, None, None, None)


class DSLPreTrainedModel(PreTrainedModel):
    """Weight initialisation and conventions shared by DSL models."""

    config_class = DSLConfig
    config: DSLConfig
    base_model_prefix = "dsl"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # forward returns a per-micro-batch token mean; Trainer must divide by accumulation steps.
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with load failures that name the file and what is wrong:
        a PEFT adapter folder without `peft` installed, and a corrupted safetensors file."""
        folder = str(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else ""
        if os.path.isfile(os.path.join(folder, "adapter_config.json")):
            try:
                import peft  # noqa: F401
            except ImportError:
                raise ImportError(f"{folder} holds a PEFT LoRA adapter (adapter_config.json); loading it needs the "
                                  f"`peft` package: pip install peft") from None
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as err:
            if type(err).__name__ != "SafetensorError":
                raise
            names = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) if os.path.isdir(folder) else []
            where = ", ".join(os.path.join(folder, f) for f in names) or f"the safetensors file of {folder}"
            raise OSError(f"{where}: not a valid safetensors file (corrupted or truncated?): {err}") from err

    def _init_weights(self, module):
        """DSL's own modules here; every other module by the backbone's `init_module`."""
        if isinstance(module, SphericalEmbedding):
            init.normal_(module.weight, mean=0.0, std=1.0)  # direction uniform on the sphere
        elif isinstance(module, SoftmaxConverter):
            init.constant_(module.beta, self.config.effective_beta_init)
            bias = torch.zeros_like(module.logit_bias)
            bias[-1] = self.config.effective_mask_bias_init
            init.copy_(module.logit_bias, bias)
        elif module is self.converter.backbone_embedding:  # W_trans
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:  # the backbone's own module types (it ignores the others)
            self.backbone.init_module(module)


class DSLForDiffusionLM(DSLPreTrainedModel, DSLGenerationMixin):
    """A DSL diffusion LM: one SNR-invariant denoiser for every per-token SNR path.

    Submodules: `embed` (SphericalEmbedding, V×d), `converter` (SoftmaxConverter), `backbone`
    (the `DSLBackbone` registered for `config.backbone_type`; predicts the V real tokens).

    Precision: under `torch.autocast(bfloat16)` with fp32 weights the converter output, the
    residual stream and the LM head stay fp32 (the softmaxes always are); only the backbone
    blocks' matmuls run in bf16 — MDLM's residual convention and the authors' fp32 head
    (reference/mdlm_remdm.md §1, dsl_official.md §4).
    """

    generation_config_class = DSLGenerationConfig

    def __init__(self, config: DSLConfig):
        super().__init__(config)
        self.embed = SphericalEmbedding(config.vocab_size, config.noise_dim)
        self.converter = SoftmaxConverter(
            config.vocab_size, config.noise_dim, config.hidden_size, config.effective_beta_init,
            config.effective_mask_bias_init, bias=config.converter_bias,
        )
        backbone_cls = backbone_class(config.backbone_type)
        self.backbone: DSLBackbone = backbone_cls(config)
        self._no_split_modules = list(backbone_cls.no_split_modules)
        self.post_init()

    # ----------------------------------------------------------------- embeddings (PEFT, HF API)
    def get_input_embeddings(self) -> nn.Module:
        """The module whose output is the backbone's input (the converter)."""
        return self.converter

    def get_output_embeddings(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    @property
    def lora_target_modules(self) -> str:
        """The backbone's default PEFT LoRA targets as a regular expression over this model's module
        names (PEFT full-matches a string `target_modules`)."""
        return rf"backbone\.(?:{self.backbone.lora_target_modules})"

    def noise_embeddings(self) -> torch.Tensor:
        """E: the unit-norm token embeddings, (V, d) fp32."""
        return self.embed.unit_weight()

    # ----------------------------------------------------------------- the denoiser
    def default_snr(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """DESIGN convention: γ = 0 at mask (and padding) positions, γ = `config.effective_visible_snr`
        at visible tokens (the SNR samplers feed visible tokens at)."""
        visible = input_ids != self.config.mask_token_id
        if attention_mask is not None:
            visible = visible & attention_mask.bool()
        return visible.float() * self.config.effective_visible_snr

    def noisy_embeds_from_ids(self, input_ids, snr=None, attention_mask=None, generator=None, noise=True,
                              clean_mask=None):
        """z = γ·E[ids] + √γ·ε, returning (z (B, L, d) fp32, snr (B, L) fp32).

        `snr` must be finite and ≥ 0, and exactly 0 wherever `input_ids` holds the mask id or any id
        outside [0, vocab_size) (E has no row there; such a position is masked) — otherwise
        `ValueError` naming `snr`. `clean_mask` (B, L) bool marks positions fed noise-free
        (z = γ·E[ids]): prompt tokens and MDLM-visible tokens, as the samplers feed them. Noise is
        drawn for every position either way, so the mask does not shift the random stream of the others.
        """
        if snr is None:
            snr = self.default_snr(input_ids, attention_mask)
        snr = torch.as_tensor(snr, dtype=torch.float32, device=input_ids.device)
        if snr.dim() == 1 and snr.shape[0] == input_ids.shape[0] and input_ids.dim() == 2:
            snr = snr[:, None]  # one SNR per sequence
        snr = snr.expand(input_ids.shape)
        self.check_snr(input_ids, snr)
        ids = input_ids.clamp(0, self.config.vocab_size - 1)  # rows outside E are only read at γ = 0
        x = self.embed(ids)
        z = corrupt(x, snr, generator, noise=noise)
        if clean_mask is not None:
            if clean_mask.shape != input_ids.shape:
                raise ValueError(f"clean_mask must have shape {tuple(input_ids.shape)}, got {tuple(clean_mask.shape)}")
            z = torch.where(clean_mask.bool().unsqueeze(-1), snr.unsqueeze(-1) * x, z)
        return z, snr

    def check_snr(self, input_ids: torch.Tensor, snr: torch.Tensor) -> None:
        """Raise `ValueError` naming `snr` if it is NaN, infinite or negative anywhere, or nonzero at
        a masked position (the mask id, or an id outside [0, vocab_size), which would otherwise be
        embedded as another token)."""
        if not bool(torch.isfinite(snr).all()):
            raise ValueError("snr must be finite everywhere (no NaN or infinity)")
        if bool((snr < 0).any()):
            raise ValueError("snr must be >= 0 everywhere")
        masked = (input_ids == self.config.mask_token_id) | (input_ids < 0) | (input_ids >= self.config.vocab_size)
        bad = masked & (snr != 0)
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"snr must be 0 at masked positions (input_ids equal to mask_token_id={self.config.mask_token_id} "
                f"or outside [0, vocab_size={self.config.vocab_size})), got snr={snr[where].item():g} at position "
                f"{where} holding id {int(input_ids[where])}"
            )

    def hidden_states(self, noisy_embeds: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                      beta=None) -> torch.Tensor:
        """Converter + backbone blocks: (B, L, d) → (B, L, D), before the LM head.

        `beta` (float or 0-d / (1,) tensor) replaces the converter's learned β for this call only
        (DSL-LLaDA decodes with β_inf = 2·β_train); the weights are untouched.
        """
        return self.hidden_states_with_clean(noisy_embeds, attention_mask, beta)

    def hidden_states_with_clean(self, noisy_embeds: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                                 beta=None, clean_ids: Optional[torch.Tensor] = None,
                                 clean_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`hidden_states`, with the positions marked by `clean_mask` (B, L) bool fed as the backbone's
        own token embedding of `clean_ids` (B, L) instead of the converter output
        (`prompt_embedding="backbone"`: DSL-LLaDA's clean `wte(prompt)`, reference llada_dsl.md §5.5).
        """
        h = self.converter(noisy_embeds, self.noise_embeddings(), beta=beta)
        if clean_mask is not None:
            h = torch.where(clean_mask.bool().unsqueeze(-1), self.embed_clean_tokens(clean_ids).to(h.dtype), h)
        return self.backbone(h, attention_mask)

    def embed_clean_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The backbone's own token embedding of `input_ids` (B, L) → (B, L, D); `ValueError` naming
        `prompt_embedding` / `token_inputs` when the backbone has none."""
        embedding = self.backbone.token_embedding()
        if embedding is None:
            raise ValueError(f"prompt_embedding='backbone' / token_inputs='backbone' need a backbone with a token "
                             f"embedding; "
                             f"{self.config.backbone_type!r} has none")
        return embedding(input_ids.clamp(0, self.config.vocab_size - 1))

    def hidden_states_from_tokens(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None):
        """The published backbone on its own inputs: the backbone's token embedding of every id (the
        mask id included, as LLaDA feeds `<|mdm_mask|>`), no converter → (B, L, D)."""
        return self.backbone(self.embed_clean_tokens(input_ids), attention_mask)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head on any subset of positions: (..., D) → fp32 logits (..., V). Runs outside
        autocast on the (fp32) residual stream, as the authors' head (dsl_official.md §4)."""
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.backbone.logits(hidden).float()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        snr: Optional[torch.Tensor] = None,
        noisy_embeds: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        generator: Optional[torch.Generator] = None,
        clean_mask: Optional[torch.Tensor] = None,
        label_weights: Optional[torch.Tensor] = None,
        num_items_in_batch=None,
        return_logits: bool = True,
        return_dict: Optional[bool] = None,
    ):
        """Predict tokens from noisy embeddings.

        Args:
            input_ids: (B, L) token ids; `mask_token_id` marks masked positions. Corrupted with
                `snr` (default: 0 at masks and padding, `config.effective_visible_snr` elsewhere)
                and `generator`.
            snr: per-token SNR, (B, L), (B,) or a scalar; finite, ≥ 0, and 0 at masked positions
                (else `ValueError`). Only with `input_ids`.
            noisy_embeds: (B, L, d) a ready z; replaces `input_ids` and `snr`.
            attention_mask: (B, L), 1 for real tokens, 0 for padding (padding keys are not attended).
            labels: (B, L) targets, -100 = not scored; padding positions are never scored.
            generator: randomness of the corruption noise.
            clean_mask: (B, L) bool, positions fed noise-free (z = γ·E[ids]), e.g. prompt tokens.
                Only with `input_ids`.
            label_weights: (B, L) per-position loss weights (e.g. MDLM's 1/t); default 1.
            num_items_in_batch: divisor of the weighted CE sum (a number or 0-d tensor), e.g. a
                trainer's token count; default the number of scored positions (a token mean).
            return_logits: False skips the (B, L, V) logits (`logits` is then None): with `labels`
                the loss is computed by the chunked LM head + CE (`HeadCrossEntropy`), which keeps
                no (B, L, V) tensor for backward — what `DSLTrainer` uses. Same loss and gradients.
        Returns:
            [`DSLDiffusionOutput`] (or a tuple when `return_dict=False`).
        """
        if not isinstance(return_logits, bool):
            raise ValueError(f"return_logits must be True or False, got {return_logits!r}")
        if (input_ids is None) == (noisy_embeds is None):
            raise ValueError("pass exactly one of input_ids and noisy_embeds")
        if noisy_embeds is not None:
            if snr is not None or clean_mask is not None:
                raise ValueError("snr and clean_mask are only used with input_ids; noisy_embeds are already corrupted")
            if noisy_embeds.dim() != 3 or noisy_embeds.shape[-1] != self.config.noise_dim:
                raise ValueError(
                    f"noisy_embeds must have shape (batch, length, noise_dim={self.config.noise_dim}), "
                    f"got {tuple(noisy_embeds.shape)}"
                )
            z, used_snr = noisy_embeds.float(), None
            length = z.shape[1]
        else:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
            z, used_snr = self.noisy_embeds_from_ids(input_ids, snr, attention_mask, generator, clean_mask=clean_mask)
            length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        if labels is not None:
            labels = self.check_labels(labels, z.shape[:2], attention_mask, label_weights)
        hidden = self.hidden_states(z, attention_mask)
        logits = loss = token_loss = None
        if return_logits or labels is None:
            logits = self.logits_from_hidden(hidden) if return_logits else None
            if labels is not None:
                loss, token_loss = token_cross_entropy(logits, labels, label_weights, num_items_in_batch)
        else:
            loss, token_loss = self.head_cross_entropy(hidden, labels, label_weights, num_items_in_batch)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output = DSLDiffusionOutput(loss=loss, logits=logits, snr=used_snr,
                                    token_loss=None if token_loss is None else token_loss.detach())
        return output if return_dict else output.to_tuple()

    def check_labels(self, labels: torch.Tensor, shape, attention_mask=None, label_weights=None) -> torch.Tensor:
        """`labels` (B, L) validated (`ValueError` naming what is wrong), padding set to -100."""
        if labels.shape != tuple(shape):
            raise ValueError(f"labels must have shape {tuple(shape)}, got {tuple(labels.shape)}")
        if label_weights is not None and label_weights.shape != labels.shape:
            raise ValueError(f"label_weights must have the shape of labels {tuple(shape)}, "
                             f"got {tuple(label_weights.shape)}")
        if bool(((labels < 0) & (labels != -100)).any() | (labels >= self.config.vocab_size).any()):
            raise ValueError(
                f"labels must be token ids in [0, vocab_size={self.config.vocab_size}) or -100 (not scored); "
                "set masked positions whose token is unknown to -100"
            )
        if attention_mask is not None:
            labels = labels.masked_fill(~attention_mask.bool(), -100)
        return labels

    # Positions per chunk of `HeadCrossEntropy`: about 2^23 fp32 logits (32 MiB) per temporary, as
    # the converter's `SoftmaxConverter.chunk_elements`.
    head_chunk_elements = 2**23

    def head_cross_entropy(self, hidden: torch.Tensor, labels: torch.Tensor, label_weights=None,
                           num_items_in_batch=None):
        """(loss, token_loss) of the LM head on `hidden` (B, L, D) against `labels` (B, L), without
        (B, L, V) logits: [`HeadCrossEntropy`] over the backbone's `head_features`. Falls back to
        full logits when the backbone has no `head_features` or its head is not a plain `nn.Linear`
        (e.g. wrapped by a PEFT adapter)."""
        head = self.backbone.get_output_embeddings()
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            features = self.backbone.head_features(hidden) if type(head) is nn.Linear else None
            if features is None:
                return token_cross_entropy(self.logits_from_hidden(hidden), labels, label_weights,
                                           num_items_in_batch)
            scored = labels != -100
            divisor = loss_divisor(scored, num_items_in_batch).float()
            chunk_rows = max(1, self.head_chunk_elements // self.config.vocab_size)
            weights = None if label_weights is None else label_weights.reshape(-1)
            loss, token_loss = HeadCrossEntropy.apply(features.reshape(-1, features.shape[-1]).to(head.weight.dtype),
                                                      head.weight, head.bias, labels.reshape(-1), weights, divisor,
                                                      chunk_rows, torch.is_grad_enabled())
        return loss, token_loss.view(labels.shape)

    @torch.no_grad()
    def denoise(self, noisy_embeds: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                posterior_top_k: Optional[int] = None, beta=None) -> torch.Tensor:
        """x̂(z) = Σ_v p_θ(v | z) e_v: the posterior-mean embedding, (B, L, d) fp32.

        `posterior_top_k` keeps only the k most likely tokens per position (renormalised), as
        DSL-LLaDA's SDE sampler does with k = 512. `beta` as in `hidden_states`.
        """
        logits = self.logits_from_hidden(self.hidden_states(noisy_embeds, attention_mask, beta=beta))
        return posterior_mean(logits, self.noise_embeddings(), posterior_top_k)

    # ----------------------------------------------------------------- conversion from published checkpoints
    @classmethod
    def from_mdlm(cls, pretrained_model_name_or_path: str, preset: str = "paper", strict: bool = True,
                  revision: Optional[str] = None, **config_kwargs) -> "DSLForDiffusionLM":
        """Build a DSL model from an MDLM checkpoint in the `kuleshov-group/mdlm-owt` format.

        Reads `config.json` (fields `vocab_size`, `hidden_dim`, `cond_dim`, `n_blocks`, `n_heads`,
        `model_length`, `dropout`) and the `backbone.*` safetensors. The DiT's tensors load
        one-to-one; the 50258×768 `vocab_embed` becomes the converter's W_trans (its last row,
        MDLM's [MASK], becomes the mask column); the output layer's mask row is dropped, so the
        model predicts the V = vocab_size − 1 real tokens. The spherical embeddings and β start
        fresh from the `preset`; the mask bias starts at the warm start ln(99(V+1)) (unless
        `mask_bias_init` is given), so the untrained model behaves like the MDLM it came from:
        masks at γ = 0 and visible tokens at the preset's visible SNR reproduce MDLM's logits
        (tests/test_presets.py). See `from_published`.
        """
        return cls.from_published(pretrained_model_name_or_path, "mdlm_dit", preset=preset, strict=strict,
                                  revision=revision, **config_kwargs)

    @classmethod
    def from_llada(cls, pretrained_model_name_or_path: str, preset: str = "dsl_llada", strict: bool = True,
                   revision: Optional[str] = None, torch_dtype: Optional[torch.dtype] = None,
                   freeze_lm_head: bool = True, freeze_noise_embeddings: bool = True,
                   freeze_token_embedding: bool = True, seed: Optional[int] = 42,
                   **config_kwargs) -> "DSLForDiffusionLM":
        """Build a DSL model from a LLaDA checkpoint (`GSAI-ML/LLaDA-8B-Base` / `-Instruct` format) or
        from a released DSL-LLaDA checkpoint (`liddlefish/DSL-LLaDA-*`), reference llada_dsl.md.

        Reads `config.json` (§1.1: d_model, n_layers, n_heads, n_kv_heads, mlp_hidden_size,
        vocab_size / embedding_size, rope_theta, rms_norm_eps, max_sequence_length, mask_token_id;
        unsupported architecture switches raise) and the sharded `model.transformer.*` safetensors
        strictly (missing, unexpected and mis-shaped keys are named). The converter starts as
        DSL-LLaDA's (§5.2): W_trans[:, :V] = wteᵀ, the mask column = wte[mask_token_id] (126336),
        c = PyTorch's Linear default U(±1/√(V+1)), β₀ and the mask bias (ln V) from `preset`, fresh
        unit-sphere embeddings of `noise_dim` (default 100, the released models', §5). A released
        DSL-LLaDA checkpoint's extra keys (`noise_embed.weight`, `converter.backbone_embedding.*`,
        `converter.beta`, `converter.logit_bias`, `log_snr_max` → `snr_max`) replace that init, so
        their converter + backbone give the same outputs here.

        Special ids: `eos_token_id` is [EOS, <|eot_id|>] (both end text), read from the folder's
        tokenizer files when present, else LLaDA-8B's 126081 and 126348 (§1.1); pad = EOS.

        Args:
            preset: SNR / init preset (default "dsl_llada", §5.3).
            torch_dtype: parameter dtype; None keeps the checkpoint's (bf16 for LLaDA-8B).
            freeze_lm_head: `requires_grad=False` on the LM head (the authors' DSL_FREEZE_FFOUT=1, §5.4).
            freeze_noise_embeddings: `requires_grad=False` on E (the authors' frozen noise_embed, §5.4).
            freeze_token_embedding: `requires_grad=False` on wte (it gets no gradient: the converter
                feeds the blocks, §5.4).
            seed: seed of the fresh converter bias and unit-sphere embeddings (default 42, the seed of
                the authors' embedding release file, §5.2), drawn without touching the global
                random state, so shards and resumed runs load the same model; None: the global state.
            Other arguments as `from_published`; the flags are not saved (re-apply after reloading).
        """
        folder = resolve_checkpoint_dir(pretrained_model_name_or_path, revision)
        specials = llada_special_ids(folder)
        config_kwargs.setdefault("eos_token_id", specials["eos_token_id"])
        config_kwargs.setdefault("pad_token_id", specials["pad_token_id"])
        model = cls.from_published(folder, "llada", preset=preset, strict=strict, torch_dtype=torch_dtype,
                                   warm_start=False, defaults=dict(noise_dim=100), seed=seed, **config_kwargs)
        if freeze_lm_head:
            model.get_output_embeddings().weight.requires_grad_(False)
        if freeze_noise_embeddings:
            model.embed.weight.requires_grad_(False)
        if freeze_token_embedding:
            model.backbone.token_embedding().weight.requires_grad_(False)
        return model

    @classmethod
    def from_published(cls, pretrained_model_name_or_path: str, backbone_type: str, preset: str = "paper",
                       strict: bool = True, revision: Optional[str] = None,
                       torch_dtype: Optional[torch.dtype] = None, warm_start: bool = True,
                       defaults: Optional[dict] = None, seed: Optional[int] = None,
                       **config_kwargs) -> "DSLForDiffusionLM":
        """Build a DSL model from a published checkpoint of a registered backbone's format.

        The backbone reads the checkpoint's config and tensors (`config_from_published`,
        `weights_from_published`); W_trans starts from the published input embedding. With
        `warm_start` the converter's mask bias starts from `warm_start_mask_bias(V)` = ln(99(V+1)),
        the authors' MDLM init (reference/dsl_official.md §3.1), unless `mask_bias_init` is passed;
        otherwise it follows the preset. Tensors already trained by DSL (a released DSL model's
        converter and embeddings, `PublishedWeights.dsl_state_dict`) replace the fresh init.

        Memory: the model is built on the `meta` device and every published tensor is assigned in
        place (no second copy, no random init of the backbone); only the converter and embeddings
        are allocated fresh. Peak host memory ≈ checkpoint + converter (benchmarks/bench_llada_load.py).

        Args:
            pretrained_model_name_or_path: local directory or Hub repo id.
            backbone_type: a key of `BACKBONES`.
            preset: a name of `SNR_PRESETS` (see `DSLConfig.preset_fields`).
            strict: raise `ValueError` listing missing, unexpected and mis-shaped keys.
            revision: Hub revision.
            torch_dtype: parameter dtype; None keeps the published input embedding's dtype.
            warm_start: start the mask bias at the MDLM warm start (see above).
            defaults: `DSLConfig` fields used unless the checkpoint or `config_kwargs` give them.
            seed: draw the fresh tensors (spherical embeddings, converter bias) under
                `torch.manual_seed(seed)`, leaving the global random state as it was, so every
                load of the same checkpoint builds the same model; None draws from the global state.
            config_kwargs: further `DSLConfig` fields; the ones read from the checkpoint cannot be
                overridden (`ValueError`).
        """
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        backbone_cls = backbone_class(backbone_type)
        folder = resolve_checkpoint_dir(pretrained_model_name_or_path, revision)
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            published_config = json.load(f)
        state = load_safetensors_dir(folder)
        fields = backbone_cls.config_from_published(published_config, state)
        clash = sorted(set(fields) & set(config_kwargs))
        if clash:
            raise ValueError(f"{clash} are read from the {backbone_cls.published_format} checkpoint and cannot be "
                             "overridden")
        for key, value in (defaults or {}).items():
            if key not in fields:
                config_kwargs.setdefault(key, value)
        if warm_start:
            config_kwargs.setdefault("mask_bias_init", warm_start_mask_bias(fields["vocab_size"]))
        config = DSLConfig.from_preset(preset, **fields, **config_kwargs)
        weights = backbone_cls.weights_from_published(state, config)
        del state
        dtype = torch_dtype if torch_dtype is not None else weights.input_embedding.dtype
        with torch.device("meta"):
            model = cls(config)
        model.to(dtype)
        mapped = {f"backbone.{k}": v for k, v in weights.state_dict.items()}
        mapped.update(weights.dsl_state_dict)
        expected = {k: v for k, v in model.state_dict().items()
                    if k.startswith("backbone.") or (weights.dsl_state_dict and k in released_dsl_names(model))}
        report = compare_keys(expected, mapped)
        report["unexpected"] = sorted(report["unexpected"] + list(weights.unexpected))
        if any(report.values()):
            message = "; ".join(f"{kind}: {names}" for kind, names in report.items() if names)
            if strict:
                raise ValueError(f"checkpoint {folder} ({backbone_cls.published_format} format) does not match the "
                                 f"DSL model ({message})")
            logger.warning("checkpoint mismatches (loaded the rest): %s", message)
        mapped = {k: v.to(dtype) if v.is_floating_point() else v for k, v in mapped.items()
                  if k in expected and tuple(expected[k].shape) == tuple(v.shape)}
        model.load_state_dict(mapped, strict=False, assign=True)
        loaded = set(mapped)
        del mapped
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            materialize_meta(model)
            if not loaded & released_dsl_names(model):
                model.converter.init_from_embedding(weights.input_embedding, weights.mask_embedding)
                if backbone_type == "llada" and model.converter.backbone_embedding.bias is not None:
                    # DSL-LLaDA keeps c at PyTorch's Linear default U(±1/√(V+1)) (llada_dsl.md §5.2).
                    bound = 1.0 / math.sqrt(config.vocab_size + 1)
                    with torch.no_grad():
                        model.converter.backbone_embedding.bias.uniform_(-bound, bound)
        return model


def released_dsl_names(model) -> set:
    """Names of the converter and spherical-embedding tensors (what a DSL-trained release adds)."""
    return {k for k in model.state_dict() if k == "embed.weight" or k.startswith("converter.")}


def materialize_meta(model: nn.Module) -> None:
    """Allocate every parameter / buffer still on `meta` (not in the checkpoint) on the CPU and give
    it the model's own init (`_init_weights` of its module)."""
    for module in model.modules():
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        if any(t.is_meta for _, t in tensors):
            module.to_empty(device="cpu", recurse=False)
            model._init_weights(module)


def llada_special_ids(folder: str) -> dict:
    """{eos_token_id: [EOS, <|eot_id|>], pad_token_id} of a LLaDA folder. EOS / pad come from its
    config.json (LLaDA-8B: 126081, llada_dsl.md §1.1), <|eot_id|> from its `tokenizer.json` when
    present, else 126348 when the vocabulary is LLaDA-8B's (§1.1)."""
    from .backbone_llada import LLADA_EOS_TOKEN_ID, LLADA_EOT_TOKEN_ID, LLADA_VOCAB_SIZE

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        published = json.load(f)
    added = {}
    path = os.path.join(folder, "tokenizer.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            added = {t["content"]: t["id"] for t in json.load(f).get("added_tokens", [])}
    eos = published.get("eos_token_id", added.get("<|endoftext|>", LLADA_EOS_TOKEN_ID))
    eot = added.get("<|eot_id|>")
    if eot is None and published.get("embedding_size", published.get("vocab_size")) == LLADA_VOCAB_SIZE:
        eot = LLADA_EOT_TOKEN_ID
    return dict(eos_token_id=[eos] if eot is None else [eos, eot], pad_token_id=published.get("pad_token_id", eos))


# --------------------------------------------------------------------------- checkpoint I/O (any backbone)


def load_tokenizer(name_or_path: str, **kwargs):
    """`AutoTokenizer.from_pretrained` for a checkpoint folder or repo, without remote code.

    A DSL (or LLaDA) checkpoint's config.json names remote model classes (`auto_map`), which makes
    transformers ask "run custom code? [y/N]" (15 s timeout) when it reads the config to find the
    tokenizer; the tokenizers themselves (GPT-2 BPE, LLaDA's) are standard, so none is needed."""
    from transformers import AutoTokenizer

    kwargs.setdefault("trust_remote_code", False)
    return AutoTokenizer.from_pretrained(name_or_path, **kwargs)


def resolve_checkpoint_dir(name_or_path: str, revision: Optional[str] = None) -> str:
    """A local directory as is; otherwise download the repo's config and safetensors from the Hub."""
    if os.path.isdir(name_or_path):
        return name_or_path
    from huggingface_hub import snapshot_download

    return snapshot_download(name_or_path, revision=revision, allow_patterns=["*.json", "*.safetensors"])


def load_safetensors_dir(folder: str) -> dict:
    """All tensors of `model.safetensors` or of the shards listed in `model.safetensors.index.json`."""
    from safetensors.torch import load_file

    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        return load_file(single)
    index = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.exists(index):
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}")
    with open(index, encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for shard in shards:
        state.update(load_file(os.path.join(folder, shard)))
    return state


def compare_keys(expected: dict, provided: dict) -> dict:
    """Names of missing, unexpected and mis-shaped keys between two state dicts."""
    return {
        "missing": sorted(set(expected) - set(provided)),
        "unexpected": sorted(set(provided) - set(expected)),
        "mis-shaped": sorted(
            f"{k} {tuple(provided[k].shape)} != {tuple(expected[k].shape)}"
            for k in set(expected) & set(provided)
            if tuple(provided[k].shape) != tuple(expected[k].shape)
        ),
    }


DSLConfig.register_for_auto_class()
DSLForDiffusionLM.register_for_auto_class("AutoModelForMaskedLM")
