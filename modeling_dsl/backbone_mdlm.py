"""The MDLM diffusion transformer (DiT) as a DSL backbone: no time input, `inputs_embeds` in.

Same module tree and parameter names as `kuleshov-group/mdlm` `models/dit.py` (under its
`backbone.` attribute), so the published `backbone.*` tensors load one-to-one, except
`vocab_embed` (its role passes to the converter's W_trans) and the output layer's mask row
(DSL predicts only real tokens). DSL has no time input: the adaLN conditioning is always
c = SiLU(sigma_map(σ = 0)), the constant MDLM's released OWT model was trained with.

Everything MDLM-specific lives here, including reading the published `kuleshov-group/mdlm-owt`
format (`config.json` fields, `backbone.*` tensors; reference/mdlm_remdm.md §2).
"""

import logging
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from .backbone_base import DSLBackbone, PublishedWeights

logger = logging.getLogger(__name__)


class TimestepEmbedder(nn.Module):
    """MDLM's `sigma_map`: sinusoidal features [cos, sin] of σ → MLP (256 → cond → cond)."""

    def __init__(self, cond_dim: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, cond_dim, bias=True),
            nn.SiLU(),
            nn.Linear(cond_dim, cond_dim, bias=True),
        )

    def features(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
        args = sigma.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # cos first, as in MDLM

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        """(B,) σ → (B, cond_dim)."""
        weight = self.mlp[0].weight
        return self.mlp(self.features(sigma).to(weight.dtype))


class RotaryEmbedding(nn.Module):
    """Rotary angles θ_{p,j} = p / base^(2j/head_dim); `inv_freq` is a persistent fp32 buffer (it is
    one of the published keys)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=True)

    def compute_inv_freq(self) -> torch.Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))

    def forward(self, seq_len: int, device) -> tuple:
        """cos, sin of shape (seq_len, head_dim / 2), fp32 (bf16 angles corrupt low frequencies)."""
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        angles = positions[:, None] * self.inv_freq.float().to(device)[None]
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX rotate-half rotary on (B, H, L, Dh): x'[j] = x[j]cos − x[j+h]sin, x'[j+h] = x[j+h]cos + x[j]sin."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


class LayerNorm(nn.Module):
    """MDLM's LayerNorm: fp32 normalisation without bias, then a learned per-channel weight."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            normed = F.layer_norm(x.float(), [self.dim])
            return (normed * self.weight.float()).to(x.dtype)


def zero_init(linear: nn.Linear) -> nn.Linear:
    """Flag a Linear that `_init_weights` starts at zero (MDLM's adaLN and final-layer init)."""
    linear.zero_init = True
    return linear


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DDiTBlock(GradientCheckpointingLayer):
    """adaLN DiT block: x += g1·Attn(mod(LN x)); x += g2·MLP(mod(LN x)). Six modulation chunks in
    the order shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp."""

    def __init__(self, config):
        super().__init__()
        d, self.n_heads = config.hidden_size, config.num_attention_heads
        self.config = config
        self.norm1 = LayerNorm(d)
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.mlp_ratio * d, bias=True),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.mlp_ratio * d, d, bias=True),
        )
        self.adaLN_modulation = zero_init(nn.Linear(config.cond_dim, 6 * d, bias=True))
        self.dropout = config.dropout

    def attention(self, h, cos, sin, attention_mask):
        batch, length, d = h.shape
        # qkv features are laid out (3, heads, head_dim): Q rows, then K, then V, heads contiguous.
        qkv = self.attn_qkv(h).view(batch, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k, v = apply_rotary(qkv[0], cos, sin), apply_rotary(qkv[1], cos, sin), qkv[2]  # (B, H, L, Dh)
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # key padding
        if getattr(self.config, "_attn_implementation", "sdpa") == "eager":
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            out = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.attn_out(out.transpose(1, 2).reshape(batch, length, d))

    def forward(self, x, c, cos, sin, attention_mask=None):
        """x: (B, L, D), c: (B or 1, cond_dim), cos/sin: (L, Dh/2), attention_mask: (B, L) 1 = keep."""
        mods = self.adaLN_modulation(c)[:, None, :].chunk(6, dim=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        attn = self.attention(h, cos, sin, attention_mask)
        # Residual adds in x's dtype: under autocast the branches are bf16 but the stream stays fp32 (MDLM).
        x = x + gate_msa * F.dropout(attn, p=self.dropout, training=self.training)
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        x = x + gate_mlp * F.dropout(self.mlp(h), p=self.dropout, training=self.training)
        return x


class DDitFinalLayer(nn.Module):
    """LN → adaLN modulation (shift first, then scale) → Linear(D → V) with bias."""

    def __init__(self, hidden_size: int, out_channels: int, cond_dim: int):
        super().__init__()
        self.norm_final = LayerNorm(hidden_size)
        self.linear = zero_init(nn.Linear(hidden_size, out_channels, bias=True))
        self.adaLN_modulation = zero_init(nn.Linear(cond_dim, 2 * hidden_size, bias=True))

    def features(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (..., D) with c (cond_dim,) → the linear's input (..., D)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # (D,) each, broadcast over positions
        return modulate(self.norm_final(x), shift, scale)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (..., D) with c (cond_dim,) → logits (..., V)."""
        return self.linear(self.features(x, c))


class MDLMDiT(DSLBackbone):
    """MDLM DiT without its token embedding: `inputs_embeds` (B, L, D) → hidden (B, L, D).

    `forward` runs the blocks; `logits(hidden)` applies the final layer to any subset of
    positions (it acts per position), so samplers pay for the LM head only where they need it.
    """

    backbone_type = "mdlm_dit"
    published_format = "kuleshov-group/mdlm-owt"
    no_split_modules = ("DDiTBlock",)
    # The DiT blocks' linears only: a plain suffix list like "mlp.0" also matches the constant
    # σ-embedder `sigma_map.mlp.0` (PEFT matches name suffixes).
    lora_target_modules = r"blocks\.\d+\.(?:attn_qkv|attn_out|mlp\.0|mlp\.2)"

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.rotary_emb = RotaryEmbedding(config.hidden_size // config.num_attention_heads, config.rope_theta)
        self.blocks = nn.ModuleList([DDiTBlock(config) for _ in range(config.num_hidden_layers)])
        self.output_layer = DDitFinalLayer(config.hidden_size, config.vocab_size, config.cond_dim)

    def conditioning(self, device) -> torch.Tensor:
        """c = SiLU(sigma_map(σ = 0)), shape (1, cond_dim): DSL's only 'time' input is this constant."""
        sigma = torch.zeros(1, device=device)
        return F.silu(self.sigma_map(sigma))

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """inputs_embeds: (B, L, D); attention_mask: (B, L) with 1 for real keys, or None
        when nothing is padded (SDPA then takes its unmasked kernel). Returns (B, L, D) in the
        dtype of `inputs_embeds`: the residual adds keep it (fp32 under autocast, as MDLM)."""
        x = inputs_embeds
        c = self.conditioning(x.device).to(x.dtype)
        cos, sin = self.rotary_emb(x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, c, cos, sin, attention_mask)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final layer on hidden states of any leading shape (..., D) → logits (..., V)."""
        c = self.conditioning(hidden.device).to(hidden.dtype)[0]  # (cond_dim,): broadcasts over any (..., D)
        return self.output_layer(hidden, c)

    def head_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """LN and adaLN modulation of the final layer: (..., D) → the LM head linear's input (..., D)."""
        return self.output_layer.features(hidden, self.conditioning(hidden.device).to(hidden.dtype)[0])

    def get_output_embeddings(self) -> nn.Module:
        return self.output_layer.linear

    def init_module(self, module: nn.Module) -> None:
        """MDLM's init: adaLN modulations and the final linear start at zero (blocks begin as the
        identity), other linears N(0, initializer_range²) with zero bias, norms at 1, rotary
        frequencies recomputed."""
        if isinstance(module, RotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())
        elif isinstance(module, nn.Linear):
            if getattr(module, "zero_init", False):
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, LayerNorm):
            init.ones_(module.weight)

    # ------------------------------------------------------------------ the published MDLM format
    @classmethod
    def config_from_published(cls, published_config: dict, state_dict: dict) -> dict:
        """DSLConfig fields from an MDLM `config.json` (`vocab_size`, `hidden_dim`, `n_blocks`,
        `n_heads`, `model_length`, `cond_dim`, `dropout`). cond_dim comes from the weights when the
        json's value disagrees (MDLMConfig's class default 129 is wrong for mdlm-owt)."""
        required = ("vocab_size", "hidden_dim", "n_blocks", "n_heads", "model_length")
        missing = [k for k in required if k not in published_config]
        if missing:
            raise ValueError(f"MDLM config.json lacks fields {missing}")
        if published_config.get("time_conditioning", False):
            logger.warning("This MDLM checkpoint was trained with time conditioning; DSL always feeds σ = 0.")
        cond_dim = published_config.get("cond_dim")
        sigma_w = state_dict.get("backbone.sigma_map.mlp.0.weight")
        if sigma_w is not None:
            cond_dim = int(sigma_w.shape[0])
        vocab_with_mask = int(published_config["vocab_size"])
        return dict(
            backbone_type=cls.backbone_type,
            vocab_size=vocab_with_mask - 1,
            mask_token_id=vocab_with_mask - 1,  # MDLM's mask id = len(GPT-2 tokenizer) = 50257
            hidden_size=int(published_config["hidden_dim"]),
            num_hidden_layers=int(published_config["n_blocks"]),
            num_attention_heads=int(published_config["n_heads"]),
            cond_dim=int(cond_dim if cond_dim is not None else 128),
            max_position_embeddings=int(published_config["model_length"]),
            dropout=float(published_config.get("dropout", 0.1)),
        )

    @classmethod
    def weights_from_published(cls, state_dict: dict, config) -> PublishedWeights:
        """MDLM `backbone.*` tensors → this module's names. `backbone.vocab_embed.embedding`
        (V+1, D) is the W_trans init source (its row `mask_token_id`, MDLM's [MASK], the mask
        column); the output layer's mask row is dropped (DSL predicts the V real tokens);
        `rotary_emb.inv_freq` is kept in fp32."""
        prefix = "backbone."
        mapped, unexpected, vocab_embed = {}, [], None
        for key, tensor in state_dict.items():
            if key == prefix + "vocab_embed.embedding":
                vocab_embed = tensor
                continue
            if not key.startswith(prefix):
                unexpected.append(key)
                continue
            name = key[len(prefix):]
            if name in ("output_layer.linear.weight", "output_layer.linear.bias"):
                keep = torch.ones(tensor.shape[0], dtype=torch.bool)
                keep[config.mask_token_id] = False
                tensor = tensor[keep]
            if name.endswith("rotary_emb.inv_freq"):
                tensor = tensor.float()
            mapped[name] = tensor
        if vocab_embed is None:
            raise ValueError("MDLM checkpoint has no backbone.vocab_embed.embedding to initialise the converter")
        return PublishedWeights(mapped, vocab_embed, vocab_embed[config.mask_token_id], unexpected)
