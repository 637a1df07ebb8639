"""Loading the published MDLM format through `from_mdlm`, and DiT parity with a plain re-implementation."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from modeling_dsl import DSLForDiffusionLM

TINY = dict(vocab_size=41, model_length=64, hidden_dim=32, cond_dim=16, n_blocks=2, n_heads=4, dropout=0.1)


def mdlm_state_dict(cfg, seed=0):
    """Random tensors under the exact `kuleshov-group/mdlm-owt` key names and shapes (131 keys at full size)."""
    gen = torch.Generator().manual_seed(seed)
    d, c, v = cfg["hidden_dim"], cfg["cond_dim"], cfg["vocab_size"]
    head_dim = d // cfg["n_heads"]

    def r(*shape, std=0.3):
        return torch.randn(*shape, generator=gen) * std

    state = {
        "backbone.vocab_embed.embedding": r(v, d),
        "backbone.sigma_map.mlp.0.weight": r(c, 256, std=0.1),
        "backbone.sigma_map.mlp.0.bias": r(c),
        "backbone.sigma_map.mlp.2.weight": r(c, c),
        "backbone.sigma_map.mlp.2.bias": r(c),
        "backbone.rotary_emb.inv_freq": 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim),
        "backbone.output_layer.norm_final.weight": 1 + r(d, std=0.1),
        "backbone.output_layer.linear.weight": r(v, d, std=0.1),
        "backbone.output_layer.linear.bias": r(v),
        "backbone.output_layer.adaLN_modulation.weight": r(2 * d, c),
        "backbone.output_layer.adaLN_modulation.bias": r(2 * d),
    }
    for i in range(cfg["n_blocks"]):
        p = f"backbone.blocks.{i}."
        state.update({
            p + "norm1.weight": 1 + r(d, std=0.1),
            p + "attn_qkv.weight": r(3 * d, d),
            p + "attn_out.weight": r(d, d),
            p + "norm2.weight": 1 + r(d, std=0.1),
            p + "mlp.0.weight": r(4 * d, d),
            p + "mlp.0.bias": r(4 * d),
            p + "mlp.2.weight": r(d, 4 * d, std=0.1),
            p + "mlp.2.bias": r(d),
            p + "adaLN_modulation.weight": r(6 * d, c),
            p + "adaLN_modulation.bias": r(6 * d),
        })
    return state


def write_mdlm_checkpoint(folder, cfg=TINY, state=None):
    config = {
        "architectures": ["MDLM"], "model_type": "mdlm", "time_conditioning": False,
        "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        **cfg,
    }
    (folder / "config.json").write_text(json.dumps(config))
    state = mdlm_state_dict(cfg) if state is None else state
    save_file(state, str(folder / "model.safetensors"))
    return state


def reference_dit_logits(state, x, cfg):
    """The MDLM DiT forward written out plainly from the reference description (σ = 0)."""
    d, n_heads = cfg["hidden_dim"], cfg["n_heads"]
    hd = d // n_heads
    g = lambda k: state["backbone." + k]  # noqa: E731
    f = torch.cat([torch.ones(128), torch.zeros(128)])  # [cos(0·ω), sin(0·ω)], cos first
    c = F.silu(g("sigma_map.mlp.2.weight") @ F.silu(g("sigma_map.mlp.0.weight") @ f + g("sigma_map.mlp.0.bias"))
               + g("sigma_map.mlp.2.bias"))
    length = x.shape[1]
    theta = torch.arange(length).float()[:, None] * g("rotary_emb.inv_freq")[None, :]  # (L, hd/2)
    cos, sin = theta.cos(), theta.sin()

    def ln(t, w):
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-5) * w

    def rot(t):  # t: (B, L, H, hd), rotate-half over all hd dims
        a, b = t[..., : hd // 2], t[..., hd // 2:]
        cs, sn = cos[None, :, None, :], sin[None, :, None, :]
        return torch.cat([a * cs - b * sn, b * cs + a * sn], dim=-1)

    for i in range(cfg["n_blocks"]):
        p = f"blocks.{i}."
        mod = g(p + "adaLN_modulation.weight") @ c + g(p + "adaLN_modulation.bias")
        sh1, sc1, g1, sh2, sc2, g2 = mod.split(d)
        h = ln(x, g(p + "norm1.weight")) * (1 + sc1) + sh1
        qkv = torch.einsum("bld,ed->ble", h, g(p + "attn_qkv.weight"))
        q, k, v = qkv[..., :d], qkv[..., d: 2 * d], qkv[..., 2 * d:]
        q, k, v = (t.reshape(*t.shape[:2], n_heads, hd) for t in (q, k, v))
        q, k = rot(q), rot(k)
        scores = torch.einsum("blhe,bmhe->bhlm", q, k) / math.sqrt(hd)
        att = torch.einsum("bhlm,bmhe->blhe", torch.softmax(scores, dim=-1), v).reshape(*x.shape)
        x = x + g1 * (att @ g(p + "attn_out.weight").T)
        h = ln(x, g(p + "norm2.weight")) * (1 + sc2) + sh2
        mlp = F.gelu(h @ g(p + "mlp.0.weight").T + g(p + "mlp.0.bias"), approximate="tanh")
        x = x + g2 * (mlp @ g(p + "mlp.2.weight").T + g(p + "mlp.2.bias"))
    mod = g("output_layer.adaLN_modulation.weight") @ c + g("output_layer.adaLN_modulation.bias")
    shift, scale = mod.split(d)  # shift first
    h = ln(x, g("output_layer.norm_final.weight")) * (1 + scale) + shift
    return h @ g("output_layer.linear.weight").T + g("output_layer.linear.bias")


def test_from_mdlm_loads_strictly_and_matches_the_reference_forward(tmp_path):
    state = write_mdlm_checkpoint(tmp_path)
    model = DSLForDiffusionLM.from_mdlm(str(tmp_path)).eval()
    cfg = model.config
    assert (cfg.vocab_size, cfg.mask_token_id, cfg.hidden_size, cfg.num_hidden_layers) == (40, 40, 32, 2)
    assert (cfg.cond_dim, cfg.max_position_embeddings, cfg.num_attention_heads) == (16, 64, 4)
    x = torch.randn(3, 20, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model.backbone.logits(model.backbone(x))
    ref = reference_dit_logits(state, x, TINY)
    assert ours.shape == (3, 20, 40)
    assert (ours - ref[..., :40]).abs().max().item() <= 1e-5  # the mask row (id 40) is dropped
    # the converter starts from MDLM's vocab embedding: W_trans = vocab_embedᵀ, mask column = [MASK]
    torch.testing.assert_close(model.converter.backbone_embedding.weight, state["backbone.vocab_embed.embedding"].T)
    # every backbone tensor came from the checkpoint
    for key, value in model.state_dict().items():
        if key.startswith("backbone.") and "output_layer.linear" not in key:
            torch.testing.assert_close(value, state[key])


def test_from_mdlm_reads_cond_dim_from_the_weights(tmp_path):
    write_mdlm_checkpoint(tmp_path)
    # a config.json carrying MDLMConfig's wrong class default; the tensors say 16
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "cond_dim": 129, "model_type": "mdlm"}))
    assert DSLForDiffusionLM.from_mdlm(str(tmp_path)).config.cond_dim == 16


def test_from_mdlm_names_missing_unexpected_and_misshaped_keys(tmp_path):
    state = mdlm_state_dict(TINY)
    del state["backbone.blocks.1.norm2.weight"]
    state["backbone.blocks.0.extra.weight"] = torch.zeros(2)
    state["backbone.blocks.0.attn_out.weight"] = torch.zeros(32, 31)
    write_mdlm_checkpoint(tmp_path, state=state)
    with pytest.raises(ValueError) as err:
        DSLForDiffusionLM.from_mdlm(str(tmp_path))
    message = str(err.value)
    assert "backbone.blocks.1.norm2.weight" in message
    assert "backbone.blocks.0.extra.weight" in message
    assert "backbone.blocks.0.attn_out.weight (32, 31) != (32, 32)" in message
    model = DSLForDiffusionLM.from_mdlm(str(tmp_path), strict=False)  # loads the rest, warns
    torch.testing.assert_close(model.backbone.blocks[0].attn_qkv.weight, state["backbone.blocks.0.attn_qkv.weight"])


def test_from_mdlm_preset_and_full_forward(tmp_path):
    write_mdlm_checkpoint(tmp_path)
    model = DSLForDiffusionLM.from_mdlm(str(tmp_path), preset="authors_code").eval()
    assert math.isclose(model.converter.logit_bias[-1].item(), math.log(99 * 41), rel_tol=1e-6)
    assert math.isclose(model.converter.beta.item(), 1 / math.sqrt(model.config.noise_dim), rel_tol=1e-6)
    ids = torch.randint(0, 40, (2, 16))
    out = model(input_ids=ids, labels=ids, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (2, 16, 40) and torch.isfinite(out.loss)


def test_convert_checkpoint_script_writes_a_loadable_dsl_checkpoint(tmp_path, tok_dir):
    import subprocess
    import sys
    from pathlib import Path

    mdlm = tmp_path / "mdlm"
    mdlm.mkdir()
    state = write_mdlm_checkpoint(mdlm)
    out = tmp_path / "dsl"
    script = Path(__file__).resolve().parents[1] / "scripts" / "convert_checkpoint.py"
    proc = subprocess.run([sys.executable, str(script), "--mdlm", str(mdlm), "--output", str(out),
                           "--tokenizer", str(tok_dir), "--noise-dim", "16"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "V=40, mask id 40" in proc.stdout
    model = DSLForDiffusionLM.from_pretrained(out)
    assert model.config.noise_dim == 16
    torch.testing.assert_close(model.backbone.blocks[1].mlp[0].weight, state["backbone.blocks.1.mlp.0.weight"])
    assert (out / "tokenizer.json").exists() and (out / "modeling_dsl.py").exists()


def test_from_mdlm_refuses_overriding_fields_read_from_the_checkpoint(tmp_path):
    write_mdlm_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="hidden_size"):
        DSLForDiffusionLM.from_mdlm(str(tmp_path), hidden_size=64)
    assert DSLForDiffusionLM.from_mdlm(str(tmp_path), noise_dim=12).config.noise_dim == 12
