"""The LLaDA backbone (issue 14): published-format loading, parity with a re-implementation of
LLaDA's forward (reference llada_dsl.md §2), the released DSL-LLaDA format (§5), the DSL-LLaDA SDE
preset (§5.5) and LLaDA's own low-confidence sampler (§3), generation from a saved model without
the package."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from llada_checkpoint import llada_tokenizer, write_llada_checkpoint
from modeling_dsl import DSLConfig, DSLForDiffusionLM, SNRSampler

P = "model.transformer."
V, MASK, EOS = 60, 55, 0


# ----------------------------------------------------------------------------- reference implementations


def reference_llada(state, cfg, input_ids=None, inputs_embeds=None, attention_mask=None):
    """LLaDA's forward written out from llada_dsl.md §2 (fp32): logits (B, L, V)."""
    x = state[P + "wte.weight"][input_ids] if inputs_embeds is None else inputs_embeds
    batch, length, d = x.shape
    heads, kv = cfg["n_heads"], cfg["n_kv_heads"]
    hd = d // heads
    bias = None
    if attention_mask is not None and bool((attention_mask == 0).any()):
        bias = ((1.0 - attention_mask.float()) * torch.finfo(torch.float32).min)[:, None, None, :]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.arange(length).float()[:, None] * inv[None]
    ang = torch.cat([ang, ang], dim=-1)  # [f, f]
    cos, sin = ang.cos(), ang.sin()

    def rot(t):
        return torch.cat([-t[..., hd // 2:], t[..., : hd // 2]], dim=-1)

    def rms(t, w):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + cfg["rms_norm_eps"]) * w

    for i in range(cfg["n_layers"]):
        b = f"{P}blocks.{i}."
        h = rms(x, state[b + "attn_norm.weight"])
        q = (h @ state[b + "q_proj.weight"].T).view(batch, length, heads, hd).transpose(1, 2)
        k = (h @ state[b + "k_proj.weight"].T).view(batch, length, kv, hd).transpose(1, 2)
        v = (h @ state[b + "v_proj.weight"].T).view(batch, length, kv, hd).transpose(1, 2)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        if bias is not None:
            scores = scores + bias
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, d)
        x = x + att @ state[b + "attn_out.weight"].T
        h = rms(x, state[b + "ff_norm.weight"])
        x = x + (F.silu(h @ state[b + "ff_proj.weight"].T) * (h @ state[b + "up_proj.weight"].T)) @ state[
            b + "ff_out.weight"].T
    return rms(x, state[P + "ln_f.weight"]) @ state[P + "ff_out.weight"].T


def reference_converter(state, z, beta=None):
    """DSL-LLaDA's SoftmaxConvertBias (§5.2): π = softmax(β z [E;0]ᵀ + b), h = Wπ + c, their raw E."""
    E = state["converter.embed.weight"]
    keys = torch.cat([E, torch.zeros(1, E.shape[1])])
    b = state["converter.beta"] if beta is None else beta
    pi = torch.softmax(b * (z @ keys.T) + state["converter.logit_bias"], dim=-1)
    return pi @ state["converter.backbone_embedding.weight"].T + state["converter.backbone_embedding.bias"]


def reference_llada_generate(model_fn, prompt, steps, gen_length, block_length, cfg_scale, mask_id):
    """LLaDA's generate.py at temperature 0 with low-confidence remasking (§3), batch of one, no
    attention mask. `model_fn(ids) -> logits`."""
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    prompt_index = x != mask_id
    blocks = gen_length // block_length
    per_block = steps // blocks
    for nb in range(blocks):
        lo, hi = prompt.shape[1] + nb * block_length, prompt.shape[1] + (nb + 1) * block_length
        m = (x[:, lo:hi] == mask_id).sum(dim=1, keepdim=True)
        base, rem = m // per_block, m % per_block
        k = torch.zeros(1, per_block, dtype=torch.long) + base
        k[:, : int(rem)] += 1
        for i in range(per_block):
            mask_index = x == mask_id
            if cfg_scale > 0:
                un = x.clone()
                un[prompt_index] = mask_id
                logits = model_fn(torch.cat([x, un]))
                c, u = logits[:1], logits[1:]
                logits = u + (cfg_scale + 1) * (c - u)
            else:
                logits = model_fn(x)
            x0 = logits.argmax(-1)
            p = F.softmax(logits.double(), dim=-1)
            conf = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            conf[:, hi:] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            conf = torch.where(mask_index, conf, torch.tensor(-math.inf, dtype=conf.dtype))
            _, select = torch.topk(conf[0], k=int(k[0, i]))
            x[0, select] = x0[0, select]
    return x


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llada")
    state = write_llada_checkpoint(path, vocab_size=V, mask_token_id=MASK, eos_token_id=EOS, shards=3)
    return path, state


def config_json(path):
    import json

    return json.loads((path / "config.json").read_text())


# ----------------------------------------------------------------------------- loading and parity


def test_parity_with_the_reference_forward_no_mask_and_left_padding(llada_dir):
    path, state = llada_dir
    cfg = config_json(path)
    model = DSLForDiffusionLM.from_llada(str(path)).eval()
    assert model.config.rope_theta == 500000.0 and model.config.backbone_type == "llada"
    ids = torch.randint(0, V, (3, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, :1] = 0
    with torch.no_grad():
        for attn in (None, mask):
            ours = model.logits_from_hidden(model.hidden_states_from_tokens(ids, attn))
            ref = reference_llada(state, cfg, ids, attention_mask=attn)
            torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
        # the mask matters, and padded queries still attend to the real keys (as LLaDA)
        plain = model.logits_from_hidden(model.hidden_states_from_tokens(ids))
        assert (plain[1] - ours[1]).abs().max() > 1e-3


def test_converter_starts_as_dsl_llada_and_freezes_the_authors_defaults(llada_dir):
    path, state = llada_dir
    torch.manual_seed(0)
    model = DSLForDiffusionLM.from_llada(str(path))
    cfg = model.config
    assert (cfg.snr_preset, cfg.noise_dim, cfg.snr_max, cfg.vocab_size, cfg.mask_token_id) == ("dsl_llada", 100, 100.0,
                                                                                               V, MASK)
    W = model.converter.backbone_embedding.weight
    wte = state[P + "wte.weight"]
    assert torch.equal(W[:, :V], wte.T) and torch.equal(W[:, V], wte[MASK])
    c = model.converter.backbone_embedding.bias
    assert c.abs().max() <= 1 / math.sqrt(V + 1) and c.abs().max() > 0  # PyTorch's Linear default
    assert math.isclose(model.converter.beta.item(), 1.0)
    assert math.isclose(model.converter.logit_bias[-1].item(), math.log(V), rel_tol=1e-6)
    assert model.converter.logit_bias[:-1].abs().max() == 0
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"embed.weight", "backbone.wte.weight", "backbone.ff_out.weight"}
    assert not {n for n, p in DSLForDiffusionLM.from_llada(str(path), freeze_lm_head=False,
                                                            freeze_noise_embeddings=False,
                                                            freeze_token_embedding=False).named_parameters()
                if not p.requires_grad}
    assert DSLForDiffusionLM.from_llada(str(path), noise_dim=16).config.noise_dim == 16
    assert model.config.eos_token_id == [EOS] and model.config.pad_token_id == EOS
    # a one-hot π (huge visible SNR, no noise) reproduces LLaDA's input embedding up to c
    with torch.no_grad():
        z = 1e4 * model.noise_embeddings()[torch.tensor([[3, 7]])]
        h = model.converter(z, model.noise_embeddings())
    torch.testing.assert_close(h - c, wte[[3, 7]][None], rtol=0, atol=1e-5)


def test_bf16_checkpoint_loads_in_bf16_without_random_backbone_init(tmp_path):
    state = write_llada_checkpoint(tmp_path, vocab_size=V, mask_token_id=MASK, eos_token_id=EOS,
                                   dtype=torch.bfloat16)
    model = DSLForDiffusionLM.from_llada(str(tmp_path))
    assert model.dtype == torch.bfloat16 and not any(p.is_meta for p in model.parameters())
    assert torch.equal(model.backbone.ln_f.weight.float(), state[P + "ln_f.weight"].bfloat16().float())
    assert DSLForDiffusionLM.from_llada(str(tmp_path), torch_dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("broken, needle", [
    (dict(drop=[P + "blocks.1.up_proj.weight"]), "missing: ['backbone.blocks.1.up_proj.weight']"),
    (dict(reshape={P + "blocks.0.k_proj.weight": (8, 32)}), "backbone.blocks.0.k_proj.weight (8, 32) != (32, 32)"),
    (dict(reshape={P + "extra.weight": (2,)}), "unexpected: ['backbone.extra.weight']"),
])
def test_broken_checkpoint_fails_naming_the_key(tmp_path, broken, needle):
    write_llada_checkpoint(tmp_path, vocab_size=V, mask_token_id=MASK, eos_token_id=EOS, **broken)
    with pytest.raises(ValueError) as info:
        DSLForDiffusionLM.from_llada(str(tmp_path))
    assert needle in str(info.value)


def test_unsupported_llada_config_and_config_validation(tmp_path):
    import json

    write_llada_checkpoint(tmp_path, vocab_size=V, mask_token_id=MASK, eos_token_id=EOS)
    cfg = config_json(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "activation_type": "swiglu"}))
    with pytest.raises(ValueError, match="activation_type"):
        DSLForDiffusionLM.from_llada(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "mlp_hidden_size"}))
    with pytest.raises(ValueError, match="mlp_hidden_size"):
        DSLForDiffusionLM.from_llada(str(tmp_path))
    with pytest.raises(ValueError, match="intermediate_size"):
        tiny_config(backbone_type="llada")
    with pytest.raises(ValueError, match="num_key_value_heads"):
        tiny_config(backbone_type="llada", intermediate_size=48, num_key_value_heads=3)
    with pytest.raises(ValueError, match="prompt_embedding"):
        tiny_config(prompt_embedding="backbone")  # the MDLM DiT has no token embedding
    assert tiny_config().effective_prompt_embedding == "converter"
    assert tiny_config(backbone_type="llada", intermediate_size=48).effective_prompt_embedding == "backbone"


