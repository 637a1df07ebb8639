"""Samplers (modeling_dsl/sampling_dsl.py) driven by exact oracles and small hand-built denoisers.

The oracle tests use the paper's cyclic toy (App. B): the data are the K cyclic shifts of
(0, …, K−1), uniformly; the exact Bayes denoiser gives p(x_i | z) for any mix of noisy, visible
and masked positions. A correct sampler driven by it yields (nearly) only valid cyclic
sequences, with uniformly distributed shifts.
"""

import math

import pytest
import torch
from scipy.stats import chisquare

from modeling_dsl import sampling_dsl as S
from modeling_dsl.noise_dsl import snr_schedule, token_posterior
from oracles import ExactSequenceDenoiser, cyclic_support, remdm_loop_schedule, remdm_sigma, remdm_unmask_prob

NUM_SAMPLES = 600
ALPHA = 0.01


pytestmark = pytest.mark.usefixtures("single_thread")


def embeddings(num_tokens: int, kind: str, seed: int = 0) -> torch.Tensor:
    if kind == "circle":
        angle = 2 * math.pi * torch.arange(num_tokens) / num_tokens
        return torch.stack([angle.cos(), angle.sin()], dim=-1)
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(num_tokens, 6, generator=gen), dim=-1)


def oracle(num_tokens: int, kind: str = "random") -> ExactSequenceDenoiser:
    return ExactSequenceDenoiser(cyclic_support(num_tokens), embeddings(num_tokens, kind), visible_snr=1000.0)


def blank(batch: int, length: int):
    return torch.zeros(batch, length, dtype=torch.long), torch.ones(batch, length, dtype=torch.bool)


def cyclic_score(tokens: torch.Tensor, num_tokens: int):
    """(valid fraction, chi-square p-value of the shift counts among valid rows, counts)."""
    shift = tokens[:, 0]
    valid = ((tokens - torch.arange(num_tokens)) % num_tokens == shift[:, None]).all(dim=1)
    counts = torch.bincount(shift[valid], minlength=num_tokens)
    return valid.float().mean().item(), chisquare(counts.numpy()).pvalue, counts


# ----------------------------------------------------------------------------- oracle sanity


def test_exact_denoiser_marginals_equal_the_single_token_posterior():
    k = 7
    den = oracle(k)
    z = torch.zeros(3, k, 6)
    z[:, 2] = torch.randn(3, 6, generator=torch.Generator().manual_seed(0)) * 2.0
    probs = den.logits(den.features(z)).exp()
    # Only position 2 is observed: each of its values pins one shift, so its marginal is the
    # one-token posterior; the others follow by the cyclic structure.
    torch.testing.assert_close(probs[:, 2].float(), token_posterior(z[:, 2], den.embeddings), atol=1e-6, rtol=0)
    torch.testing.assert_close(probs[:, 3].float(), probs[:, 2].roll(1, dims=-1).float(), atol=1e-6, rtol=0)
    assert torch.allclose(probs.sum(-1), torch.ones(3, k, dtype=probs.dtype))


# ----------------------------------------------------------------------------- oracle acceptance

ORACLE_CASES = {
    "sde_euler": lambda d, t, m, g: S.sde(d, t, m, snr_schedule("geometric", 200, 0.01, 100.0), generator=g),
    "sde_heun": lambda d, t, m, g: S.sde(d, t, m, snr_schedule("geometric", 60, 0.01, 100.0), integrator="heun",
                                         generator=g),
    "mdlm": lambda d, t, m, g: S.mdlm(d, t, m, steps=1000, generator=g),
    "remdm_cap": lambda d, t, m, g: S.remdm(d, t, m, steps=2000, mode="cap", eta=2e-3, generator=g),
    "remdm_rescale": lambda d, t, m, g: S.remdm(d, t, m, steps=2000, mode="rescale", eta=2e-3, generator=g),
    "remdm_loop": lambda d, t, m, g: S.remdm(d, t, m, steps=2000, mode="loop", eta=2e-3, generator=g),
    "hybrid_low_confidence": lambda d, t, m, g: S.hybrid(
        d, t, m, sde_steps=40, finish_steps=t.shape[1], switch_snr=3.0, finish_kwargs=dict(temperature=1.0),
        generator=g),
    "hybrid_remdm": lambda d, t, m, g: S.hybrid(
        d, t, m, sde_steps=40, finish_steps=1000, switch_snr=3.0, finish="remdm",
        finish_kwargs=dict(mode="cap", eta=1e-3), generator=g),
    "roar": lambda d, t, m, g: S.roar(d, t, m, tokens_per_step=1, generator=g),
    "roar_left_to_right": lambda d, t, m, g: S.roar(d, t, m, tokens_per_step=1, order="left_to_right", generator=g),
    "low_confidence_sampled": lambda d, t, m, g: S.low_confidence(d, t, m, steps=t.shape[1], temperature=1.0,
                                                                  generator=g),
}


@pytest.mark.parametrize("num_tokens", [5, 7])
@pytest.mark.parametrize("name", sorted(ORACLE_CASES))
def test_oracle_cyclic_toy_valid_and_uniform(name, num_tokens):
    tokens, gen_mask = blank(NUM_SAMPLES, num_tokens)
    out = ORACLE_CASES[name](oracle(num_tokens), tokens, gen_mask, torch.Generator().manual_seed(1))
    valid, p_value, counts = cyclic_score(out.tokens, num_tokens)
    print(f"{name} K={num_tokens}: valid={valid:.4f} chi2 p={p_value:.3f} counts={counts.tolist()} nfe={out.nfe}")
    assert valid >= 0.99
    assert p_value > ALPHA


PRIOR = torch.tensor([0.35, 0.25, 0.2, 0.12, 0.08])


