"""Exact math of the DSL corruption, the Bayes oracle, the SNR samplers and SNR schedules."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_dsl import DSLConfig, SNRSampler, corrupt, optimal_denoiser, snr_schedule, token_posterior


def random_unit(k, d, gen):
    e = torch.randn(k, d, generator=gen, dtype=torch.float64)
    return e / e.norm(dim=-1, keepdim=True)


def explicit_posterior_mean(z, snr, E, prior):
    """Bayes posterior mean from the explicit Gaussian likelihoods N(z; γ e_k, γ I), token by token.

    γ = 0 makes z = 0 almost surely and the likelihood flat: the posterior is the prior.
    """
    out = torch.empty_like(z)
    for i in range(z.shape[0]):
        g = float(snr[i])
        if g == 0.0:
            w = prior.clone()
        else:
            sq = ((z[i][None, :] - g * E) ** 2).sum(-1)  # ‖z − γ e_k‖²
            logw = prior.log() - sq / (2 * g)
            w = torch.softmax(logw, dim=0)
        out[i] = w @ E
    return out


snr_values = st.one_of(st.just(0.0), st.floats(1e-3, 5.0), st.floats(5.0, 400.0))


@settings(max_examples=60, deadline=None)
@given(
    snrs=st.lists(snr_values, min_size=1, max_size=6),
    k=st.integers(2, 12),
    d=st.integers(2, 16),
    seed=st.integers(0, 2**31 - 1),
)
def test_optimal_denoiser_is_the_bayes_posterior_mean(snrs, k, d, seed):
    gen = torch.Generator().manual_seed(seed)
    E = random_unit(k, d, gen)
    prior = torch.rand(k, generator=gen, dtype=torch.float64) + 0.05
    prior = prior / prior.sum()
    tokens = torch.multinomial(prior, len(snrs), replacement=True, generator=gen)
    snr = torch.tensor(snrs, dtype=torch.float64)
    eps = torch.randn(len(snrs), d, generator=gen, dtype=torch.float64)
    z = snr[:, None] * E[tokens] + snr.sqrt()[:, None] * eps  # per-token γ, Eq. 1
    expected = explicit_posterior_mean(z, snr, E, prior)
    got = optimal_denoiser(z, E, prior)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(2, 10), d=st.integers(2, 12), seed=st.integers(0, 2**31 - 1),
       gammas=st.lists(st.floats(1e-2, 300.0), min_size=2, max_size=5))
def test_posterior_mean_of_a_given_z_does_not_depend_on_snr(k, d, seed, gammas):
    """App. A.1: for unit-norm tokens the Gaussian likelihood's γ-dependence cancels."""
    gen = torch.Generator().manual_seed(seed)
    E = random_unit(k, d, gen)
    prior = torch.softmax(torch.randn(k, generator=gen, dtype=torch.float64), 0)
    z = torch.randn(3, d, generator=gen, dtype=torch.float64) * 3
    means = [explicit_posterior_mean(z, torch.full((3,), g, dtype=torch.float64), E, prior) for g in gammas]
    for m in means:
        torch.testing.assert_close(m, optimal_denoiser(z, E, prior), rtol=1e-9, atol=1e-9)


def test_token_posterior_is_normalised_and_prior_at_zero():
    gen = torch.Generator().manual_seed(0)
    E = random_unit(7, 5, gen)
    prior = torch.softmax(torch.randn(7, generator=gen, dtype=torch.float64), 0)
    p = token_posterior(torch.zeros(4, 5, dtype=torch.float64), E, prior)
    torch.testing.assert_close(p, prior.expand(4, 7))


def test_corrupt_moments_zero_snr_and_noiseless():
    gen = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(1, 1, 8), dim=-1).expand(20000, 1, 8).contiguous()
    snr = torch.full((20000, 1), 9.0)
    z = corrupt(x, snr, gen)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.mean(0), 9.0 * x[0], atol=0.08, rtol=0)
    assert abs(float(z.var(0).mean()) - 9.0) < 0.2  # Var z = γ
    mixed = torch.tensor([[0.0, 4.0]])
    x2 = torch.nn.functional.normalize(torch.randn(1, 2, 8), dim=-1)
    z2 = corrupt(x2, mixed, gen)
    assert torch.count_nonzero(z2[0, 0]) == 0  # γ = 0 → z = 0 exactly (a masked token)
    torch.testing.assert_close(corrupt(x2, mixed, gen, noise=False), mixed[..., None] * x2)
    with pytest.raises(ValueError, match="snr"):
        corrupt(x2, torch.tensor([[-1.0, 1.0]]), gen)


