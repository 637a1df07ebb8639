"""The MDLM diffusion transformer (DiT) as a DSL backbone: no time input, `inputs_embeds` in.

Same module tree and parameter names as `kuleshov-group/mdlm` `models/dit.py` (under its
`backbone.` attribute), so the published `backbone.*` tensors load one-to-one, except
`vocab_embed` (its role passes to the converter's W_trans) and the output layer's mask row
(DSL predicts only real tokens). DSL has no time input: the adaLN conditioning is always
c = SiLU(sigma_map(σ = 0)), the constant MDLM's released OWT model was trained with.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


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

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (..., D) with c broadcastable (1, cond_dim) → logits (..., V)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # (1, D) each, broadcast over positions
        return self.linear(modulate(self.norm_final(x), shift, scale))


class MDLMDiT(nn.Module):
    """MDLM DiT without its token embedding: `inputs_embeds` (B, L, D) → hidden (B, L, D).

    `forward` runs the blocks; `logits(hidden)` applies the final layer to any subset of
    positions (it acts per position), so samplers pay for the LM head only where they need it.
    """

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
        when nothing is padded (SDPA then takes its unmasked kernel). Returns (B, L, D)."""
        x = inputs_embeds
        c = self.conditioning(x.device).to(x.dtype)
        cos, sin = self.rotary_emb(x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, c, cos, sin, attention_mask)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final layer on hidden states of any leading shape (..., D) → fp32 logits (..., V)."""
        c = self.conditioning(hidden.device).to(hidden.dtype)
        return self.output_layer(hidden, c).float()