@pytest.mark.parametrize("name", sorted(ORACLE_CASES))
def test_oracle_cyclic_toy_with_a_non_uniform_prior(name):
    """Uniform shifts are partly guaranteed by symmetry (a random first position turns any token
    bias into uniform shifts); a non-uniform prior over the shifts makes the chi-square test see
    biased categorical draws. LLaDA's confidence-ordered commits are biased towards likely
    tokens by design: the test must detect that."""
    den = ExactSequenceDenoiser(cyclic_support(5), embeddings(5, "random"), visible_snr=1000.0, prior=PRIOR)
    tokens, gen_mask = blank(NUM_SAMPLES, 5)
    out = ORACLE_CASES[name](den, tokens, gen_mask, torch.Generator().manual_seed(1))
    valid, _, counts = cyclic_score(out.tokens, 5)
    p_value = chisquare(counts.numpy(), (PRIOR * counts.sum()).numpy()).pvalue
    print(f"{name} prior: valid={valid:.4f} chi2 p={p_value:.4f} counts={counts.tolist()}")
    assert valid >= 0.99
    if name == "low_confidence_sampled":
        assert p_value < 1e-6
    else:
        assert p_value > ALPHA


@pytest.mark.parametrize("num_tokens", [5, 7])
def test_oracle_cyclic_toy_remdm_conf(num_tokens):
    # ReMDM-conf remasks about σ_max = min(1, (1 − α_s)/α_t) tokens per row per step and unmasks at
    # the MDLM rate, so tokens settle only late (t ~ √(L/T)); its parallel-commit error shrinks
    # only like 1/√T (measured: 97.8 % valid at T = 2000, 99.0 % at T = 12000 for K = 7).
    tokens, gen_mask = blank(NUM_SAMPLES, num_tokens)
    out = S.remdm(oracle(num_tokens), tokens, gen_mask, steps=30000, mode="conf",
                  generator=torch.Generator().manual_seed(1))
    valid, p_value, counts = cyclic_score(out.tokens, num_tokens)
    print(f"remdm_conf K={num_tokens}: valid={valid:.4f} chi2 p={p_value:.3f} counts={counts.tolist()}")
    assert valid >= 0.99
    assert p_value > ALPHA


@pytest.mark.parametrize("kind", ["circle", "random"])
def test_oracle_sde_on_the_unit_circle_and_random_vectors(kind):
    tokens, gen_mask = blank(NUM_SAMPLES, 7)
    den = ExactSequenceDenoiser(cyclic_support(7), embeddings(7, kind), visible_snr=1000.0)
    out = S.sde(den, tokens, gen_mask, snr_schedule("sensitive", 100, 0.01, 100.0), generator=torch.Generator().manual_seed(4))
    valid, p_value, _ = cyclic_score(out.tokens, 7)
    assert valid >= 0.99 and p_value > ALPHA


def test_parallel_commits_show_the_factorisation_error():
    """Fewer steps than positions: independent per-position draws break the joint structure.
    The valid fractions are reported (printed), and must be clearly below the one-per-step ones."""
    k = 7
    tokens, gen_mask = blank(NUM_SAMPLES, k)
    den = oracle(k)
    runs = {
        "mdlm T=2": S.mdlm(den, tokens, gen_mask, steps=2, generator=torch.Generator().manual_seed(2)),
        "mdlm T=4": S.mdlm(den, tokens, gen_mask, steps=4, generator=torch.Generator().manual_seed(2)),
        "roar k=2": S.roar(den, tokens, gen_mask, tokens_per_step=2, generator=torch.Generator().manual_seed(2)),
        "roar k=4": S.roar(den, tokens, gen_mask, tokens_per_step=4, generator=torch.Generator().manual_seed(2)),
        "remdm-cap T=4": S.remdm(den, tokens, gen_mask, steps=4, mode="cap", generator=torch.Generator().manual_seed(2)),
        "low_confidence T=2 (sampled)": S.low_confidence(den, tokens, gen_mask, steps=2, temperature=1.0,
                                                         generator=torch.Generator().manual_seed(2)),
    }
    for name, out in runs.items():
        valid, p_value, _ = cyclic_score(out.tokens, k)
        print(f"fewer steps than positions, {name}: valid={valid:.4f} (chi2 p={p_value:.3f})")
        assert valid < 0.9, name


def test_prompted_oracle_generation_follows_the_prompt():
    """A visible prompt token pins the shift: every sampler must continue it consistently."""
    k = 7
    den = oracle(k)
    tokens = torch.zeros(200, k, dtype=torch.long)
    tokens[:, 0] = 3
    gen_mask = torch.ones_like(tokens, dtype=torch.bool)
    gen_mask[:, 0] = False
    expected = (torch.arange(k) + 3) % k
    gen = torch.Generator().manual_seed(0)
    outs = [
        S.sde(den, tokens, gen_mask, snr_schedule("geometric", 30, 0.01, 50.0), generator=gen),
        S.mdlm(den, tokens, gen_mask, steps=8, generator=gen),
        S.remdm(den, tokens, gen_mask, steps=8, mode="loop", eta=0.05, generator=gen),
        S.roar(den, tokens, gen_mask, tokens_per_step=3, generator=gen),
        S.low_confidence(den, tokens, gen_mask, steps=2, temperature=1.0, generator=gen),
    ]
    for out in outs:
        assert (out.tokens == expected).all()


# ----------------------------------------------------------------------------- SDE details


def test_sde_holds_prompt_embeddings_and_counts_nfe():
    seen = []

    def recorder(z):
        seen.append(z.clone())
        return torch.zeros(z.shape[0], z.shape[1], 4)

    emb = embeddings(4, "random")
    den = S.as_denoiser(recorder, emb, visible_snr=30.0)
    tokens = torch.tensor([[2, 1, 0, 0]])
    gen_mask = torch.tensor([[False, False, True, True]])
    out = S.sde(den, tokens, gen_mask, torch.tensor([0.5, 1.0, 2.0]), integrator="heun",
                generator=torch.Generator().manual_seed(0))
    # z = 0 is the state at γ_0 = 0.5 (nothing prepended): 2 steps × 2 evaluations (Heun) + the final decode.
    assert out.nfe == 5 == len(seen)
    euler = S.sde(den, tokens, gen_mask, torch.tensor([0.5, 1.0, 2.0]), generator=torch.Generator().manual_seed(0))
    assert euler.nfe == 3
    for z in seen:
        torch.testing.assert_close(z[0, 0], 30.0 * emb[2])
        torch.testing.assert_close(z[0, 1], 30.0 * emb[1])
    assert torch.equal(out.tokens[0, :2], tokens[0, :2])
    assert seen[0][0, 2:].abs().max() == 0  # the state starts at z = 0 (at γ_0)


