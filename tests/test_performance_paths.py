"""The optimised paths (issue 17) give what the straightforward ones give, under the same seed.

* `SlotProjection` (the converter recomputing π in backward, chunk by chunk): the same loss and
  the same gradient for every parameter as autograd through the materialised π.
* Split denoisers (the masked samplers keep the draft's backbone inputs and run the converter only
  on the positions that changed): the same tokens, NFE and diagnostics as one full network call
  per state.
* Host syncs: low_confidence and roar steps do not sync, remdm syncs once per step.
* `Denoiser.compiled()` / `from_model(compile=True)`: the same tokens as eager.
* `HeadCrossEntropy` (the chunked LM head + CE of `return_logits=False`, what `DSLTrainer` uses):
  the same loss, per-token CE and gradients as the full logits.
Nothing here is timed; `benchmarks/` measures the speed.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

import modeling_dsl.sampling_dsl as S
from modeling_dsl.converter_dsl import SoftmaxConverter
from modeling_dsl.noise_dsl import snr_schedule

VISIBLE_SNR = 50.0


def straightforward_converter(self, z, unit_embeddings, beta=None):
    """The converter before issue 17: π materialised, autograd through softmax and projection."""
    probs = self.slot_probs(z, unit_embeddings, beta)
    weight = self.backbone_embedding.weight
    with torch.autocast(device_type=z.device.type, enabled=False):
        return F.linear(probs.to(weight.dtype), weight, self.backbone_embedding.bias)


def training_step(straightforward: bool, monkeypatch, freeze=(), chunk_elements=7 * 51):
    """Loss and gradients of one DSL training step of a tiny model (V = 50, several chunks)."""
    with monkeypatch.context() as patch:
        if straightforward:
            patch.setattr(SoftmaxConverter, "forward", straightforward_converter)
        model = tiny_model(seed=1, weight_std=0.1).train()
        model.converter.chunk_elements = chunk_elements
        with torch.no_grad():
            model.converter.logit_bias.normal_(0.0, 0.5)
            model.converter.beta.fill_(0.8)
        for name, p in model.named_parameters():
            p.requires_grad_(name not in freeze)
        ids = torch.randint(0, 50, (3, 20), generator=torch.Generator().manual_seed(0))
        snr = torch.rand(3, 20, generator=torch.Generator().manual_seed(1)) * 10
        snr[0, :5] = 0.0  # masked positions: the mask slot wins
        out = model(input_ids=ids, snr=snr, labels=ids, generator=torch.Generator().manual_seed(2))
        out.loss.backward()
    return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("freeze", [(), ("converter.backbone_embedding.weight", "embed.weight")])
def test_recomputing_converter_gives_the_same_loss_and_gradients(monkeypatch, freeze):
    loss, grads = training_step(False, monkeypatch, freeze)
    ref_loss, ref_grads = training_step(True, monkeypatch, freeze)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in ("converter.beta", "converter.logit_bias", "converter.backbone_embedding.bias"):
        assert name in grads
    if not freeze:
        assert "embed.weight" in grads and "converter.backbone_embedding.weight" in grads
    for name, grad in grads.items():
        assert grad is not None, name
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("beta", [None, 2.5])
def test_recomputing_converter_matches_under_bf16_autocast_and_with_an_inference_beta(monkeypatch, beta):
    model = tiny_model(seed=1, weight_std=0.1)
    z = torch.randn(2, 6, 8) * 3
    unit = model.noise_embeddings()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.converter(z, unit, beta=beta)
        with monkeypatch.context() as patch:
            patch.setattr(SoftmaxConverter, "forward", straightforward_converter)
            ref = model.converter(z, unit, beta=beta)
    assert h.dtype == ref.dtype == torch.float32  # the projection runs outside autocast
    torch.testing.assert_close(h, ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- samplers


def unsplit(den: S.Denoiser) -> S.Denoiser:
    """The same network as one `features(z)` call per state (no per-row input updates)."""
    return S.Denoiser(den.features_fn, den.head_fn, den.embeddings, den.visible_snr, den.mask_token_id)


def prompted(batch=3, length=16, prompt=4):
    tokens = (torch.arange(batch * length).view(batch, length) * 7) % 50
    gen = torch.zeros_like(tokens, dtype=torch.bool)
    gen[:, prompt:] = True
    return tokens, gen


def per_row(seed, batch=3):
    return [torch.Generator().manual_seed(seed + r) for r in range(batch)]


CASES = [
    (S.mdlm, dict(steps=8)),
    (S.remdm, dict(steps=16, mode="loop", eta=0.05, top_p=0.9)),
    (S.remdm, dict(steps=8, mode="cap", eta=0.2)),
    (S.remdm, dict(steps=8, mode="rescale", eta=0.1)),
    (S.remdm, dict(steps=8, mode="conf")),
    (S.low_confidence, dict(steps=12, block_length=4, temperature=0.0)),
    (S.low_confidence, dict(steps=12, temperature=1.0, top_k=20)),
    (S.low_confidence, dict(steps=6, block_length=6, remasking="random", temperature=0.7, cfg_scale=1.5)),
    (S.roar, dict(tokens_per_step=5)),
    (S.hybrid, dict(sde_steps=3, finish_steps=6, switch_snr=5.0, finish_kwargs=dict(temperature=0.5))),
    (S.hybrid, dict(sde_steps=3, finish_steps=6, switch_snr=5.0, finish="remdm",
                    finish_kwargs=dict(mode="loop", eta=0.05))),
]


@pytest.mark.parametrize("sampler, kwargs", CASES, ids=lambda x: getattr(x, "__name__", None) or repr(x))
def test_split_denoiser_gives_the_same_tokens_as_the_full_network(single_thread, sampler, kwargs):
    model = tiny_model(weight_std=0.3)
    den = S.Denoiser.from_model(model, visible_snr=VISIBLE_SNR)
    assert den.split
    tokens, gen = prompted()
    with torch.no_grad():
        fast = sampler(den, tokens, gen, generator=per_row(3), diagnostics=True, **kwargs)
        full = sampler(unsplit(den), tokens, gen, generator=per_row(3), diagnostics=True, **kwargs)
    assert torch.equal(fast.tokens, full.tokens)
    assert fast.nfe == full.nfe
    for name, value in full.diagnostics.items():
        torch.testing.assert_close(fast.diagnostics[name], value, equal_nan=True, msg=name)


def llada_backbone_model():
    """A tiny DSL model on the LLaDA backbone, which has a token embedding for clean prompt rows."""
    return tiny_model(weight_std=0.3, backbone_type="llada", intermediate_size=48)


CLEAN_CASES = [
    (S.mdlm, dict(steps=8)),
    (S.remdm, dict(steps=16, mode="loop", eta=0.05)),
    (S.low_confidence, dict(steps=12, block_length=4, temperature=0.0)),
    (S.low_confidence, dict(steps=6, temperature=0.7, cfg_scale=1.5)),
    (S.roar, dict(tokens_per_step=5)),
]


@pytest.mark.parametrize("sampler, kwargs", CLEAN_CASES, ids=lambda x: getattr(x, "__name__", None) or repr(x))
def test_split_denoiser_with_clean_backbone_prompt_rows_gives_the_same_tokens(single_thread, sampler, kwargs):
    # prompt_embedding="backbone" (DSL-LLaDA): the prompt rows' inputs are the backbone's token
    # embedding, fixed in the draft's cached inputs; the converter runs on the changed rows only.
    model = llada_backbone_model()
    tokens, gen = prompted()
    den = S.Denoiser.from_model(model, visible_snr=VISIBLE_SNR, tokens=tokens, clean_mask=~gen)
    assert den.split and den.fixed_inputs is not None
    converter_prompt = S.Denoiser.from_model(model, visible_snr=VISIBLE_SNR)
    with torch.no_grad():
        fast = sampler(den, tokens, gen, generator=per_row(3), diagnostics=True, **kwargs)
        full = sampler(unsplit(den), tokens, gen, generator=per_row(3), diagnostics=True, **kwargs)
        other = sampler(converter_prompt, tokens, gen, generator=per_row(3), **kwargs)
    assert torch.equal(fast.tokens, full.tokens)
    assert fast.nfe == full.nfe
    for name, value in full.diagnostics.items():
        torch.testing.assert_close(fast.diagnostics[name], value, equal_nan=True, msg=name)
    assert not torch.equal(fast.tokens, other.tokens)  # the clean rows are what the network saw


def test_split_denoiser_runs_the_whole_network_where_a_clean_row_is_generated(single_thread):
    model = llada_backbone_model()
    tokens, gen = prompted()
    clean = ~gen
    clean[:, 4] = True  # one generated position also marked clean: its input never follows the draft
    den = S.Denoiser.from_model(model, visible_snr=VISIBLE_SNR, tokens=tokens, clean_mask=clean)
    with torch.no_grad():
        state = S._Draft(den, tokens, gen)
        assert den.split and not state.split
        fast = S.mdlm(den, tokens, gen, steps=8, generator=per_row(5))
        full = S.mdlm(unsplit(den), tokens, gen, steps=8, generator=per_row(5))
    assert torch.equal(fast.tokens, full.tokens)


def test_split_inputs_and_trunk_compose_to_the_models_hidden_states():
    model = tiny_model(weight_std=0.3)
    den = S.Denoiser.from_model(model, visible_snr=VISIBLE_SNR)
    z = torch.randn(2, 10, 8) * 4
    z[:, :3] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(den.trunk_fn(den.inputs_fn(z)), model.hidden_states(z))
        torch.testing.assert_close(den.mask_inputs(), den.inputs_fn(z[:1, :1])[0, 0])


def test_a_model_with_patched_hidden_states_is_called_through_them():
    model = tiny_model(weight_std=0.3)
    calls = []
    original = model.hidden_states

    def hidden_states(z, attention_mask=None, **kwargs):
        calls.append(z.shape)
        return original(z, attention_mask, **kwargs)

    model.hidden_states = hidden_states
    den = S.Denoiser.from_model(model, visible_snr=VISIBLE_SNR)
    assert not den.split
    tokens, gen = prompted()
    with torch.no_grad():
        out = S.mdlm(den, tokens, gen, steps=4, generator=torch.Generator().manual_seed(0))
    assert len(calls) == out.nfe


class SyncCounter:
    """Counts the calls that copy a tensor's value to the host (a device sync on GPU)."""

    NAMES = ("tolist", "item", "__bool__", "__int__", "__float__", "nonzero")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(*args, _original=original, **kwargs):
                self.count += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        original_nonzero = torch.nonzero

        def nonzero(*args, **kwargs):
            self.count += 1
            return original_nonzero(*args, **kwargs)

        monkeypatch.setattr(torch, "nonzero", nonzero)


