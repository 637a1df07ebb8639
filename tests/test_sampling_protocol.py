"""Samplers against the paper's logged protocol: η_cap(T) (Eq. 24) and Table 5's rewrite counts,
ReMDM-loop as the default mode, DSL-LLaDA's 'sensitive' SNR schedule, the diagnostics'
normalisation (§7.4 / Eq. 25), and the decoding-time visible SNR and β of `Denoiser.from_model`."""

import math

import pytest
import torch

from conftest import tiny_model
from modeling_dsl import sampling_dsl as S
from modeling_dsl.noise_dsl import snr_schedule

pytestmark = pytest.mark.usefixtures("single_thread")


def uniform_denoiser(vocab: int, dim: int = 4) -> S.Denoiser:
    """p_θ uniform over `vocab` tokens at every position, whatever z (a ReMDM dummy)."""
    embeddings = torch.nn.functional.normalize(torch.randn(vocab, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    return S.Denoiser(lambda z: z.new_zeros(*z.shape[:2], 1), lambda f: f.expand(*f.shape[:-1], vocab), embeddings,
                      visible_snr=100.0)


# Table 5 of the paper: mean rewrites per token of ReMDM-loop with η_cap(T), L = 1024.
TABLE_5_REWRITES = {128: 0.580, 256: 0.925, 512: 1.611, 1024: 1.849}


@pytest.mark.parametrize("steps", sorted(TABLE_5_REWRITES))
def test_default_remdm_is_the_loop_with_eq24_eta_and_reproduces_table_5_rewrites(steps):
    # No mode and no eta given: the defaults must be the paper's ReMDM-loop with η_cap(T) of Eq. 24.
    # With p_θ uniform over 1000 tokens every remask is redrawn as another token (p = 0.999), so the
    # rewrite count measures the loop's remasking: ≈ (0.5·T loop steps)·α_on·η_cap(T) per token.
    length, batch = 1024, 4
    tokens = torch.zeros(batch, length, dtype=torch.long)
    out = S.remdm(uniform_denoiser(1000), tokens, torch.ones_like(tokens, dtype=torch.bool), steps=steps,
                  generator=torch.Generator().manual_seed(steps), diagnostics=True)
    measured = out.diagnostics["rewrites"].float().mean().item()
    assert measured == pytest.approx(TABLE_5_REWRITES[steps], rel=0.05), (steps, measured)
    assert not bool(out.extra["masked"].any())


def test_eta_cap_is_eq24():
    assert [S.eta_cap_default(t) for t in (128, 256, 512, 1024)] == [0.010, 0.008, 0.007, 0.004]


# ----------------------------------------------------------------------------- 'sensitive' schedule


def loglinear(a, b, n):
    return [math.exp(math.log(a) + (math.log(b) - math.log(a)) * i / n) for i in range(n + 1)]


@pytest.mark.parametrize("steps", [2, 8, 10, 11, 16, 40])
def test_sensitive_schedule_is_dsl_llada_three_pieces(steps):
    n1, n2 = max(1, int(0.05 * steps)), max(1, int(0.9 * steps))
    n3 = steps - n1 - n2
    expected = loglinear(0.01, 7.0, n1) + loglinear(7.0, 74.0, n2)[1:]
    if n3 > 0:
        expected += loglinear(74.0, 100.0, n3)[1:]
    grid = snr_schedule("sensitive", steps, 0.01, 100.0)
    assert grid.tolist() == pytest.approx(expected, rel=1e-12)
    assert len(grid) == steps + 1
    assert grid[-1].item() == pytest.approx(74.0 if steps <= 10 else 100.0)  # n3 = 0 ends at 74


@pytest.mark.parametrize("args, names", [
    ((8, 0.01, 50.0), "snr_max"),    # the paper preset's γ_max = 50 cannot end the sensitive grid
    ((8, 0.01, 74.0), "snr_max"),
    ((8, 7.0, 100.0), "snr_min"),
    ((1, 0.01, 100.0), "steps"),
])
def test_sensitive_schedule_never_falls_back_silently(args, names):
    with pytest.raises(ValueError, match=names):
        snr_schedule("sensitive", *args)


# ----------------------------------------------------------------------------- diagnostics normalisation


def ladder_denoiser(length: int, vocab: int = 6) -> S.Denoiser:
    """Fixed logits per position, whatever z: position j has max probability growing with j."""
    scale = torch.linspace(0.0, 4.0, length)
    logits = torch.zeros(length, vocab)
    logits[:, 0] = scale
    embeddings = torch.nn.functional.normalize(torch.randn(vocab, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    return S.Denoiser(lambda z: logits.expand(z.shape[0], -1, -1), None, embeddings, visible_snr=100.0)


@pytest.mark.parametrize("sampler, kwargs", [
    (S.remdm, dict(steps=8, mode="cap", eta=0.2)),
    (S.mdlm, dict(steps=8)),
    (S.low_confidence, dict(steps=8, temperature=1.0)),
    (S.roar, dict(tokens_per_step=2)),
])
def test_diagnostics_over_all_positions_follow_eq25(sampler, kwargs):
    length = 16
    den = ladder_denoiser(length)
    tokens = torch.zeros(2, length, dtype=torch.long)
    gen = torch.zeros_like(tokens, dtype=torch.bool)
    gen[0, 4:] = True  # row 0: a 4-token prompt, then G = 12 generated positions
    gen[1, :12] = True  # row 1: G = 12 generated positions before 4 fixed ones
    runs = {positions: sampler(den, tokens, gen, generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
                               diagnostics=True, diagnostics_positions=positions, **kwargs)
            for positions in ("evaluated", "all")}
    assert torch.equal(runs["all"].tokens, runs["evaluated"].tokens)  # diagnostics never change the draws
    assert runs["all"].nfe == runs["evaluated"].nfe                   # nor the counted NFE
    probs = torch.softmax(den.features_fn(torch.zeros(1, length, 4))[0], dim=-1)
    uncertainty = 1 - probs.max(dim=-1).values
    expected = torch.stack([uncertainty[4:].mean(), uncertainty[:12].mean()])  # mean over all G positions
    u_all = runs["all"].diagnostics["u_t"]
    torch.testing.assert_close(u_all, expected.expand_as(u_all).float())
    u_eval = runs["evaluated"].diagnostics["u_t"]
    assert not torch.allclose(torch.nan_to_num(u_eval), u_all)        # drawn positions only: differs


def test_remask_ratio_divides_by_g_with_all_positions():
    length = 32
    den = ladder_denoiser(length)
    tokens = torch.zeros(1, length, dtype=torch.long)
    gen = torch.ones_like(tokens, dtype=torch.bool)
    kwargs = dict(steps=16, mode="cap", eta=0.3, diagnostics=True)
    every = S.remdm(den, tokens, gen, generator=torch.Generator().manual_seed(0), diagnostics_positions="all",
                    **kwargs)
    seen = []
    S.remdm(den, tokens, gen, generator=torch.Generator().manual_seed(0),
            callback=lambda step, draft, masked, permanent: seen.append(masked[0].clone()), **kwargs)
    masked_after = torch.stack(seen)                      # (steps, L) mask state after each step
    masked_before = torch.cat([torch.ones(1, length, dtype=torch.bool), masked_after[:-1]])
    remasked = (masked_after & ~masked_before).sum(dim=1).float()
    torch.testing.assert_close(every.diagnostics["r_t"][:, 0], remasked / length)
    assert remasked.sum() > 0


def test_diagnostics_positions_is_validated():
    den = ladder_denoiser(4)
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="diagnostics_positions"):
        S.mdlm(den, tokens, torch.ones_like(tokens, dtype=torch.bool), steps=2, diagnostics=True,
               diagnostics_positions="sequence")


# ----------------------------------------------------------------------------- visible SNR and β_inf


def recording_model(**overrides):
    """A tiny model whose `hidden_states` calls are recorded (z and the converter arguments)."""
    model = tiny_model(weight_std=0.2, **overrides)
    calls = []
    original = model.hidden_states

    def hidden_states(z, attention_mask=None, **kwargs):
        calls.append((z.clone(), kwargs))
        return original(z, attention_mask, **kwargs)

    model.hidden_states = hidden_states
    return model, calls


def prompted(length=12, prompt=4):
    tokens = torch.arange(length).unsqueeze(0) % 40
    gen = torch.zeros_like(tokens, dtype=torch.bool)
    gen[:, prompt:] = True
    return tokens, gen


@pytest.mark.parametrize("sampler, kwargs", [
    (S.mdlm, dict(steps=4)), (S.remdm, dict(steps=4)), (S.low_confidence, dict(steps=4)),
    (S.roar, dict(tokens_per_step=4)),
    (lambda den, t, g, **kw: S.sde(den, t, g, snr_schedule("geometric", 3, 0.01, 10.0), **kw), {}),
])
def test_every_sampler_feeds_prompt_tokens_at_the_chosen_visible_snr(sampler, kwargs):
    model, calls = recording_model()
    tokens, gen = prompted()
    sampler(S.Denoiser.from_model(model, visible_snr=123.0), tokens, gen,
            generator=torch.Generator().manual_seed(0), **kwargs)
    assert calls
    for z, _ in calls:
        torch.testing.assert_close(z[0, :4].norm(dim=-1), torch.full((4,), 123.0))


def test_visible_snr_defaults_to_the_model_config():
    model, calls = recording_model(snr_max=50.0, visible_snr=80.0)
    tokens, gen = prompted()
    S.mdlm(S.Denoiser.from_model(model), tokens, gen, steps=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(calls[0][0][0, :4].norm(dim=-1), torch.full((4,), 80.0))


def test_beta_scale_decodes_as_a_model_with_scaled_beta_without_touching_weights():
    model = tiny_model(weight_std=0.2)
    reference = tiny_model(weight_std=0.2)
    with torch.no_grad():
        reference.converter.beta.mul_(2.0)
    tokens, gen = prompted()
    learned = model.converter.beta.detach().clone()
    run = dict(steps=4, generator=torch.Generator().manual_seed(5))
    scaled = S.sde(S.Denoiser.from_model(model, beta_scale=2.0), tokens, gen, snr_schedule("geometric", 4, 0.01, 20.0),
                   generator=torch.Generator().manual_seed(5), diagnostics=True)
    expected = S.sde(S.Denoiser.from_model(reference), tokens, gen, snr_schedule("geometric", 4, 0.01, 20.0),
                     generator=torch.Generator().manual_seed(5), diagnostics=True)
    torch.testing.assert_close(scaled.extra["final_logits"], expected.extra["final_logits"])
    plain = S.sde(S.Denoiser.from_model(model), tokens, gen, snr_schedule("geometric", 4, 0.01, 20.0),
                  generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(plain.extra["final_logits"], scaled.extra["final_logits"])
    assert torch.equal(model.converter.beta, learned)
    a = S.mdlm(S.Denoiser.from_model(model, beta=2.0 * float(learned)), tokens, gen, **run)
    b = S.mdlm(S.Denoiser.from_model(reference), tokens, gen, **{**run, "generator": torch.Generator().manual_seed(5)})
    assert torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("kwargs, name", [
    (dict(visible_snr=0.0), "visible_snr"), (dict(visible_snr=float("nan")), "visible_snr"),
    (dict(beta=-1.0), "beta"), (dict(beta_scale=0.0), "beta_scale"),
    (dict(beta=1.0, beta_scale=2.0), "beta_scale"),
])
def test_from_model_validates_decoding_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        S.Denoiser.from_model(tiny_model(), **kwargs)