def test_sde_euler_step_is_drift_plus_scaled_brownian_increment():
    emb = embeddings(4, "random")
    const_logits = torch.tensor([2.0, 0.0, -1.0, 0.5])
    den = S.as_denoiser(lambda z: const_logits.expand(z.shape[0], z.shape[1], 4), emb, visible_snr=30.0)
    tokens, gen_mask = blank(3, 2)
    x_hat = torch.softmax(const_logits, -1) @ emb
    for scale in (1.0, 0.3, 0.0):
        out = S.sde(den, tokens, gen_mask, torch.tensor([0.0, 4.0]), noise_scale=scale,
                    generator=torch.Generator().manual_seed(5))
        noise = torch.randn(6, emb.shape[1], generator=torch.Generator().manual_seed(5)).view(3, 2, -1)
        torch.testing.assert_close(out.extra["z"], 4.0 * x_hat + scale * 2.0 * noise)


def test_sde_posterior_top_k_uses_only_the_top_tokens():
    emb = embeddings(5, "random")
    logits = torch.tensor([3.0, 2.0, 0.0, -1.0, -2.0])
    den = S.as_denoiser(lambda z: logits.expand(z.shape[0], z.shape[1], 5), emb, visible_snr=30.0)
    tokens, gen_mask = blank(1, 1)
    out = S.sde(den, tokens, gen_mask, torch.tensor([0.0, 1.0]), noise_scale=0.0, posterior_top_k=2)
    expected = torch.softmax(logits[:2], -1) @ emb[:2]
    torch.testing.assert_close(out.extra["z"][0, 0], expected)


def test_per_token_snr_paths_move_each_position_by_its_own_increments():
    emb = embeddings(4, "random")
    den = S.as_denoiser(lambda z: torch.zeros(z.shape[0], z.shape[1], 4), emb, visible_snr=30.0)
    tokens, gen_mask = blank(1, 3)
    path = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 5.0], [0.0, 0.0, 0.0]])  # (L, S+1)
    out = S.sde(den, tokens, gen_mask, path, noise_scale=0.0)
    mean = emb.mean(0)
    torch.testing.assert_close(out.extra["z"][0], torch.stack([2.0 * mean, 5.0 * mean, 0.0 * mean]))
    assert out.extra["snr"][0].tolist() == [2.0, 5.0, 0.0]


def test_posterior_mean_top_k_is_the_renormalised_top_k_average():
    emb = embeddings(6, "random")
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    full = torch.softmax(logits, -1)
    kept = torch.zeros_like(full).scatter_(-1, logits.topk(3, -1).indices, full.topk(3, -1).values)
    torch.testing.assert_close(S.posterior_mean(logits, emb, 3), (kept / kept.sum(-1, keepdim=True)) @ emb)
    torch.testing.assert_close(S.posterior_mean(logits, emb), full @ emb)
    torch.testing.assert_close(S.posterior_mean(logits, emb, 6), full @ emb)


# ----------------------------------------------------------------------------- ReMDM formulas


# Hand-computed from the reference (mdlm_remdm.md §4): r = (1 − α_s)/α_t; cap = min(η, r);
# rescale = η·min(1, r); conf's σ_max = min(1, r) (α_t = 0: cap η, σ_max 1); unmask probability
# (α_s − (1 − σ)α_t)/(1 − α_t) for σ = 0 (MDLM) and σ = cap.
SIGMA_TABLE = [
    # α_s,  α_t,  η,    cap,  rescale,     σ_max,       unmask(0),  unmask(cap)
    (0.6, 0.5, 0.1, 0.1, 0.08, 0.8, 0.2, 0.3),
    (0.3, 0.2, 0.9, 0.9, 0.9, 1.0, 0.125, 0.35),
    (0.95, 0.94, 0.02, 0.02, 0.02 * 0.05 / 0.94, 0.05 / 0.94, 1 / 6, 0.48),
    (0.1, 0.0, 0.05, 0.05, 0.05, 1.0, 0.1, 0.1),
]


@pytest.mark.parametrize("alpha_s,alpha_t,eta,cap,rescale,sigma_max,unmask_mdlm,unmask_cap", SIGMA_TABLE)
def test_remdm_sigma_matches_hand_computed_values(alpha_s, alpha_t, eta, cap, rescale, sigma_max, unmask_mdlm,
                                                  unmask_cap):
    assert remdm_sigma("cap", alpha_s, alpha_t, eta) == pytest.approx(cap)
    assert remdm_sigma("rescale", alpha_s, alpha_t, eta) == pytest.approx(rescale)
    assert remdm_sigma("conf", alpha_s, alpha_t, eta) == pytest.approx(sigma_max)
    assert remdm_sigma("mdlm", alpha_s, alpha_t, eta) == 0.0
    assert remdm_unmask_prob(alpha_s, alpha_t, 0.0) == pytest.approx(unmask_mdlm)
    assert remdm_unmask_prob(alpha_s, alpha_t, cap) == pytest.approx(unmask_cap)
    # The per-row tensor form the sampler uses agrees (t = 1 − α_t, dt = α_s − α_t).
    t = torch.tensor([1.0 - alpha_t], dtype=torch.float64)
    dt = torch.tensor([alpha_s - alpha_t], dtype=torch.float64)
    for mode, sigma, unmask in (("mdlm", 0.0, unmask_mdlm), ("cap", cap, unmask_cap),
                                ("rescale", rescale, None), ("conf", sigma_max, unmask_mdlm)):
        got_sigma, got_unmask = S._remdm_row_rates(mode, t, dt, eta, 0.55, 0.05, 0.9)
        assert got_sigma.item() == pytest.approx(sigma)
        if unmask is not None:
            assert got_unmask.item() == pytest.approx(unmask)


