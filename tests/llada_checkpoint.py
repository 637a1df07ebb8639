"""Tiny checkpoints in the published LLaDA format (reference llada_dsl.md §1) and in the released
DSL-LLaDA format (§5), written by tests; importable by any test file
(`from llada_checkpoint import write_llada_checkpoint, llada_tokenizer`).

The format: `config.json` with the LLaDA keys of §1.1, the `model.transformer.*` tensors of §1.2
sharded over `model-0000k-of-0000n.safetensors` with `model.safetensors.index.json`, and a
tokenizer carrying LLaDA's special tokens and the Instruct chat template of §3.
"""

import json
import math
from pathlib import Path

import torch

# The Instruct chat template (llada_dsl.md §3, Llama-3 style; BOS only before the first message).
LLADA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SPECIALS = ["<|startoftext|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|mdm_mask|>"]
TINY_LLADA = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=48)


def llada_tokenizer(tok_dir):
    """The tests' byte-level BPE (conftest `tok_dir`, `<|endoftext|>` = EOS = pad) plus LLaDA's
    special tokens (appended after it) and the Instruct chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    tok.bos_token = "<|startoftext|>"
    tok.chat_template = LLADA_CHAT_TEMPLATE
    return tok


def llada_config(vocab_size: int, mask_token_id: int, eos_token_id: int, **shape) -> dict:
    """A published-style LLaDA config.json (§1.1) for a tiny shape; `shape` may also override any
    other key (e.g. `max_sequence_length`, 256 by default)."""
    dims = dict(TINY_LLADA, **shape)
    return {
        "model_type": "llada", "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        **dims, "mlp_ratio": 4, "activation_type": "silu", "block_type": "llama",
        "vocab_size": vocab_size, "embedding_size": vocab_size, "mask_token_id": mask_token_id,
        "eos_token_id": eos_token_id, "pad_token_id": eos_token_id,
        "rope": True, "rope_theta": 500000.0, "rope_full_precision": True, "alibi": False,
        "flash_attention": False, "layer_norm_type": "rms", "rms_norm_eps": 1e-5,
        "layer_norm_with_affine": True, "include_bias": False, "include_qkv_bias": False,
        "bias_for_layer_norm": False, "attention_layer_norm": False, "input_emb_norm": False,
        "scale_logits": False, "weight_tying": False, "max_sequence_length": 256,
        "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0,
        "block_group_size": 1, "multi_query_attention": None, "init_fn": "mitchell", "init_std": 0.02,
        "init_device": "meta", "precision": "amp_bf16", "use_cache": False,
        **dims,
    }


def llada_state_dict(config: dict, seed: int = 0, std: float = 0.3, head_std: float = 0.2) -> dict:
    """Random tensors under the published names and shapes (§1.2): wte N(0, 1), LM head N(0, head_std²),
    other matrices N(0, std²), norm weights 1 + N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    d, f, v = config["d_model"], config["mlp_hidden_size"], config["embedding_size"]
    kv = config["n_kv_heads"] * d // config["n_heads"]

    def w(*shape, scale=std):
        return torch.randn(*shape, generator=g) * scale

    p = "model.transformer."
    state = {p + "wte.weight": w(v, d, scale=1.0)}
    for i in range(config["n_layers"]):
        b = f"{p}blocks.{i}."
        state.update({
            b + "attn_norm.weight": 1 + w(d, scale=0.1), b + "q_proj.weight": w(d, d), b + "k_proj.weight": w(kv, d),
            b + "v_proj.weight": w(kv, d), b + "attn_out.weight": w(d, d), b + "ff_norm.weight": 1 + w(d, scale=0.1),
            b + "ff_proj.weight": w(f, d), b + "up_proj.weight": w(f, d), b + "ff_out.weight": w(d, f),
        })
    state[p + "ln_f.weight"] = 1 + w(d, scale=0.1)
    state[p + "ff_out.weight"] = w(v, d, scale=head_std)
    return state


def released_dsl_tensors(config: dict, noise_dim: int = 12, seed: int = 1, beta: float = 0.99) -> dict:
    """The extra keys of a released DSL-LLaDA checkpoint (§5), random but in their shapes and roles:
    unit-norm `noise_embed` (and its copy `converter.embed.weight`), W (D, V+1), c, β [], b, log s_max."""
    g = torch.Generator().manual_seed(seed)
    v, d = config["embedding_size"], config["d_model"]
    embed = torch.nn.functional.normalize(torch.randn(v, noise_dim, generator=g), dim=-1)
    bias = torch.randn(v + 1, generator=g) * 0.5
    bias[-1] = math.log(v)
    return {
        "noise_embed.weight": embed, "converter.embed.weight": embed.clone(),
        "converter.backbone_embedding.weight": torch.randn(d, v + 1, generator=g) * 0.5,
        "converter.backbone_embedding.bias": torch.randn(d, generator=g) * 0.1,
        "converter.beta": torch.tensor(beta), "converter.logit_bias": bias,
        "log_snr_max": torch.tensor(math.log(100.0)),
    }


def write_llada_checkpoint(path, tokenizer=None, *, vocab_size=None, mask_token_id=None, eos_token_id=None,
                           seed=0, shards=2, released=False, noise_dim=12, dtype=torch.float32,
                           drop=(), reshape=None, head_std=0.2, **shape):
    """Write a tiny LLaDA-format checkpoint (or, with `released=True`, DSL-LLaDA's released format)
    to `path` and return its tensors (fp32, published names) for reference computations.

    `tokenizer` (from `llada_tokenizer`) sets V, the mask id (`<|mdm_mask|>`) and EOS, and is saved
    alongside; without it give `vocab_size`, `mask_token_id`, `eos_token_id`. `drop` removes keys and
    `reshape` {key: shape} replaces tensors by random ones of another shape (broken checkpoints).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        vocab_size = len(tokenizer)
        mask_token_id = tokenizer.convert_tokens_to_ids("<|mdm_mask|>")
        eos_token_id = tokenizer.eos_token_id
        tokenizer.save_pretrained(path)
    config = llada_config(vocab_size, mask_token_id, eos_token_id, **shape)
    state = llada_state_dict(config, seed, head_std=head_std)
    if released:
        state.update(released_dsl_tensors(config, noise_dim))
    for key in drop:
        state.pop(key)
    for key, new_shape in (reshape or {}).items():
        state[key] = torch.randn(*new_shape)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    keys = list(state)
    per = math.ceil(len(keys) / shards)
    weight_map = {}
    for k in range(shards):
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: state[key].to(dtype).contiguous() for key in keys[k * per:(k + 1) * per]}
        save_file(part, str(path / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return {k: v.float() for k, v in state.items()}