def host_syncs(monkeypatch, sampler, **kwargs):
    model = tiny_model(weight_std=0.3)
    tokens, gen = prompted()
    den = S.Denoiser.from_model(model, visible_snr=VISIBLE_SNR)
    with torch.no_grad(), monkeypatch.context() as patch:
        counter = SyncCounter(patch)
        sampler(den, tokens, gen, generator=per_row(0), **kwargs)
    return counter.count


def test_low_confidence_and_roar_steps_do_not_sync_and_remdm_syncs_once_per_step(monkeypatch):
    # a few syncs per call (setup, once per block), none per step
    assert host_syncs(monkeypatch, S.low_confidence, steps=6, temperature=1.0) == \
        host_syncs(monkeypatch, S.low_confidence, steps=12, temperature=1.0)
    assert host_syncs(monkeypatch, S.roar, tokens_per_step=2) == host_syncs(monkeypatch, S.roar, tokens_per_step=4)
    few = host_syncs(monkeypatch, S.remdm, steps=8, mode="loop", eta=0.05)
    many = host_syncs(monkeypatch, S.remdm, steps=24, mode="loop", eta=0.05)
    assert many - few <= 16 + 4  # one per step, plus at most a few where a remask is checked


@pytest.mark.slow
def test_compiled_denoiser_gives_the_same_tokens_as_eager(single_thread):
    model = tiny_model(weight_std=0.3)
    tokens, gen = prompted(batch=2)
    eager = S.Denoiser.from_model(model, visible_snr=VISIBLE_SNR)
    compiled = S.Denoiser.from_model(model, visible_snr=VISIBLE_SNR, compile=True)
    path = snr_schedule("geometric", 6, 0.01, VISIBLE_SNR)
    with torch.no_grad():
        for sampler, kwargs in ((S.remdm, dict(steps=8, mode="loop", eta=0.05)), (S.mdlm, dict(steps=8)),
                                (S.low_confidence, dict(steps=8, temperature=0.7)), (S.sde, dict(snr_path=path))):
            a = sampler(eager, tokens, gen, generator=per_row(1, 2), **kwargs)
            b = sampler(compiled, tokens, gen, generator=per_row(1, 2), **kwargs)
            assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe, sampler.__name__
    with pytest.raises(ValueError, match="compile"):
        S.Denoiser.from_model(model, compile="yes")