def test_remdm_loop_phases_switch_at_t_on_and_t_off():
    t_on, t_off, alpha_on, dt = 0.55, 0.05, 0.9, 0.01
    phase, a_t, a_s = remdm_loop_schedule(0.56, dt, t_on, t_off, alpha_on)
    assert phase == 1
    assert a_t == pytest.approx(0.44 * 0.9 / 0.45) and a_s == pytest.approx(0.45 * 0.9 / 0.45)
    assert remdm_loop_schedule(0.55, dt, t_on, t_off, alpha_on) == (2, 0.9, 0.9)
    assert remdm_loop_schedule(0.051, dt, t_on, t_off, alpha_on)[0] == 2
    phase, a_t, a_s = remdm_loop_schedule(0.05, dt, t_on, t_off, alpha_on)
    assert phase == 3
    assert a_t == pytest.approx(1 - 0.05 * 0.1 / 0.05) and a_s == pytest.approx(1 - 0.04 * 0.1 / 0.05)
    assert remdm_loop_schedule(1.0, dt, t_on, t_off, alpha_on)[1] == pytest.approx(0.0)
    # In the loop phase the masked fraction stays at 1 − α_on: unmask rate η·α_on/(1 − α_on).
    assert remdm_unmask_prob(0.9, 0.9, 0.02) == pytest.approx(0.02 * 0.9 / 0.1)
    # The sampler's per-row tensor form follows the same phases.
    eta = 0.02
    times = [1.0, 0.56, 0.55, 0.3, 0.051, 0.05, 0.03]
    sigma, unmask = S._remdm_row_rates("loop", torch.tensor(times, dtype=torch.float64), torch.tensor(dt), eta,
                                       t_on, t_off, alpha_on)
    for t, got_sigma, got_unmask in zip(times, sigma.tolist(), unmask.tolist()):
        phase, a_t, a_s = remdm_loop_schedule(t, dt, t_on, t_off, alpha_on)
        want_sigma = eta if phase == 2 else 0.0
        assert got_sigma == pytest.approx(want_sigma), t
        assert got_unmask == pytest.approx(remdm_unmask_prob(a_s, a_t, want_sigma)), t


def test_eta_cap_interpolates_between_and_clamps_outside_the_eq24_table():
    # The table points themselves: test_sampling_protocol.py::test_eta_cap_is_eq24.
    assert S.eta_cap_default(64) == 0.010 and S.eta_cap_default(4096) == 0.004
    assert 0.007 > S.eta_cap_default(700) > 0.004


def _one_step_rates(mode, eta, t, s, **kw):
    """Run one ReMDM step from a half-visible state; return (remask rate, unmask rate)."""
    batch, length = 4000, 8
    emb = embeddings(5, "random")
    den = S.as_denoiser(lambda z: torch.zeros(z.shape[0], z.shape[1], 5), emb, visible_snr=30.0)
    tokens = torch.ones(batch, length, dtype=torch.long)
    gen_mask = torch.ones(batch, length, dtype=torch.bool)
    masked = torch.zeros(batch, length, dtype=torch.bool)
    masked[:, ::2] = True
    out = S.remdm(den, tokens, gen_mask, steps=1, mode=mode, eta=eta, t_start=t, eps=s, masked=masked,
                  final_greedy=False, generator=torch.Generator().manual_seed(0), **kw)
    now = out.extra["masked"]
    return now[:, 1::2].float().mean().item(), (~now[:, ::2]).float().mean().item()


@pytest.mark.parametrize(
    "mode,eta,kw,remask,unmask",
    [
        # t = 0.5, s = 0.4: α_t = 0.5, α_s = 0.6, (1 − α_s)/α_t = 0.8
        ("mdlm", 0.0, {}, 0.0, 0.2),
        ("cap", 0.1, {}, 0.1, (0.6 - 0.9 * 0.5) / 0.5),
        ("rescale", 0.25, {}, 0.25 * 0.8, (0.6 - (1 - 0.2) * 0.5) / 0.5),
        # conf: equal confidences → η^ℓ = 1/4 over the 4 visible tokens; masked unmask at MDLM rate
        ("conf", None, {}, 0.8 / 4, 0.2),
        # loop phase 2 (t_off < 0.5 ≤ t_on): remask η, unmask η·α_on/(1 − α_on)
        ("loop", 0.05, dict(t_on=0.55, t_off=0.05, alpha_on=0.8), 0.05, 0.05 * 0.8 / 0.2),
    ],
)
def test_remdm_step_frequencies_match_the_formulas(mode, eta, kw, remask, unmask):
    got_remask, got_unmask = _one_step_rates(mode, eta, 0.5, 0.4, **kw)
    n = 4000 * 4
    for got, want in ((got_remask, remask), (got_unmask, unmask)):
        tol = 4.5 * math.sqrt(max(want * (1 - want), 1e-9) / n) + 1e-9
        assert abs(got - want) <= tol, (mode, got, want)


def test_remdm_conf_prefers_low_confidence_tokens():
    weights = S.conf_weights(torch.tensor([-0.9, -0.1, -math.inf, -0.5]), S._GenIndex(torch.ones(1, 4, dtype=torch.bool)))
    assert weights[2] == 0
    assert weights[1] > weights[3] > weights[0]
    assert weights.sum().item() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- categorical draws