def test_released_dsl_llada_format_equals_their_converter_and_backbone(tmp_path):
    state = write_llada_checkpoint(tmp_path, vocab_size=V, mask_token_id=MASK, eos_token_id=EOS, released=True,
                                   noise_dim=12)
    cfg = config_json(tmp_path)
    model = DSLForDiffusionLM.from_llada(str(tmp_path)).eval()
    assert model.config.noise_dim == 12 and math.isclose(model.config.snr_max, 100.0, rel_tol=1e-6)
    assert math.isclose(model.converter.beta.item(), 0.99, rel_tol=1e-6)
    g = torch.Generator().manual_seed(3)
    e = state["noise_embed.weight"][torch.randint(0, V, (2, 9), generator=g)]
    snr = torch.rand(2, 9, 1, generator=g) * 20
    z = snr * e + snr.sqrt() * torch.randn(2, 9, 12, generator=g)
    z[0, 0] = 0  # a masked position
    with torch.no_grad():
        ours = model.logits_from_hidden(model.hidden_states(z))
        for beta in (None, 1.98):  # the learned β and a decoding β_inf = 2·β
            h = reference_converter(state, z, beta)
            ours = model.logits_from_hidden(model.hidden_states(z, beta=beta))
            torch.testing.assert_close(ours, reference_llada(state, cfg, inputs_embeds=h), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="converter.logit_bias"):
        path = tmp_path / "broken"
        write_llada_checkpoint(path, vocab_size=V, mask_token_id=MASK, eos_token_id=EOS, released=True,
                               drop=["converter.logit_bias"])
        DSLForDiffusionLM.from_llada(str(path))