@pytest.mark.parametrize("preset", ["paper", "authors_code"])
def test_snr_sampler_matches_preset_roar_fraction_and_lognormal_moments(preset):
    config = DSLConfig.from_preset(preset, vocab_size=100, mask_token_id=100)
    sampler = SNRSampler.from_config(config)
    gen = torch.Generator().manual_seed(0)
    batch, length = (400, 256) if preset == "paper" else (20000, 8)
    snr, roar = sampler.sample(batch, length, gen, return_roar_mask=True)
    assert snr.shape == (batch, length) and snr.dtype == torch.float32 and (snr >= 0).all()
    frac = roar.float().mean().item()
    assert abs(frac - config.roar_prob) < 0.01, frac
    log_snr = snr[~roar].log()
    if config.snr_granularity == "sequence":
        # one LogNormal draw per sequence: every position of a non-ROAR row shares it
        rows = ~roar[:, 0]
        assert (snr[rows] == snr[rows][:, :1]).all()
        log_snr = snr[rows][:, 0].log()
    assert abs(log_snr.mean().item() - config.lognormal_mu) < 0.03
    assert abs(log_snr.std().item() - config.lognormal_sigma) < 0.03
    roar_snr = snr[roar]
    if config.roar_type == "atomic":
        assert set(roar_snr.unique().tolist()) <= {0.0, config.snr_max}
        if config.snr_granularity == "sequence":
            # k ~ U{0..L-1} revealed positions: the revealed share averages (L-1)/(2L)
            revealed = (snr[roar[:, 0]] > 0).float().mean().item()
            assert abs(revealed - (length - 1) / (2 * length)) < 0.02
    else:
        hidden = roar_snr[roar_snr < config.snr_min]
        visible = roar_snr[roar_snr >= config.roar_c * config.snr_max]
        assert hidden.numel() + visible.numel() == roar_snr.numel()  # nothing between the endpoints
        assert abs(hidden.numel() / roar_snr.numel() - 0.5) < 0.03  # Bernoulli(½)
        assert visible.max() <= config.snr_max and abs(hidden.mean().item() - config.snr_min / 2) < 0.05


def test_snr_sampler_clip_and_reproducibility():
    sampler = SNRSampler(lognormal_mu=3.0, lognormal_sigma=2.0, clip=True, snr_min=1.0, snr_max=50.0, roar_prob=0.0)
    a = sampler.sample(8, 64, torch.Generator().manual_seed(3))
    b = sampler.sample(8, 64, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.min() >= 1.0 and a.max() <= 50.0 and (a == 50.0).any()


def test_snr_schedules():
    geo = snr_schedule("geometric", 10, 0.01, 100.0)
    assert geo.shape == (11,) and math.isclose(geo[0], 0.01) and math.isclose(geo[-1], 100.0, rel_tol=1e-12)
    ratios = geo[1:] / geo[:-1]
    torch.testing.assert_close(ratios, ratios[0].expand(10))
    lin = snr_schedule("linear", 4, 1.0, 5.0)
    torch.testing.assert_close(lin, torch.arange(1.0, 6.0, dtype=torch.float64))
    sens = snr_schedule("sensitive", 40, 0.01, 100.0)
    assert sens.shape == (41,) and (sens[1:] > sens[:-1]).all()
    # 5 % of the steps up to 7, 90 % between 7 and 74, the rest to snr_max
    assert math.isclose(sens[2], 7.0, rel_tol=1e-9) and math.isclose(sens[38], 74.0, rel_tol=1e-9)
    assert math.isclose(sens[-1], 100.0, rel_tol=1e-9)
    short = snr_schedule("sensitive", 8, 0.01, 100.0)
    assert math.isclose(short[-1], 74.0, rel_tol=1e-9)  # as in DSL-LLaDA: the last piece is empty
    for bad in [("cosine", 4, 0.1, 1.0), ("linear", 0, 0.1, 1.0), ("linear", 4, 2.0, 1.0)]:
        with pytest.raises(ValueError):
            snr_schedule(*bad)


def test_snr_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="roar_type"):
        SNRSampler(roar_type="soft")
    with pytest.raises(ValueError, match="granularity"):
        SNRSampler(granularity="batch")
    with pytest.raises(ValueError, match="roar_prob"):
        SNRSampler(roar_prob=1.5)
    assert np.isfinite(SNRSampler().sample(2, 3).numpy()).all()