@pytest.mark.slow
def test_generate_compile_gives_the_same_tokens_and_is_validated(single_thread, monkeypatch):
    model = tiny_model(weight_std=0.3)
    calls, compiled_fn = [], S.Denoiser.compiled
    monkeypatch.setattr(S.Denoiser, "compiled", lambda self, **kw: calls.append(1) or compiled_fn(self, **kw))
    for strategy in ("mdlm", "sde"):
        eager = model.generate(strategy=strategy, steps=8, gen_length=16, num_return_sequences=2, seed=3)
        compiled = model.generate(strategy=strategy, steps=8, gen_length=16, num_return_sequences=2, seed=3,
                                  compile=True)
        assert torch.equal(eager, compiled), strategy
    assert len(calls) == 2  # generate(compile=True) really ran the compiled denoiser, once per call
    with pytest.raises(ValueError, match="compile must be"):
        model.generate(strategy="mdlm", steps=4, gen_length=8, compile="yes")


def test_split_denoiser_needs_both_parts():
    emb = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    with pytest.raises(ValueError, match="inputs_fn and trunk_fn"):
        S.Denoiser(None, None, emb, 1.0, inputs_fn=lambda z: z)
    with pytest.raises(ValueError, match="features_fn"):
        S.Denoiser(None, None, emb, 1.0)
    with pytest.raises(ValueError, match="state_inputs_fn and fixed_inputs"):
        S.Denoiser(lambda z: z, None, emb, 1.0, fixed_inputs=torch.ones(1, 2, dtype=torch.bool))
    assert not math.isnan(S.Denoiser(lambda z: z, None, emb, 1.0).visible_snr)