def test_dsl_llada_snr_preset():
    config = DSLConfig.from_preset("dsl_llada", vocab_size=V, mask_token_id=MASK)
    assert config.snr_preset == "dsl_llada"
    snr, roar = SNRSampler.from_config(config).sample(4000, 32, torch.Generator().manual_seed(0),
                                                      return_roar_mask=True)
    rows = roar[:, 0]
    assert torch.equal(roar, rows[:, None].expand_as(roar))  # ROAR is chosen per sequence
    assert abs(rows.float().mean().item() - 0.1) < 0.02
    ln = snr[~rows]
    assert ln.max() <= 40.0 and (ln == 40.0).any()  # clamped at s_max_ln = 40
    assert (snr[~rows].std(dim=1) > 0).all()  # LogNormal per token
    assert abs(ln[ln < 40].log().median().item() - 1.69) < 0.05
    revealed = snr[rows] >= 80.0
    assert snr[rows][revealed].max() <= 100.0 and snr[rows][~revealed].max() < 1.0  # U[80, 100] / U[0, 1)
    assert DSLConfig.from_preset("dsl_llada", lognormal_max=50.0).snr_preset == "custom"


# ----------------------------------------------------------------------------- decoding protocols


def sensitive_grid(steps, s_min=0.01, s_max=100.0):
    """DSL-LLaDA's 'sensitive' schedule written out from §5.5."""
    n1, n2 = max(1, int(0.05 * steps)), max(1, int(0.9 * steps))
    n3 = steps - n1 - n2

    def seg(a, b, n):
        return torch.logspace(math.log10(a), math.log10(b), n + 1, dtype=torch.float64)

    parts = [seg(s_min, 7.0, n1), seg(7.0, 74.0, n2)[1:]] + ([seg(74.0, s_max, n3)[1:]] if n3 > 0 else [])
    return torch.cat(parts).tolist()


