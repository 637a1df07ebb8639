"""The LLaDA transformer (GSAI-ML/LLaDA-8B-*) as a DSL backbone: `inputs_embeds` in, bidirectional,
untied LM head.

Same module tree and parameter names as the published checkpoints under their `model.transformer.`
prefix (reference llada_dsl.md §1.2), so the published tensors load one-to-one under `backbone.`:
`wte` (the token embedding: the converter's W_trans init source, and the clean prompt embedding of
DSL-LLaDA, §5.5), `blocks.{i}.{attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm, ff_proj,
up_proj, ff_out}`, `ln_f`, `ff_out` (the LM head). No biases.

Forward (llada_dsl.md §2): per block x ← x + attn_out(Attn(RMSNorm(x))),
x ← x + ff_out(SiLU(ff_proj(h)) · up_proj(h)) with h = RMSNorm(x); then ln_f and the LM head.
Attention is bidirectional SDPA at scale 1/√head_dim with an optional key-padding mask; RoPE
(θ = 500000 in the published config) uses the rotate-half convention on the absolute positions
0..T−1 (left padding shifts them, as in LLaDA), in fp32.

Everything LLaDA-specific lives here, including reading the published format (`config.json`
keys of §1.1, `model.transformer.*` tensors) and the extra keys of the released DSL-LLaDA
checkpoints (§5: `noise_embed.weight`, `converter.*`, `log_snr_max`).
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from .backbone_base import DSLBackbone, PublishedWeights
from .backbone_mdlm import apply_rotary

# LLaDA-8B's special ids (llada_dsl.md §1.1): [MASK] `<|mdm_mask|>`, EOS = pad `<|endoftext|>`,
# end of turn `<|eot_id|>`. Used only when the checkpoint's config.json / tokenizer lack them.
LLADA_MASK_TOKEN_ID = 126336
LLADA_EOS_TOKEN_ID = 126081
LLADA_EOT_TOKEN_ID = 126348
LLADA_VOCAB_SIZE = 126464
PREFIX = "model.transformer."

# Published config.json values this implementation supports (§1.1, §2); any other value is refused.
SUPPORTED = {
    "activation_type": ("silu",),  # §2.3: 'swiglu' would halve ff_out's input
    "block_type": ("llama",),  # LLaDALlamaBlock
    "layer_norm_type": ("rms",),
    "weight_tying": (False,),
    "include_bias": (False,),
    "include_qkv_bias": (False, None),
    "alibi": (False, None),
    "rope": (True,),
    "attention_layer_norm": (False, None),
    "input_emb_norm": (False, None),
    "scale_logits": (False, None),
}

# The released DSL-LLaDA checkpoints' converter keys (llada_dsl.md §5) → this model's names.
RELEASED_DSL_KEYS = {
    "noise_embed.weight": "embed.weight",
    "converter.backbone_embedding.weight": "converter.backbone_embedding.weight",
    "converter.backbone_embedding.bias": "converter.backbone_embedding.bias",
    "converter.beta": "converter.beta",
    "converter.logit_bias": "converter.logit_bias",
}


class RMSNorm(nn.Module):
    """LLaDA's RMSNorm (§2.3): x·rsqrt(mean(x²) + eps) in fp32, cast back to x's dtype, × weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            normed = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).to(x.dtype)
            return normed * self.weight.to(x.dtype)