def test_inference_converter_reuses_the_padded_keys_and_notices_a_changed_embedding(monkeypatch):
    model = tiny_model(seed=1, weight_std=0.1)
    conv, z = model.converter, torch.randn(2, 6, 8) * 3
    with torch.no_grad():
        unit = model.noise_embeddings()
        first = conv(z, unit)
        keys = conv.__dict__["_keys_cache"][2]
        again = conv(z, unit)
        assert conv.__dict__["_keys_cache"][2] is keys  # no new pad for the same, unchanged E
        with monkeypatch.context() as patch:
            patch.setattr(SoftmaxConverter, "forward", straightforward_converter)
            ref = conv(z, unit)
        unit.mul_(-1.0)  # in place: the cached keys are stale
        flipped = conv(z, unit)
        with monkeypatch.context() as patch:
            patch.setattr(SoftmaxConverter, "forward", straightforward_converter)
            flipped_ref = conv(z, unit)
    assert torch.equal(first, again)
    torch.testing.assert_close(first, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(flipped, flipped_ref, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(flipped, first)


# ----------------------------------------------------------------------------- chunked LM head + CE
def head_loss_step(model, return_logits, labels, weights=None, num_items=None, backward_scale=0.5):
    """Loss, per-token CE and every gradient of one training forward + backward (same noise)."""
    model.zero_grad(set_to_none=True)
    ids = labels.clamp(min=0)
    snr = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) * 10
    snr[0, :3] = 0.0
    out = model(input_ids=ids, snr=snr, labels=labels, label_weights=weights, num_items_in_batch=num_items,
                generator=torch.Generator().manual_seed(2), return_logits=return_logits)
    assert (out.logits is None) == (not return_logits)
    (out.loss * backward_scale).backward()  # a trainer's 1/accumulation scale reaches backward
    return out.loss.detach(), out.token_loss, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


HEAD_CASES = [
    dict(),  # token mean
    dict(weighted=True, num_items=37),  # MDLM's 1/t weights over a trainer's token count
    dict(freeze=("backbone.output_layer.linear.weight",)),  # a frozen head (LoRA-style)
    dict(backbone_type="llada", intermediate_size=48),  # bias-free head after ln_f
]


@pytest.mark.parametrize("case", HEAD_CASES, ids=lambda c: ",".join(map(str, c)) or "mean")
def test_chunked_head_cross_entropy_gives_the_same_loss_and_gradients(case):
    case = dict(case)
    weighted, num_items, freeze = case.pop("weighted", False), case.pop("num_items", None), case.pop("freeze", ())
    model = tiny_model(seed=1, weight_std=0.1, **case).train()
    model.head_chunk_elements = 7 * 50  # 7 rows per chunk: 9 chunks over 60 positions, the last one short
    for name, p in model.named_parameters():
        p.requires_grad_(name not in freeze)
    labels = torch.randint(0, 50, (3, 20), generator=torch.Generator().manual_seed(0))
    labels[1, 4:9] = -100
    weights = torch.rand(3, 20, generator=torch.Generator().manual_seed(3)) * 4 if weighted else None
    loss, token_loss, grads = head_loss_step(model, False, labels, weights, num_items)
    ref_loss, ref_token_loss, ref_grads = head_loss_step(model, True, labels, weights, num_items)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(token_loss, ref_token_loss, rtol=1e-6, atol=1e-6)
    assert (token_loss[1, 4:9] == 0).all() and (token_loss[0] > 0).all()
    head_name = [n for n, p in model.named_parameters() if p is model.get_output_embeddings().weight][0]
    assert (grads.get(head_name) is not None) == (head_name not in freeze)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        if ref_grads[name] is None:  # unused on this path (LLaDA's wte feeds only clean prompt rows)
            assert grad is None, name
            continue
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-6, atol=1e-6, msg=name)