def reference_dsl_llada_sde(model, prompt, gen_length, nfe, seed):
    """DSL-LLaDA's summarization SDE (§5.5) written out: y = z/s, Heun with a shared ΔW, η by NFE,
    β_inf = 2β, top-512 posterior mean, unit-norm init, clean wte(prompt), final argmax.

    The denoiser x̂ is the model's own (converter + backbone parity is tested above), and the state
    is fp32 as in the sampler: the first step's drift (x̂ − y)/0.01 multiplies any rounding difference
    by hundreds and a random tiny model is chaotic, so only the integrator is re-implemented here."""
    from modeling_dsl.sampling_dsl import posterior_mean

    steps = nfe // 2
    eta = 0.1 if nfe <= 8 else 0.05 if nfe <= 16 else 0.01 if nfe <= 32 else 0.005
    grid = torch.tensor(sensitive_grid(steps), dtype=torch.float64)
    E = model.noise_embeddings()
    n_prompt = len(prompt)
    ids = torch.cat([prompt, torch.zeros(gen_length, dtype=torch.long)])[None]
    clean = (torch.arange(n_prompt + gen_length) < n_prompt)[None]
    beta_inf = 2.0 * float(model.converter.beta.reshape(-1)[0])

    def logits_at(y, s):
        z = torch.zeros(1, n_prompt + gen_length, E.shape[1])
        z[0, n_prompt:] = s * y
        h = model.hidden_states_with_clean(z, beta=beta_inf, clean_ids=ids, clean_mask=clean)
        logits = model.logits_from_hidden(h[0, n_prompt:])
        logits[:, model.config.mask_token_id] = -math.inf  # the mask id is never a token
        return logits

    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(gen_length, E.shape[1], generator=g)
    y = eps / eps.norm(dim=-1, keepdim=True)
    for k in range(steps):
        s0, s1 = grid[k].float(), grid[k + 1].float()
        ds = (grid[k + 1] - grid[k]).float()
        dW = torch.randn(gen_length, E.shape[1], generator=g) * ds.sqrt()
        f0 = (posterior_mean(logits_at(y, s0), E, 512) - y) / s0
        y_pred = y + f0 * ds + (eta / s0) * dW
        f1 = (posterior_mean(logits_at(y_pred, s1), E, 512) - y_pred) / s1
        y = y + 0.5 * (f0 + f1) * ds + 0.5 * (eta / s0 + eta / s1) * dW
    return logits_at(y, grid[-1].float()).argmax(-1)