def test_top_p_follows_the_reference_and_keeps_the_top_token():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    torch.testing.assert_close(S.top_p_filter(probs, 0.8), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    torch.testing.assert_close(S.top_p_filter(probs, 0.79), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(S.top_p_filter(probs, 0.1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert S.top_p_filter(probs, 1.0) is probs


def test_inverse_cdf_draws_are_exact_and_skip_zero_probability_tokens():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.2, 0.0])
    n = 20000
    u = torch.rand(n, generator=torch.Generator().manual_seed(0))
    u[:3] = torch.tensor([0.0, 1.0 - 1e-12, 0.5])
    draws = S.sample_from_probs(probs.expand(n, -1), u)
    counts = torch.bincount(draws, minlength=6)
    assert counts[[0, 2, 5]].sum() == 0
    assert chisquare(counts[[1, 3, 4]].numpy(), (probs[[1, 3, 4]] * n).numpy()).pvalue > ALPHA


def test_row_rng_is_batch_composition_invariant():
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    full = S.RowRNG(gens([10, 11, 12]), 3, "cpu").ragged("normal", [4, 2, 3], (5,))
    alone = S.RowRNG(gens([11]), 1, "cpu").ragged("normal", [2], (5,))
    torch.testing.assert_close(full[4:6], alone)
    rows = S.RowRNG(gens([10, 12]), 2, "cpu").rows("uniform", (3, 2))
    torch.testing.assert_close(rows[1], S.RowRNG(gens([12]), 1, "cpu").rows("uniform", (3, 2))[0])


class DrawRecorder:
    """Wraps RowRNG._draw to record (kind, shape, dtype) of every random draw."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = S.RowRNG._draw

        def draw(rng, kind, shape, gen, dtype):
            out = original(rng, kind, shape, gen, dtype)
            self.calls.append((kind, tuple(out.shape), out.dtype))
            return out

        monkeypatch.setattr(S.RowRNG, "_draw", draw)

    def uniforms(self):
        return [c for c in self.calls if c[0] == "uniform"]


CATEGORICAL_CALLS = {
    "mdlm": lambda d, t, m, g: S.mdlm(d, t, m, steps=4, generator=g),
    "remdm_conf": lambda d, t, m, g: S.remdm(d, t, m, steps=4, mode="conf", generator=g),
    "roar": lambda d, t, m, g: S.roar(d, t, m, tokens_per_step=2, generator=g),
    "low_confidence_random": lambda d, t, m, g: S.low_confidence(d, t, m, steps=2, temperature=1.0,
                                                                 remasking="random", generator=g),
    "hybrid_remdm": lambda d, t, m, g: S.hybrid(d, t, m, sde_steps=2, finish_steps=3, switch_snr=2.0, finish="remdm",
                                                generator=g),
}


@pytest.mark.parametrize("name", sorted(CATEGORICAL_CALLS))
def test_every_uniform_draw_is_float64(monkeypatch, name):
    recorder = DrawRecorder(monkeypatch)
    tokens, gen_mask = blank(2, 5)
    CATEGORICAL_CALLS[name](oracle(5), tokens, gen_mask, [torch.Generator().manual_seed(s) for s in (0, 1)])
    assert recorder.uniforms() and all(dtype == torch.float64 for _, _, dtype in recorder.uniforms())
    assert all(dtype == torch.float32 for kind, _, dtype in recorder.calls if kind == "normal")


# ----------------------------------------------------------------------------- mask id inside the vocabulary


def _mask_loving_denoiser(mask_id=2, vocab=5):
    """A denoiser whose mask id is a real id (LLaDA-style) and whose logits favour it heavily."""
    emb = embeddings(vocab, "random")
    logits = torch.tensor([0.0, 1.0, 8.0, 0.5, -1.0])

    def features(z):
        return logits.expand(z.shape[0], z.shape[1], vocab)

    return S.Denoiser(features, None, emb, visible_snr=30.0, mask_token_id=mask_id), logits, emb


def test_in_vocabulary_mask_id_is_never_drawn_nor_in_the_posterior_mean():
    den, logits, emb = _mask_loving_denoiser()
    assert den.logits(torch.zeros(1, 5))[0, 2] == -math.inf
    tokens, gen_mask = blank(40, 6)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    outs = {
        "mdlm": S.mdlm(den, tokens, gen_mask, steps=3, generator=gen()),
        "remdm": S.remdm(den, tokens, gen_mask, steps=3, mode="rescale", eta=0.5, generator=gen()),
        "low_confidence_greedy": S.low_confidence(den, tokens, gen_mask, steps=3),
        "low_confidence": S.low_confidence(den, tokens, gen_mask, steps=3, temperature=2.0, generator=gen()),
        "roar": S.roar(den, tokens, gen_mask, tokens_per_step=2, generator=gen()),
        "sde": S.sde(den, tokens, gen_mask, torch.tensor([0.0, 1.0, 2.0]), generator=gen()),
        "hybrid": S.hybrid(den, tokens, gen_mask, sde_steps=2, finish_steps=2, switch_snr=2.0, generator=gen()),
        "correct": S.correct(den, torch.full_like(tokens, 2), gen_mask),
    }
    for name, out in outs.items():
        assert not (out.tokens == 2).any(), name
    keep = torch.tensor([0, 1, 3, 4])
    x_hat = torch.softmax(logits[keep], -1) @ emb[keep]
    out = S.sde(den, tokens[:1, :1], gen_mask[:1, :1], torch.tensor([0.0, 1.0]), noise_scale=0.0)
    torch.testing.assert_close(out.extra["z"][0, 0], x_hat)


def _sampler_runs(den, tokens, gen_mask):
    """Every sampler on `den`, each with its own fresh generator (seed 0)."""
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    path = torch.tensor([0.5, 1.0, 2.0])
    return {
        "mdlm": S.mdlm(den, tokens, gen_mask, steps=3, generator=gen()),
        "remdm": S.remdm(den, tokens, gen_mask, steps=3, mode="rescale", eta=0.5, generator=gen()),
        "low_confidence_greedy": S.low_confidence(den, tokens, gen_mask, steps=3),
        "low_confidence": S.low_confidence(den, tokens, gen_mask, steps=3, temperature=2.0, generator=gen()),
        "roar": S.roar(den, tokens, gen_mask, tokens_per_step=2, generator=gen()),
        "sde": S.sde(den, tokens, gen_mask, path, generator=gen()),
        "sde_heun_y": S.sde(den, tokens, gen_mask, path, integrator="heun", parameterization="y", init="unit",
                            posterior_top_k=3, generator=gen()),
        "hybrid": S.hybrid(den, tokens, gen_mask, sde_steps=2, finish_steps=2, switch_snr=2.0, generator=gen()),
        "correct": S.correct(den, torch.full_like(tokens, 2), gen_mask),
    }


def test_suppressed_ids_act_in_every_sampler_as_a_minus_inf_logit():
    """suppress_token_ids (LLaDA's logits_eos_inf): each sampler gives exactly what it gives with a
    head whose suppressed column is −inf (same draws, same SDE states: the posterior mean leaves
    the id out), and never outputs it, while without suppression it is the favourite."""
    vocab = 5
    emb = embeddings(vocab, "random")
    logits = torch.tensor([0.0, 1.0, 8.0, 0.5, -1.0])
    blocked = logits.clone()
    blocked[2] = -math.inf

    def constant(values):
        return lambda z: values.expand(z.shape[0], z.shape[1], vocab)

    plain = S.Denoiser(constant(logits), None, emb, visible_snr=30.0)  # mask id = V: not a real id
    suppressed = S.Denoiser(constant(logits), None, emb, visible_snr=30.0, suppress_token_ids=[2])
    reference = S.Denoiser(constant(blocked), None, emb, visible_snr=30.0)
    assert suppressed.logits(logits.unsqueeze(0))[0].tolist() == blocked.tolist()
    tokens, gen_mask = blank(20, 6)
    free, outs, refs = (_sampler_runs(d, tokens, gen_mask) for d in (plain, suppressed, reference))
    for name in outs:
        assert (free[name].tokens == 2).any(), name
        assert not (outs[name].tokens == 2).any(), name
        assert torch.equal(outs[name].tokens, refs[name].tokens), name
        if "z" in outs[name].extra:
            assert torch.equal(outs[name].extra["z"], refs[name].extra["z"]), name
    keep = torch.tensor([0, 1, 3, 4])
    x_hat = torch.softmax(logits[keep], -1) @ emb[keep]
    out = S.sde(suppressed, tokens[:1, :1], gen_mask[:1, :1], torch.tensor([0.0, 1.0]), noise_scale=0.0)
    torch.testing.assert_close(out.extra["z"][0, 0], x_hat)


def test_suppressed_ids_are_checked():
    emb = embeddings(5, "random")
    with pytest.raises(ValueError, match=r"suppress_token_ids must be token ids in \[0, vocab_size=5\), got \[5\]"):
        S.Denoiser(lambda z: z, None, emb, 30.0, suppress_token_ids=[1, 5])
    with pytest.raises(ValueError, match="suppress_token_ids must be token ids"):
        S.Denoiser(lambda z: z, None, emb, 30.0, suppress_token_ids=[True])
    with pytest.raises(ValueError, match="suppress_token_ids: suppressing 4 ids .* leaves no token of the 5"):
        S.Denoiser(lambda z: z, None, emb, 30.0, mask_token_id=4, suppress_token_ids=[0, 1, 2, 3])
    assert S.Denoiser(lambda z: z, None, emb, 30.0, suppress_token_ids=3).suppress_token_ids == (3,)


# ----------------------------------------------------------------------------- low_confidence


def test_transfer_schedule_gives_the_remainder_to_the_first_steps():
    quota = S.transfer_schedule(torch.tensor([10, 7, 3, 0]), 4)
    assert quota.tolist() == [[3, 3, 2, 2], [2, 2, 2, 1], [1, 1, 1, 0], [0, 0, 0, 0]]


def _confidence_denoiser(vocab=6, length=12):
    """Position j predicts token (j mod vocab) with a peak that grows with j (deterministic)."""
    emb = embeddings(vocab, "random")

    def logits(z):
        b, l = z.shape[:2]
        out = torch.zeros(b, l, vocab)
        for j in range(l):
            out[:, j, j % vocab] = 0.3 * j + 1.0
        return out

    return S.as_denoiser(logits, emb, visible_snr=30.0)


def test_low_confidence_quota_block_order_prompt_and_no_revision():
    den = _confidence_denoiser()
    prompt_len, gen_len, block, steps = 2, 8, 4, 6
    tokens = torch.full((2, prompt_len + gen_len), 5, dtype=torch.long)
    tokens[:, :prompt_len] = torch.tensor([[4, 3], [1, 2]])
    gen_mask = torch.zeros_like(tokens, dtype=torch.bool)
    gen_mask[:, prompt_len:] = True
    states = []
    out = S.low_confidence(den, tokens, gen_mask, steps=steps, block_length=block,
                           callback=lambda i, draft, masked, final: states.append((draft, masked)))
    assert out.nfe == steps == len(states)
    # 2 blocks × 3 steps; block quota for m = 4 masks over 3 steps: [2, 1, 1].
    expected_new = [2, 1, 1, 2, 1, 1]
    previous_masked = gen_mask.clone()
    previous_draft = tokens
    for step, (draft, masked) in enumerate(states):
        newly = previous_masked & ~masked
        assert newly.sum(dim=1).tolist() == [expected_new[step]] * 2
        block_index = step // 3
        lo, hi = prompt_len + block * block_index, prompt_len + block * (block_index + 1)
        assert not newly[:, :lo].any() and not newly[:, hi:].any()  # only the current block
        if step % 3 == 2:
            assert not masked[:, lo:hi].any()  # the block is complete at its last step
        assert torch.equal(draft[:, :prompt_len], tokens[:, :prompt_len])  # prompt untouched
        committed = ~previous_masked & gen_mask
        assert torch.equal(draft[committed], previous_draft[committed])  # never revised
        previous_masked, previous_draft = masked, draft
    # Temperature 0: within a block the most confident (largest j) positions commit first.
    first = states[0][1]
    assert (~first[:, prompt_len:prompt_len + block]).tolist() == [[False, False, True, True]] * 2
    assert out.tokens[0, prompt_len:].tolist() == [j % 6 for j in range(prompt_len, prompt_len + gen_len)]


def test_low_confidence_cfg_combines_conditional_and_unconditional_logits():
    emb = embeddings(3, "random")

    def logits(z):
        prompt_visible = z[:, 0].abs().sum(-1) > 0  # conditional pass: the prompt is visible
        cond = torch.tensor([0.0, 1.0, 0.5])
        uncond = torch.tensor([0.0, 2.0, 0.0])
        out = torch.where(prompt_visible[:, None], cond, uncond)
        return out[:, None, :].expand(z.shape[0], z.shape[1], 3)

    den = S.as_denoiser(logits, emb, visible_snr=30.0)
    tokens = torch.tensor([[1, 0]])
    gen_mask = torch.tensor([[False, True]])
    assert S.low_confidence(den, tokens, gen_mask, steps=1).tokens[0, 1] == 1
    out = S.low_confidence(den, tokens, gen_mask, steps=1, cfg_scale=2.0)  # u + 3(c − u) = [0, −1, 1.5]
    assert out.tokens[0, 1] == 2 and out.nfe == 2


def test_low_confidence_draws_gumbel_noise_only_for_masked_positions(monkeypatch):
    vocab, gen_len, block = 6, 8, 4
    den = _confidence_denoiser(vocab, gen_len)
    tokens, gen_mask = blank(3, gen_len)
    masked = torch.ones_like(gen_mask)
    masked[1, [0, 5]] = False  # row 1: a partly committed draft (as hybrid's finish gets)
    tokens[1, [0, 5]] = 2
    recorder = DrawRecorder(monkeypatch)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1, 2)]
    out = S.low_confidence(den, tokens, gen_mask, steps=4, block_length=block, temperature=1.0, masked=masked,
                           generator=gens)
    # Blocks of 4 with 2 steps each: masked counts 4, 2 | 4, 2 per full row; row 1: 3, 1 | 3, 1.
    drawn = sum(math.prod(shape) for _, shape, _ in recorder.uniforms())
    assert drawn == (12 + 12 + 8) * vocab
    assert all(dtype == torch.float64 for _, _, dtype in recorder.calls)
    # Batch invariance: row 1 alone, with its own generator, gives the same tokens.
    alone = S.low_confidence(den, tokens[1:2], gen_mask[1:2], steps=4, block_length=block, temperature=1.0,
                             masked=masked[1:2], generator=[torch.Generator().manual_seed(1)])
    assert torch.equal(alone.tokens[0], out.tokens[1])
    assert out.tokens[1, [0, 5]].tolist() == [2, 2]


def test_low_confidence_rejects_bad_block_settings():
    den = _confidence_denoiser()
    tokens, gen_mask = blank(1, 8)
    with pytest.raises(ValueError, match="block_length"):
        S.low_confidence(den, tokens, gen_mask, steps=4, block_length=3)
    with pytest.raises(ValueError, match="steps"):
        S.low_confidence(den, tokens, gen_mask, steps=3, block_length=4)


# ----------------------------------------------------------------------------- roar, correct


def test_roar_commits_each_position_once_in_order():
    den = _confidence_denoiser()
    tokens, gen_mask = blank(3, 7)
    states = []
    out = S.roar(den, tokens, gen_mask, tokens_per_step=3, order="left_to_right",
                 generator=torch.Generator().manual_seed(0),
                 callback=lambda i, draft, masked, final: states.append(masked))
    assert out.nfe == 3 == len(states)
    assert [(~m[0]).sum().item() for m in states] == [3, 6, 7]
    assert (~states[0][:, :3]).all() and states[0][:, 3:].all()
    out = S.roar(den, tokens, gen_mask, tokens_per_step=1, generator=torch.Generator().manual_seed(0))
    ranks = out.extra["rank"].view(3, 7)
    assert all(sorted(r.tolist()) == list(range(7)) for r in ranks)
    assert not torch.equal(ranks[0], ranks[1])  # random orders differ between rows


def test_correct_fixes_a_corrupted_token_and_reports_the_position():
    k = 7
    den = oracle(k, "random")
    clean = torch.stack([(torch.arange(k) + s) % k for s in range(k)])
    corrupted = clean.clone()
    positions = torch.arange(k) % k
    corrupted[torch.arange(k), positions] = (clean[torch.arange(k), positions] + 3) % k
    suspect = torch.ones_like(clean, dtype=torch.bool)
    out = S.correct(den, corrupted, suspect, suspect_snr=5.0, steps=3)
    assert torch.equal(out.tokens, clean)
    expected_changed = torch.zeros_like(suspect)
    expected_changed[torch.arange(k), positions] = True
    assert torch.equal(out.changed, expected_changed)
    untouched = S.correct(den, clean, suspect, suspect_snr=5.0)
    assert torch.equal(untouched.tokens, clean) and not untouched.changed.any()


# ----------------------------------------------------------------------------- hybrid


def _flat_columns_denoiser(vocab=4, flat=(2, 3)):
    """Peaked (p ≈ 1) predictions at every column except `flat` (uniform there)."""
    emb = embeddings(vocab, "random")

    def logits(z):
        out = torch.zeros(z.shape[0], z.shape[1], vocab)
        for j in range(z.shape[1]):
            if j not in flat:
                out[:, j, j % vocab] = 100.0
        return out

    return S.as_denoiser(logits, emb, visible_snr=30.0)


def test_hybrid_keeps_draft_tokens_strictly_above_the_threshold():
    den = _flat_columns_denoiser()
    tokens, gen_mask = blank(2, 4)
    kw = dict(sde_steps=2, finish_steps=4, switch_snr=2.0, generator=torch.Generator().manual_seed(0))
    # p = 1 exactly at the peaked columns: kept for τ < 1, masked at τ = 1 (conf > τ, strict).
    assert S.hybrid(den, tokens, gen_mask, threshold=0.99, **kw).extra["draft_masked"][0].tolist() == [
        False, False, True, True]
    assert S.hybrid(den, tokens, gen_mask, threshold=1.0, **kw).extra["draft_masked"].all()
    # p = 1/4 at the flat columns: masked at τ = 1/4 (not strictly above).
    assert S.hybrid(den, tokens, gen_mask, threshold=0.25, **kw).extra["draft_masked"][0].tolist() == [
        False, False, True, True]


def test_hybrid_remdm_finish_starts_at_each_rows_masked_fraction():
    den = _flat_columns_denoiser()
    tokens, gen_mask = blank(2, 4)
    gen_mask[1, 2] = False  # row 1: column 2 is a prompt token → 1 of its 3 generated positions is flat
    out = S.hybrid(den, tokens, gen_mask, sde_steps=2, finish_steps=1, switch_snr=2.0, finish="remdm",
                   finish_kwargs=dict(mode="rescale", eta=1.0), diagnostics=True,
                   generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    torch.testing.assert_close(out.extra["t_start"], torch.tensor([0.5, 1 / 3], dtype=torch.float64))
    # rescale σ = η·min(1, (1 − α_s)/α_t): starting at t = 1 instead, every visible draft token would
    # be remasked (σ = η = 1); from t = m to s = eps it is eps/(1 − m) ≈ 0.
    assert (out.diagnostics["r_t"][-1] == 0).all()
    assert out.tokens[:, :2].tolist() == [[0, 1], [0, 1]]


def test_hybrid_low_confidence_finish_takes_block_length_and_cfg_from_finish_kwargs():
    den = _confidence_denoiser(vocab=6, length=8)
    tokens, gen_mask = blank(1, 8)
    states = []
    out = S.hybrid(den, tokens, gen_mask, sde_steps=2, finish_steps=2, switch_snr=2.0, threshold=1.0,
                   finish_kwargs=dict(block_length=4, cfg_scale=1.0),
                   callback=lambda i, draft, masked, final: states.append((final, masked)))
    finish = [masked for final, masked in states if final]
    assert len(finish) == 2
    assert not finish[0][0, :4].any() and finish[0][0, 4:].all()  # block 1 first, then block 2
    assert out.nfe == 2 + 1 + 2 * 2  # SDE steps + draft decode + 2 CFG finish steps


# ----------------------------------------------------------------------------- diagnostics


def test_diagnostics_shapes_and_meaning():
    k = 7
    den = oracle(k)
    tokens, gen_mask = blank(50, k)
    out = S.roar(den, tokens, gen_mask, tokens_per_step=1, generator=torch.Generator().manual_seed(0),
                 diagnostics=True)
    d = out.diagnostics
    assert set(d) == {"u_t", "H_t", "k_t", "r_t", "delta_t", "rewrites"}
    assert d["u_t"].shape == (k, 50) and d["rewrites"].shape == (50, k)
    torch.testing.assert_close(d["delta_t"].sum(0), torch.ones(50))  # one new token of 7 per step
    assert (d["r_t"] == 0).all() and (d["rewrites"] == 0).all()
    # The first draw is uniform over K tokens: entropy ln K, uncertainty 1 − 1/K, nucleus ⌈0.9K⌉.
    torch.testing.assert_close(d["H_t"][0], torch.full((50,), math.log(k)))
    torch.testing.assert_close(d["u_t"][0], torch.full((50,), 1 - 1 / k))
    assert (d["k_t"][0] == math.ceil(0.9 * k)).all()
    # Afterwards the shift is pinned: no uncertainty left.
    assert d["H_t"][1:].max() < 1e-6

    states = []
    out = S.remdm(den, tokens, gen_mask, steps=50, mode="rescale", eta=0.5,
                  generator=torch.Generator().manual_seed(0), diagnostics=True,
                  callback=lambda i, draft, masked, final: states.append((draft, masked)))
    d = out.diagnostics
    assert d["r_t"].shape == (50, 50)
    assert torch.nanmean(d["r_t"]) > 0.05
    # Recount from the per-step states: a rewrite is a position drawing a token different from
    # the one it last showed; r_t = remasked / visible before; Δ_t = changed mask state / L.
    last = torch.full((50, k), -1)
    rewrites = torch.zeros(50, k, dtype=torch.long)
    previous_masked = torch.ones(50, k, dtype=torch.bool)
    for step, (draft, masked) in enumerate(states):
        drawn = previous_masked & ~masked
        rewrites += (drawn & (last >= 0) & (draft != last)).long()
        last = torch.where(drawn, draft, last)
        visible_before = (~previous_masked).sum(1).float()
        remasked = (~previous_masked & masked).sum(1).float()
        expected_r = torch.where(visible_before > 0, remasked / visible_before.clamp_min(1), torch.nan)
        torch.testing.assert_close(d["r_t"][step], expected_r, equal_nan=True)
        torch.testing.assert_close(d["delta_t"][step], (previous_masked != masked).sum(1).float() / k)
        previous_masked = masked
    assert torch.equal(d["rewrites"], rewrites) and rewrites.sum() > 0

    out = S.sde(den, tokens, gen_mask, snr_schedule("geometric", 20, 0.01, 50.0),
                generator=torch.Generator().manual_seed(0), diagnostics=True)
    d = out.diagnostics
    assert d["H_t"].shape == (20, 50)  # one entry per integration step, nothing prepended
    assert d["H_t"][0].mean() > d["H_t"][-1].mean()  # localisation lowers the entropy
    # rewrites = argmax changes after the first step, the same events Δ_t counts per step.
    torch.testing.assert_close(d["rewrites"].sum(1).float(), d["delta_t"][1:].sum(0) * k)
    assert d["rewrites"].sum() > 0


# ----------------------------------------------------------------------------- argument validation


BAD_SAMPLER_CALLS = [
    (lambda d, t, m: S.mdlm(d, t, m, steps=0), "steps"),
    (lambda d, t, m: S.mdlm(d, t, m, steps=4, top_p=0.0), "top_p"),
    (lambda d, t, m: S.remdm(d, t, m, steps=4, top_p=1.5), "top_p"),
    (lambda d, t, m: S.remdm(d, t, m, steps=4, top_k=0), "top_k"),
    (lambda d, t, m: S.remdm(d, t, m, steps=4, eta=-0.1), "eta"),
    (lambda d, t, m: S.remdm(d, t, m, steps=4, temperature=0.0), "temperature"),
    (lambda d, t, m: S.low_confidence(d, t, m, steps=2, temperature=-1.0), "temperature"),
    (lambda d, t, m: S.low_confidence(d, t, m, steps=2, top_k=0), "top_k"),
    (lambda d, t, m: S.low_confidence(d, t, m, steps=2, cfg_scale=-1.0), "cfg_scale"),
    (lambda d, t, m: S.roar(d, t, m, top_p=2.0), "top_p"),
    (lambda d, t, m: S.roar(d, t, m, tokens_per_step=0), "tokens_per_step"),
    (lambda d, t, m: S.sde(d, t, m, torch.tensor([0.0, 1.0]), posterior_top_k=0), "posterior_top_k"),
    (lambda d, t, m: S.sde(d, t, m, torch.tensor([0.0, 1.0]), noise_scale=-1.0), "noise_scale"),
    (lambda d, t, m: S.hybrid(d, t, m, sde_steps=0, finish_steps=2, switch_snr=2.0), "sde_steps"),
    (lambda d, t, m: S.hybrid(d, t, m, sde_steps=2, finish_steps=2, switch_snr=0.001), "switch_snr"),
    (lambda d, t, m: S.hybrid(d, t, m, sde_steps=2, finish_steps=2, switch_snr=2.0,
                              finish_kwargs=dict(steps=3)), "finish_kwargs"),
    (lambda d, t, m: S.correct(d, t, m, threshold=2.0), "threshold"),
]


@pytest.mark.parametrize("call,name", BAD_SAMPLER_CALLS)
def test_sampler_functions_validate_their_arguments(call, name):
    tokens, gen_mask = blank(1, 4)
    with pytest.raises(ValueError, match=name):
        call(oracle(4), tokens, gen_mask)