def rope_angles(length: int, head_dim: int, theta: float, device) -> tuple:
    """cos, sin of shape (length, head_dim / 2), fp32: angle = p · θ^(−2j/head_dim), p = 0..length−1
    (§2.2; LLaDA saves no rotary buffers)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.arange(length, dtype=torch.float32, device=device)[:, None] * inv_freq[None]
    return angles.cos(), angles.sin()


class LLaDABlock(GradientCheckpointingLayer):
    """LLaDALlamaBlock (§2): pre-norm bidirectional attention and a SiLU-gated MLP
    (`ff_proj` = gate, `up_proj` = up, `ff_out` = down), both residual."""

    def __init__(self, config):
        super().__init__()
        d, self.n_heads = config.hidden_size, config.num_attention_heads
        self.n_kv_heads = config.effective_num_key_value_heads
        self.head_dim = d // self.n_heads
        self.config = config
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d, config.intermediate_size, bias=False)
        self.ff_out = nn.Linear(config.intermediate_size, d, bias=False)

    def attention(self, h, cos, sin, attention_mask):
        batch, length, d = h.shape
        q = self.q_proj(h).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # (B, H, L, Dh)
        if self.n_kv_heads != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # key padding
        if getattr(self.config, "_attn_implementation", "sdpa") == "eager":
            scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            out = torch.softmax(scores, dim=-1).to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.attn_out(out.transpose(1, 2).reshape(batch, length, d))

    def forward(self, x, cos, sin, attention_mask=None):
        """x: (B, L, D), the residual stream, kept in x's dtype (fp32 under autocast, as the MDLM
        backbone); returns (B, L, D)."""
        x = x + self.attention(self.attn_norm(x), cos, sin, attention_mask).to(x.dtype)
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h)).to(x.dtype)


class LLaDATransformer(DSLBackbone):
    """LLaDA's `model.transformer`: `inputs_embeds` (B, L, D) → hidden (B, L, D); `logits(hidden)` =
    ff_out(ln_f(hidden)) on any subset of positions. `wte` is not on the main path (the converter
    feeds the blocks); it embeds clean tokens (`token_embedding`)."""

    # The blocks' attention and MLP projections; `ff_out` directly under the backbone is the LM head.
    lora_target_modules = r"blocks\.\d+\.(?:q_proj|k_proj|v_proj|attn_out|ff_proj|up_proj|ff_out)"
    backbone_type, published_format, no_split_modules = "llada", "GSAI-ML/LLaDA-8B", ("LLaDABlock",)

    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.config = config
        self.blocks = nn.ModuleList([LLaDABlock(config) for _ in range(config.num_hidden_layers)])
        self.ln_f = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ff_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """inputs_embeds: (B, L, D); attention_mask: (B, L), 1 for real keys, or None. A mask without
        a 0 is dropped, as in LLaDA (§2.1). Returns the pre-`ln_f` hidden states (B, L, D)."""
        x = inputs_embeds
        if attention_mask is not None and bool(attention_mask.bool().all()):
            attention_mask = None
        cos, sin = rope_angles(x.shape[1], self.config.head_dim, self.config.rope_theta, x.device)
        for block in self.blocks:
            x = block(x, cos, sin, attention_mask)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """ln_f then the untied LM head on hidden states of any leading shape (..., D) → (..., V)."""
        return self.ff_out(self.ln_f(hidden))

    def head_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """ln_f: (..., D) → the LM head's input (..., D)."""
        return self.ln_f(hidden)

    def get_output_embeddings(self) -> nn.Module:
        return self.ff_out

    def token_embedding(self) -> nn.Module:
        return self.wte

    def init_module(self, module: nn.Module) -> None:
        """Linears and the embedding N(0, initializer_range²) (LLaDA's init_std 0.02, §1.1), norms 1."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)

    # ------------------------------------------------------------------ the published LLaDA format
    @classmethod
    def config_from_published(cls, published_config: dict, state_dict: dict) -> dict:
        """DSLConfig fields from a LLaDA `config.json` (§1.1). Every shape key is read explicitly
        (LLaDAConfig would fill missing ones with GPT-2-like defaults); unsupported architecture
        switches raise. A released DSL-LLaDA checkpoint also gives `noise_dim` (noise_embed's width)
        and `snr_max` = exp(log_snr_max)."""
        required = ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "vocab_size")
        missing = [k for k in required if published_config.get(k) is None]
        if missing:
            raise ValueError(f"LLaDA config.json lacks fields {missing}")
        for key, allowed in SUPPORTED.items():
            if key in published_config and published_config[key] not in allowed:
                raise ValueError(f"LLaDA config.json: {key}={published_config[key]!r} is not supported "
                                 f"(this backbone implements {allowed[0]!r}; llada_dsl.md §1.1)")
        vocab = int(published_config.get("embedding_size") or published_config["vocab_size"])
        fields = dict(
            backbone_type=cls.backbone_type,
            vocab_size=vocab,
            hidden_size=int(published_config["d_model"]),
            num_hidden_layers=int(published_config["n_layers"]),
            num_attention_heads=int(published_config["n_heads"]),
            num_key_value_heads=int(published_config.get("n_kv_heads") or published_config["n_heads"]),
            intermediate_size=int(published_config["mlp_hidden_size"]),
            rope_theta=float(published_config.get("rope_theta", 10000.0)),  # OLMo's default when absent
            rms_norm_eps=float(published_config.get("rms_norm_eps", 1e-5)),
            max_position_embeddings=int(published_config.get("max_sequence_length", 4096)),
            mask_token_id=int(published_config.get("mask_token_id", LLADA_MASK_TOKEN_ID)),
            dropout=0.0,  # §1.1: all dropouts 0
        )
        noise = state_dict.get("noise_embed.weight")
        if noise is not None:
            fields["noise_dim"] = int(noise.shape[1])
        log_snr_max = state_dict.get("log_snr_max")
        if log_snr_max is not None:
            fields["snr_max"] = float(torch.as_tensor(log_snr_max).float().exp())
        return fields

    @classmethod
    def weights_from_published(cls, state_dict: dict, config) -> PublishedWeights:
        """`model.transformer.*` → this module's names, one to one (`wte` included: the prompt's clean
        embedding). `wte` is the W_trans init source and its row `mask_token_id` (`<|mdm_mask|>`) the
        mask column (§5.2). The released DSL-LLaDA keys become `converter` / `embed` tensors
        (`converter.embed.weight`, a copy of `noise_embed.weight`, and `log_snr_max`, read into the
        config, are consumed)."""
        mapped, extra, unexpected = {}, {}, []
        for key, tensor in state_dict.items():
            if key.startswith(PREFIX):
                mapped[key[len(PREFIX):]] = tensor
            elif key in RELEASED_DSL_KEYS:
                if key == "converter.beta":
                    tensor = tensor.reshape(1)
                extra[RELEASED_DSL_KEYS[key]] = tensor
            elif key not in ("converter.embed.weight", "log_snr_max"):
                unexpected.append(key)
        if "wte.weight" not in mapped:
            raise ValueError(f"LLaDA checkpoint has no {PREFIX}wte.weight to initialise the converter")
        wte = mapped["wte.weight"]
        if not 0 <= config.mask_token_id < wte.shape[0]:
            raise ValueError(f"mask_token_id={config.mask_token_id} is not a row of {PREFIX}wte.weight "
                             f"{tuple(wte.shape)}")
        return PublishedWeights(mapped, wte, wte[config.mask_token_id], unexpected, extra)