@pytest.mark.parametrize("nfe", [8, 16])
def test_dsl_llada_sde_preset_equals_their_heun_update(tmp_path, nfe):
    vocab, mask = 600, 599  # V > 512, so the top-512 posterior mean is a real truncation
    write_llada_checkpoint(tmp_path, vocab_size=vocab, mask_token_id=mask, eos_token_id=0, head_std=1.0)
    torch.manual_seed(0)
    model = DSLForDiffusionLM.from_llada(str(tmp_path), noise_dim=16).eval()
    prompt = torch.tensor([5, 17, 42, 8, 300])
    out = model.generate(prompt[None], strategy="dsl_llada_sde", steps=nfe // 2, gen_length=6, seed=11,
                         return_dict_in_generate=True)
    assert out.nfe == nfe + 1
    with torch.no_grad():
        ref = reference_dsl_llada_sde(model, prompt, 6, nfe, seed=11)
    assert out.sequences[0, len(prompt):].tolist() == ref.tolist()
    from modeling_dsl.generation_dsl import dsl_llada_eta

    assert [dsl_llada_eta(n) for n in (8, 16, 32, 64)] == [0.1, 0.05, 0.01, 0.005]


@pytest.mark.parametrize("cfg_scale, block_length", [(0.0, 4), (0.0, 8), (1.5, 4)])
def test_low_confidence_with_backbone_inputs_gives_llada_generate_tokens(tmp_path, cfg_scale, block_length):
    state = write_llada_checkpoint(tmp_path, vocab_size=V, mask_token_id=MASK, eos_token_id=EOS, head_std=1.0)
    cfg = config_json(tmp_path)
    model = DSLForDiffusionLM.from_llada(str(tmp_path)).eval()
    with torch.no_grad():  # mask logit 0: LLaDA's argmax never picks it, our sampler never may
        model.backbone.ff_out.weight[MASK] = 0
    state[P + "ff_out.weight"][MASK] = 0
    prompt = torch.tensor([[3, 14, 15, 9, 26]])
    ours = model.generate(prompt, strategy="low_confidence", token_inputs="backbone", steps=4, gen_length=8,
                          block_length=block_length, cfg_scale=cfg_scale, seed=0)
    with torch.no_grad():
        ref = reference_llada_generate(lambda ids: reference_llada(state, cfg, ids), prompt, steps=4, gen_length=8,
                                       block_length=block_length, cfg_scale=cfg_scale, mask_id=MASK)
    assert ours.tolist() == ref.tolist()
    converter_fed = model.generate(prompt, strategy="low_confidence", steps=4, gen_length=8,
                                   block_length=block_length, cfg_scale=cfg_scale, seed=0)
    assert converter_fed.tolist() != ref.tolist()  # the option is what makes it LLaDA's model
    from conftest import tiny_model

    with pytest.raises(ValueError, match="token_inputs='backbone' need a backbone with a token embedding"):
        tiny_model().generate(strategy="low_confidence", token_inputs="backbone", steps=2, gen_length=4)


def test_prompt_embedding_backbone_feeds_clean_wte(llada_dir):
    path, state = llada_dir
    model = DSLForDiffusionLM.from_llada(str(path)).eval()
    config, _ = model._prepare_generation_config(None)
    tokens = torch.tensor([[4, 8, 15, 16, MASK, MASK, MASK, MASK]])
    prompt = tokens != MASK
    z = torch.zeros(1, 8, model.config.noise_dim)
    z[0, 4:] = torch.randn(4, model.config.noise_dim) * 3
    with torch.no_grad():
        den = model._denoiser(None, config, tokens, prompt)
        h = torch.cat([state[P + "wte.weight"][tokens[:, :4]], model.converter(z[:, 4:], model.noise_embeddings())], 1)
        torch.testing.assert_close(den.features(z), model.backbone(h), rtol=0, atol=1e-6)
        # the CFG half (prompt masked) keeps the converter's masked input
        both = den.features(torch.cat([z, z]))
        torch.testing.assert_close(both[1], model.hidden_states(z)[0], rtol=0, atol=1e-6)
        model.config.prompt_embedding = "converter"  # prompt through the converter instead
        z_visible = z.clone()
        z_visible[0, :4] = 100.0 * model.noise_embeddings()[tokens[0, :4]]
        den = model._denoiser(None, config, tokens, prompt)
        torch.testing.assert_close(den.features(z_visible), model.hidden_states(z_visible), rtol=0, atol=0)
        model.config.prompt_embedding = None