def test_chunked_head_cross_entropy_under_bf16_weights_and_no_grad():
    model = tiny_model(seed=1, weight_std=0.1).to(torch.bfloat16).train()
    labels = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    loss, token_loss, grads = head_loss_step(model, False, labels)
    ref_loss, ref_token_loss, ref_grads = head_loss_step(model, True, labels)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)  # fp32 logits from bf16 matmuls, both paths
    for name, grad in grads.items():
        assert grad.dtype == torch.bfloat16, name
        torch.testing.assert_close(grad.float(), ref_grads[name].float(), rtol=2e-2, atol=2e-3, msg=name)
    with torch.no_grad():  # evaluation: no gradient work, same loss
        out = model(input_ids=labels, snr=torch.full((2, 16), 3.0), labels=labels,
                    generator=torch.Generator().manual_seed(2), return_logits=False)
        ref = model(input_ids=labels, snr=torch.full((2, 16), 3.0), labels=labels,
                    generator=torch.Generator().manual_seed(2))
    assert out.logits is None and not out.loss.requires_grad
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-6, atol=1e-6)


def test_chunked_head_cross_entropy_refuses_a_second_backward():
    model = tiny_model(seed=1, weight_std=0.1).train()
    ids = torch.randint(0, 50, (2, 8))
    with pytest.raises(ValueError, match="return_logits"):
        model(input_ids=ids, labels=ids, return_logits="no")
    out = model(input_ids=ids, labels=ids, return_logits=False)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        out.loss.backward()


def test_chunked_head_falls_back_to_full_logits_for_a_wrapped_head(monkeypatch):
    """A head that is not a plain nn.Linear (e.g. a PEFT LoRA layer) keeps the full-logits loss."""
    from modeling_dsl.modeling_dsl import HeadCrossEntropy

    class WrappedLinear(torch.nn.Linear):
        pass

    model = tiny_model(seed=1, weight_std=0.1).train()
    old = model.backbone.output_layer.linear
    wrapped = WrappedLinear(old.in_features, old.out_features)
    wrapped.load_state_dict(old.state_dict())
    model.backbone.output_layer.linear = wrapped
    calls = []
    monkeypatch.setattr(HeadCrossEntropy, "apply", lambda *a: calls.append(a))
    ids = torch.randint(0, 50, (2, 8))
    out = model(input_ids=ids, labels=ids, generator=torch.Generator().manual_seed(0), return_logits=False)
    ref = model(input_ids=ids, labels=ids, generator=torch.Generator().manual_seed(0))
    assert not calls and out.logits is None
    torch.testing.assert_close(out.loss, ref.loss)