def test_eos_and_eot_both_end_text(tmp_path, tok_dir):
    tok = llada_tokenizer(tok_dir)
    write_llada_checkpoint(tmp_path, tok)
    model = DSLForDiffusionLM.from_llada(str(tmp_path)).eval()
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert model.config.eos_token_id == [tok.eos_token_id, eot] and model.config.pad_token_id == tok.eos_token_id
    for end in (eot, tok.eos_token_id):
        logits = torch.full((len(tok),), -10.0)
        logits[end] = 10.0
        model.backbone.logits = lambda hidden, logits=logits: logits.expand(*hidden.shape[:-1], -1)
        prompt = torch.tensor([tok("Hello there")["input_ids"]])
        out = model.generate(prompt, strategy="low_confidence", steps=4, gen_length=4, truncate_at_eos=True)
        generated = out[0, prompt.shape[1]:].tolist()
        assert generated[0] == end and generated[1:] == [tok.eos_token_id] * 3  # cut after the first end id


def test_encode_prompt_uses_the_instruct_chat_template(tok_dir):
    from modeling_dsl.generation_dsl import encode_prompt

    tok = llada_tokenizer(tok_dir)
    ids = encode_prompt(tok, "  Summarize this.  ")
    text = tok.decode(ids)
    assert text == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nSummarize this.<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert ids.count(tok.bos_token_id) == 1
    tok.chat_template = None
    assert tok.decode(encode_prompt(tok, "raw text")) == "raw text"


SANDBOX_GENERATE = r'''
import json, sys
import torch
from transformers import AutoModel, AutoTokenizer

path, strategies = sys.argv[1], json.loads(sys.argv[2])
model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
texts = ["Write a short line.", "Summarize the following text in one sentence: the cat sat on the mat all day."]
rows = [tok(tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False)["input_ids"] for t in texts]
longest = max(map(len, rows))
ids = torch.tensor([[tok.pad_token_id] * (longest - len(r)) + r for r in rows])
mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows])
out = {"lengths": [len(r) for r in rows], "class": type(model).__module__}
for strategy in strategies:
    seq = model.generate(ids, attention_mask=mask, strategy=strategy, steps=4, gen_length=8, seed=0,
                         truncate_at_eos=True)
    out[strategy] = seq.tolist()
print(json.dumps(out))
'''


@pytest.mark.slow
def test_saved_llada_model_generates_every_strategy_without_the_package(tmp_path, tok_dir, run_without_package):
    import json

    from modeling_dsl.generation_dsl import STRATEGIES

    tok = llada_tokenizer(tok_dir)
    write_llada_checkpoint(tmp_path / "llada", tok)
    model = DSLForDiffusionLM.from_llada(str(tmp_path / "llada"))
    model.save_pretrained(tmp_path / "dsl")
    tok.save_pretrained(tmp_path / "dsl")
    strategies = [s for s, row in STRATEGIES.items() if row.generates]
    assert "dsl_llada_sde" in strategies
    out = run_without_package(SANDBOX_GENERATE, tmp_path / "dsl", json.dumps(strategies))
    assert not out["class"].startswith("modeling_dsl") and out["lengths"][0] != out["lengths"][1]
    mask_id = tok.convert_tokens_to_ids("<|mdm_mask|>")
    for strategy in strategies:
        seq = torch.tensor(out[strategy])
        assert seq.shape == (2, max(out["lengths"]) + 8), strategy
        assert not (seq == mask_id).any(), strategy


# ----------------------------------------------------------------------------- continued pretraining


def test_converter_lr_multiplier_is_a_parameter_group(llada_dir, tmp_path):
    import datasets
    from transformers import TrainingArguments

    from trainers.dsl_trainer import DSLTrainer

    path, _ = llada_dir
    model = DSLForDiffusionLM.from_llada(str(path))
    data = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3, 4, 5, 6]] * 4})
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, use_cpu=True,
                             report_to="none", lr_scheduler_type="constant_with_warmup", warmup_steps=2)
    trainer = DSLTrainer(model=model, args=args, train_dataset=data, converter_lr_multiplier=25.0)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    converter = {id(p) for p in model.converter.parameters()}
    groups = trainer.optimizer.param_groups
    for group in groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= converter or not ids & converter  # the converter is never mixed with the backbone
    lr = {ids_are_converter: {g["initial_lr"] for g in groups if ({id(p) for p in g["params"]} <= converter)
                              == ids_are_converter} for ids_are_converter in (True, False)}
    for _ in range(3):  # through warm-up: the schedule scales both groups alike
        trainer.lr_scheduler.step()
    ratio = {g["lr"] / g["initial_lr"] for g in groups}
    assert len(ratio) == 1
    assert lr[True] == {25e-3} and lr[False] == {1e-3}
    trained = {id(p) for g in groups for p in g["params"]}
    assert id(model.backbone.ff_out.weight) not in trained and id(model.embed.weight) not in trained  # frozen
    with pytest.raises(ValueError, match="converter_lr_multiplier"):
        DSLTrainer(model=model, args=args, train_dataset=data, converter_lr_multiplier=0.0)


LLADA_SCRIPT = ["--max_steps", "4", "--block_size", "32", "--per_device_train_batch_size", "2", "--logging_steps", "1",
                "--report_to", "none", "--learning_rate", "1e-3", "--disable_tqdm", "true", "--eval_max_batches", "1",
                "--seed", "3", "--converter_lr_multiplier", "25"]


def llada_script_setup(tmp_path, tok_dir, wikitext):
    tok = llada_tokenizer(tok_dir)
    write_llada_checkpoint(tmp_path / "llada", tok)
    data = tmp_path / "train.txt"
    data.write_text(wikitext[0][:20_000], encoding="utf-8")
    return tok, data


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_llada_continued_pretraining_under_zero_with_gradient_checkpointing(stage, tmp_path, tok_dir, wikitext):
    pytest.importorskip("deepspeed")
    from test_trainer import REPO, free_port, run_script

    tok, data = llada_script_setup(tmp_path, tok_dir, wikitext)
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu"}
    out = tmp_path / "out"
    result = run_script(["--llada_checkpoint", str(tmp_path / "llada"), "--train_file", str(data), "--output_dir",
                         str(out), "--deepspeed", str(REPO / "trainers" / "configs" / f"zero{stage}.json"),
                         "--gradient_checkpointing", "true", *LLADA_SCRIPT], env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    initial = DSLForDiffusionLM.from_llada(str(tmp_path / "llada"))
    trained = DSLForDiffusionLM.from_pretrained(out)
    assert trained.config.backbone_type == "llada" and trained.config.snr_preset == "dsl_llada"
    before, after = initial.state_dict(), trained.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert {"backbone.blocks.0.q_proj.weight", "backbone.blocks.1.ff_out.weight",
            "converter.backbone_embedding.weight"} <= changed
    # the authors' frozen tensors stay as loaded (E is the seeded fresh init of from_llada, not saved before)
    assert "backbone.ff_out.weight" not in changed and "backbone.wte.weight" not in changed


KILL_AT_3 = """
import importlib.util, os, signal, sys
from transformers import TrainerCallback
spec = importlib.util.spec_from_file_location("continue_pretrain", "scripts/continue_pretrain.py")
module = importlib.util.module_from_spec(spec)
sys.modules["continue_pretrain"] = module
spec.loader.exec_module(module)

class Kill(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

module.main(sys.argv[1:], callbacks=[Kill()])
"""


@pytest.mark.slow
def test_llada_lora_training_kill_and_resume_gives_the_same_losses(tmp_path, tok_dir, wikitext):
    import json
    import signal

    from test_trainer import run_script

    tok, data = llada_script_setup(tmp_path, tok_dir, wikitext)
    base = tmp_path / "dsl-llada"
    DSLForDiffusionLM.from_llada(str(tmp_path / "llada")).save_pretrained(base)
    tok.save_pretrained(base)
    common = ["--model_name_or_path", str(base), "--use_lora", "true", "--train_file", str(data),
              "--save_steps", "2", "--gradient_checkpointing", "true", *LLADA_SCRIPT]
    full = run_script(["--output_dir", str(tmp_path / "full"), *common])
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run_script(["--output_dir", str(tmp_path / "killed"), *common], driver=KILL_AT_3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run_script(["--output_dir", str(tmp_path / "killed"), *common, "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def step_losses(folder):
        state = json.loads((folder / "trainer_state.json").read_text())
        return {log["step"]: log["loss"] for log in state["log_history"] if "loss" in log}

    a, b = step_losses(tmp_path / "full"), step_losses(tmp_path / "killed")
    assert sorted(a) == [1, 2, 3, 4] and sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert a[step] == pytest.approx(b[step], abs=1e-6), (step, a, b)
    adapter = json.loads((tmp_path / "full" / "adapter_config.json").read_text())
    assert "converter" in adapter["modules_to_save"]
    targets = adapter["target_modules"]
    assert "q_proj" in str(targets) and "up_proj" in str(targets)
    # the adapter reloads onto the saved base
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(DSLForDiffusionLM.from_pretrained(base), str(tmp_path / "full"))
    assert any("lora_A" in n for n, _ in reloaded.named_parameters())


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_accelerate_launch_zero_lora_with_checkpointing_trains_llada_and_the_adapter_reloads(stage, tmp_path, tok_dir,
                                                                                            wikitext):
    """The README's launch path (`accelerate launch --config_file accelerate_zero{2,3}.yaml`, one CPU
    process) on a saved DSL-LLaDA model with LoRA and activation checkpointing."""
    pytest.importorskip("deepspeed")
    import json
    import subprocess
    import sys

    from peft import PeftModel

    from test_trainer import REPO, free_port

    tok, data = llada_script_setup(tmp_path, tok_dir, wikitext)
    base = tmp_path / "dsl-llada"
    DSLForDiffusionLM.from_llada(str(tmp_path / "llada")).save_pretrained(base)
    tok.save_pretrained(base)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--main_process_port",
               str(free_port()), "--config_file", str(REPO / "trainers" / "configs" / f"accelerate_zero{stage}.yaml"),
               str(REPO / "scripts" / "continue_pretrain.py"), "--model_name_or_path", str(base), "--use_lora",
               "true", "--train_file", str(data), "--output_dir", str(out), "--activation_checkpointing", "true",
               *LLADA_SCRIPT, "--max_steps", "2"]  # the later --max_steps wins
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [log["loss"] for log in state["log_history"] if "loss" in log]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    reloaded = PeftModel.from_pretrained(DSLForDiffusionLM.from_pretrained(base), str(out))
    lora_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert lora_b and any(bool(p.abs().sum() > 0) for p in lora_b)  # lora_B starts at 0: it trained


def test_from_llada_is_seeded_and_leaves_the_global_random_state_alone(llada_dir):
    path, _ = llada_dir
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = DSLForDiffusionLM.from_llada(str(path))
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(7)  # a different global state: the fresh tensors do not follow it
    b = DSLForDiffusionLM.from_llada(str(path))
    for name in ("embed.weight", "converter.backbone_embedding.bias"):
        assert torch.equal(a.state_dict()[name], b.state_dict()[name]), name
    c = DSLForDiffusionLM.from_llada(str(path), seed=1)
    assert not torch.equal(a.embed.weight, c.embed.weight)
    with pytest.raises(ValueError, match="seed must be an int or None"):
        DSLForDiffusionLM.from_llada(str(path), seed=1.5)
