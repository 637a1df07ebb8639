"""Corruption, per-token SNR distributions and SNR schedules of DSL (paper §3, §4.1, Alg. 1).

Every token i carries its own signal-to-noise ratio γ_i and is observed as

    z_i = γ_i · x_i + √γ_i · ε_i,   ε_i ~ N(0, I_d),   ‖x_i‖ = 1.             (paper Eq. 1)

γ = 0 gives z = 0 (a masked token); large γ pins z to γ·x (a visible token). Because ‖x‖ = 1,
log p(z | x) = z·x + const(z, γ), so the Bayes denoiser depends on z alone (App. A.1).
"""

import math
from typing import Optional

import torch

# ----------------------------------------------------------------------------- corruption


def corrupt(
    x: torch.Tensor,
    snr: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    noise: bool = True,
) -> torch.Tensor:
    """z = γ·x + √γ·ε per token (paper Eq. 1), in fp32.

    Args:
        x: clean unit embeddings, shape (..., d).
        snr: per-token SNR γ ≥ 0, shape broadcastable to x.shape[:-1] (a scalar, (B,) is not
            accepted: pass (B, 1) for one SNR per sequence).
        generator: source of ε, for reproducible corruption.
        noise: if False, return the noiseless mean γ·x (used for visible prompt tokens).
    Returns:
        z of shape x.shape, dtype float32.
    """
    x = x.float()
    snr = torch.as_tensor(snr, dtype=torch.float32, device=x.device)
    if (snr < 0).any():
        raise ValueError("snr must be >= 0 everywhere")
    snr = snr.expand(x.shape[:-1]).unsqueeze(-1)  # (..., 1)
    z = snr * x
    if noise:
        eps = randn(x.shape, generator, x.device)
        z = z + snr.sqrt() * eps
    return z


def randn(shape, generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """N(0, 1) draws, made on the generator's device (so one CPU generator drives CUDA runs
    reproducibly) and moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(_as_shape(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def rand(shape, generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """U(0, 1) draws, made on the generator's device and moved to `device` (see `randn`)."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(_as_shape(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def _as_shape(shape) -> tuple:
    return (shape,) if isinstance(shape, int) else tuple(shape)


# ----------------------------------------------------------------------------- Bayes oracle


def token_posterior(z: torch.Tensor, embeddings: torch.Tensor, prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Exact posterior p(x = e_k | z) ∝ prior_k · exp(z·e_k) over a finite set of unit vectors.

    Args:
        z: noisy observations, shape (..., d).
        embeddings: the K unit vectors e_k, shape (K, d).
        prior: prior probabilities, shape (K,) (uniform when None).
    Returns:
        probabilities of shape (..., K).
    """
    logits = z @ embeddings.to(z.dtype).T
    if prior is not None:
        logits = logits + prior.to(z.dtype).log()
    return torch.softmax(logits, dim=-1)


def optimal_denoiser(z: torch.Tensor, embeddings: torch.Tensor, prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bayes-optimal denoiser x̂(z) = E_P[x e^{x·z}] / E_P[e^{x·z}] (paper §3, App. A.1).

    It does not depend on γ: one function serves every SNR. Shapes as in `token_posterior`;
    returns (..., d).
    """
    return token_posterior(z, embeddings, prior) @ embeddings.to(z.dtype)


# ----------------------------------------------------------------------------- training SNRs


class SNRSampler:
    """Per-token training SNRs: a mixture of ROAR endpoints and LogNormal (paper Alg. 1).

    With `granularity="token"` every token independently is a ROAR token with probability
    `roar_prob`; a ROAR token is hidden or visible with probability ½ each. With
    `granularity="sequence"` (the authors' code) whole rows are ROAR and reveal k ~ U{0, …, L−1}
    random positions; every other row gets one LogNormal γ (`"sequence_roar"`, DSL-LLaDA's
    `sample_mixed_snr`: one LogNormal γ per token of those rows). Which rows are ROAR follows `row_rule`:
    "bernoulli" — each row independently with probability `roar_prob`; "leading" — exactly the first
    ⌊B·roar_prob⌋ rows of the batch (the authors' `mixed` path: ⌊B/4⌋ rows,
    reference/dsl_official.md §5). The row rule needs sequence granularity.
    """

    ROW_RULES = ("bernoulli", "leading")

    def __init__(
        self,
        roar_prob: float = 0.1,
        roar_type: str = "smoothed",
        granularity: str = "token",
        snr_min: float = 1.0,
        snr_max: float = 50.0,
        roar_c: float = 0.8,
        lognormal_mu: float = 1.65,
        lognormal_sigma: float = 0.9,
        clip: bool = False,
        row_rule: str = "bernoulli",
        lognormal_max: Optional[float] = None,
    ):
        if roar_type not in ("smoothed", "atomic"):
            raise ValueError(f"roar_type must be 'smoothed' or 'atomic', got {roar_type!r}")
        if granularity not in ("token", "sequence", "sequence_roar"):
            raise ValueError(f"granularity must be 'token', 'sequence' or 'sequence_roar', got {granularity!r}")
        if row_rule not in self.ROW_RULES:
            raise ValueError(f"row_rule must be one of {self.ROW_RULES}, got {row_rule!r}")
        if row_rule != "bernoulli" and granularity == "token":
            raise ValueError(f"row_rule={row_rule!r} needs granularity='sequence' (it picks whole ROAR rows)")
        if not 0.0 <= roar_prob <= 1.0:
            raise ValueError(f"roar_prob must be in [0, 1], got {roar_prob}")
        if not 0.0 <= snr_min < snr_max:
            raise ValueError(f"need 0 <= snr_min < snr_max, got snr_min={snr_min}, snr_max={snr_max}")
        if lognormal_sigma <= 0:
            raise ValueError(f"lognormal_sigma must be > 0, got {lognormal_sigma}")
        self.roar_prob, self.roar_type, self.granularity = roar_prob, roar_type, granularity
        self.row_rule = row_rule
        self.snr_min, self.snr_max, self.roar_c = snr_min, snr_max, roar_c
        self.mu, self.sigma, self.clip = lognormal_mu, lognormal_sigma, clip
        self.lognormal_max = lognormal_max

    @classmethod
    def from_config(cls, config) -> "SNRSampler":
        """The sampler a `DSLConfig` describes."""
        return cls(
            roar_prob=config.roar_prob, roar_type=config.roar_type, granularity=config.snr_granularity,
            snr_min=config.snr_min, snr_max=config.snr_max, roar_c=config.roar_c,
            lognormal_mu=config.lognormal_mu, lognormal_sigma=config.lognormal_sigma, clip=config.snr_clip,
            row_rule=config.roar_row_rule, lognormal_max=getattr(config, "lognormal_max", None),
        )

    def lognormal(self, shape, generator=None, device=None) -> torch.Tensor:
        """ln γ ~ N(μ, σ²), optionally clipped to [snr_min, snr_max], then clamped to ≤ lognormal_max."""
        normal = randn(shape, generator, device)
        snr = torch.exp(self.mu + self.sigma * normal)
        snr = snr.clamp(self.snr_min, self.snr_max) if self.clip else snr
        return snr if self.lognormal_max is None else snr.clamp(max=self.lognormal_max)

    def roar_endpoints(self, visible: torch.Tensor, generator=None) -> torch.Tensor:
        """ROAR SNRs: U(0, γ_min) / U(cγ_max, γ_max) when smoothed, 0 / γ_max when atomic."""
        if self.roar_type == "atomic":
            return visible.float() * self.snr_max
        u = rand(visible.shape, generator, visible.device)
        hidden_snr = u * self.snr_min
        visible_snr = self.roar_c * self.snr_max + u * (1.0 - self.roar_c) * self.snr_max
        return torch.where(visible, visible_snr, hidden_snr)

    def roar_rows(self, batch_size: int, generator=None, device=None) -> torch.Tensor:
        """(B, 1) bool: the ROAR rows of a batch under `row_rule`."""
        if self.row_rule == "leading":
            count = math.floor(batch_size * self.roar_prob)  # the authors' B // 4 for roar_prob = 1/4
            return (torch.arange(batch_size, device=device) < count)[:, None]
        return rand((batch_size, 1), generator, device) < self.roar_prob

    def sample(self, batch_size: int, seq_len: int, generator=None, device=None, return_roar_mask=False):
        """Draw SNRs of shape (batch_size, seq_len), fp32.

        With `return_roar_mask=True` also returns the bool (B, L) mask of ROAR-drawn positions.
        """
        shape = (batch_size, seq_len)
        if self.granularity == "token":
            is_roar = rand(shape, generator, device) < self.roar_prob
            visible = rand(shape, generator, device) < 0.5
            snr = torch.where(is_roar, self.roar_endpoints(visible, generator), self.lognormal(shape, generator, device))
        else:
            is_roar = self.roar_rows(batch_size, generator, device).expand(shape)
            # k ~ U{0..L-1} revealed positions per sequence, at uniformly random places.
            k = (rand((batch_size, 1), generator, device) * seq_len).floor()
            rank = rand(shape, generator, device).argsort(dim=1).argsort(dim=1)
            visible = rank < k
            per_row = self.granularity == "sequence"  # "sequence_roar": per-token LogNormal (DSL-LLaDA)
            lognormal = self.lognormal((batch_size, 1) if per_row else shape, generator, device).expand(shape)
            snr = torch.where(is_roar, self.roar_endpoints(visible, generator), lognormal)
        return (snr, is_roar) if return_roar_mask else snr


# ----------------------------------------------------------------------------- sampling paths

SNR_SCHEDULES = ("geometric", "linear", "sensitive")


def snr_schedule(kind: str, steps: int, snr_min: float, snr_max: float) -> torch.Tensor:
    """Increasing SNR grid γ_0 < … < γ_S (float64) for SDE sampling, S = `steps` intervals.

    "geometric": S + 1 log-linear points from snr_min to snr_max. "linear": evenly spaced.
    "sensitive" (DSL-LLaDA's summarization schedule, reference llada_dsl.md §5.5): three
    log-linear pieces snr_min → 7 (n1 = max(1, ⌊0.05S⌋) intervals), 7 → 74 (n2 = max(1, ⌊0.9S⌋))
    and 74 → snr_max (n3 = S − n1 − n2), which spends the steps where the converter's output
    changes most. When n3 = 0 (S ≤ 10) the grid ends at 74, as in the reference code. It needs
    S ≥ 2 and snr_min < 7 < 74 < snr_max; anything else raises instead of silently falling back
    to another grid.
    """
    if kind not in SNR_SCHEDULES:
        raise ValueError(f"snr_schedule must be one of {SNR_SCHEDULES}, got {kind!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0 < snr_min < snr_max:
        raise ValueError(f"need 0 < snr_min < snr_max, got snr_min={snr_min}, snr_max={snr_max}")
    if kind == "linear":
        return torch.linspace(snr_min, snr_max, steps + 1, dtype=torch.float64)
    if kind == "geometric":
        return _loglinear(snr_min, snr_max, steps)
    return _sensitive_schedule(steps, snr_min, snr_max)


SENSITIVE_KNOTS = (7.0, 74.0)  # DSL-LLaDA's 'sensitive' schedule knots (llada_dsl.md §5.5)


def _loglinear(start: float, end: float, intervals: int) -> torch.Tensor:
    return torch.logspace(math.log10(start), math.log10(end), intervals + 1, dtype=torch.float64)


def _sensitive_schedule(steps: int, snr_min: float, snr_max: float) -> torch.Tensor:
    low, high = SENSITIVE_KNOTS
    if not snr_min < low:
        raise ValueError(f"snr_schedule='sensitive' needs snr_min < {low}, got snr_min={snr_min}")
    if not snr_max > high:
        raise ValueError(
            f"snr_schedule='sensitive' needs snr_max > {high} (its pieces are snr_min→{low}→{high}→snr_max), "
            f"got snr_max={snr_max}; use snr_schedule='geometric' or raise snr_max"
        )
    if steps < 2:
        raise ValueError(f"snr_schedule='sensitive' needs steps >= 2 (n1 = n2 = 1), got steps={steps}")
    n1 = max(1, int(0.05 * steps))
    n2 = max(1, int(0.9 * steps))
    n3 = steps - n1 - n2
    pieces = [_loglinear(snr_min, low, n1), _loglinear(low, high, n2)[1:]]
    if n3 > 0:
        pieces.append(_loglinear(high, snr_max, n3)[1:])
    return torch.cat(pieces)


# ----------------------------------------------------------------------------- likelihood (paper Eq. 3–4, App. A)
#
# The path-integral bound. Stochastic localization observes every token i through
# z_i = γ_i·x_i + W_i(γ_i) (a Brownian motion in γ_i, paper Eq. 1). Let all the SNRs follow a path
# γ(t), t ∈ [0, T], from γ = 0 to a top value. Along it the Bayes posterior P(x | z_t) is a function
# of z_t alone (log p(z | x) = Σ_i z_i·x_i + const because ‖x_i‖ = 1, App. A.1), and for a fixed
# sequence x, with Girsanov's theorem and dz_i = x_i dγ_i + dW_i under the true x,
#
#     E[log P(x | z_T)] − log P(x) = ½ ∫₀^T Σ_i γ̇_i(t) E‖x_i − x̂_i(z_t)‖² dt,            (Eq. 3)
#
# where x̂_i(z) = E[x_i | z] (the posterior mean given *all* of z). Hence, for every path and every
# top SNR,
#
#     −log P(x) = ½ ∫₀^T Σ_i γ̇_i E‖x_i − x̂_i(z_t)‖² dt − E log P(x | z_T)                 (Eq. 4)
#
# with equality for the Bayes denoiser and the Bayes decoder P(x | z_T); as T grows P(x | z_T) → 1 and
# the second term vanishes. For a model's denoiser x̂_θ and a model decoder P_θ(x | z_T) (the product
# of the per-token p_θ(x_i | z_T)) the right-hand side is the negative ELBO of the generative process
# "integrate dz = x̂_θ dγ + dW from z = 0, then decode with P_θ" — an upper bound on that process's
# −log P_θ(x) (the Girsanov KL between the two path measures is the first term).
#
# Paths used here are *stages*: the tokens of stage s move together from γ = 0 to γ_top while the
# earlier stages sit at γ_top and the later ones at 0. One stage = all tokens together (the paper's
# main bound and the authors' `nll`); one token per stage in sequence order = App. A.1's
# autoregressive contour (as γ_top → ∞ stage k contributes −log P(x_k | x_<k)); random orders and
# blocks are other partitions. Each stage's integral ∫₀^γ_top f(γ) dγ is one quadrature; every node
# draws fresh noise, so each Monte-Carlo repeat gives an independent unbiased estimate of the
# quadrature sum and the spread of the repeats is the Monte-Carlo error. No minimum over the grid is
# taken (the authors' per-sequence argmin over noisy estimates biases low, dsl_official.md §8.1).

NLL_PATHS = ("joint", "left_to_right", "random_order")
QUADRATURE_RULES = ("gauss_legendre", "trapezoid")
QUADRATURE_TRANSFORMS = ("log1p", "linear")


def gauss_legendre(num_nodes: int) -> tuple:
    """Gauss–Legendre nodes and weights on [−1, 1] (float64), by Golub–Welsch: the nodes are the
    eigenvalues of the Jacobi matrix of the Legendre recurrence, the weights 2·(first eigenvector
    component)². Exact for polynomials of degree ≤ 2n − 1."""
    if num_nodes == 1:
        return torch.zeros(1, dtype=torch.float64), torch.full((1,), 2.0, dtype=torch.float64)
    k = torch.arange(1, num_nodes, dtype=torch.float64)
    off = k / torch.sqrt(4.0 * k * k - 1.0)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    return nodes, 2.0 * vectors[0] ** 2


def quadrature_rule(snr_top: float, num_nodes: int, rule: str = "gauss_legendre", transform: str = "log1p",
                    snr_scale: float = 1.0) -> tuple:
    """Nodes γ_j and weights w_j (float64) with Σ_j w_j f(γ_j) ≈ ∫₀^{snr_top} f(γ) dγ.

    `transform="log1p"` integrates in u = ln(1 + γ/snr_scale), γ = snr_scale·(eᵘ − 1),
    dγ = (snr_scale + γ) du: linear near γ = 0 (where the MMSE of a token on the sphere is analytic
    and changes on the scale γ ~ 1 = ‖x‖²) and logarithmic above, where it decays roughly like
    e^{−cγ} and the useful range spans decades (the authors integrate up to 91 for GPT-2); the
    integrand (snr_scale + γ)·mmse(γ) is smooth in u and needs no cut-off at γ = 0, so Gauss–Legendre
    (`rule="gauss_legendre"`, exponentially convergent for smooth integrands) applies. `"linear"`
    integrates in γ itself; `rule="trapezoid"` with `transform="linear"` is the authors' grid
    (`linspace(0, γ_top, K)`, dsl_official.md §8.1), kept for comparison.
    """
    if rule not in QUADRATURE_RULES:
        raise ValueError(f"quadrature must be one of {QUADRATURE_RULES}, got {rule!r}")
    if transform not in QUADRATURE_TRANSFORMS:
        raise ValueError(f"transform must be one of {QUADRATURE_TRANSFORMS}, got {transform!r}")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < (2 if rule == "trapezoid" else 1):
        raise ValueError(f"num_nodes must be an integer >= {2 if rule == 'trapezoid' else 1} for {rule}, got {num_nodes!r}")
    if not (math.isfinite(snr_top) and snr_top > 0):
        raise ValueError(f"snr_top must be finite and > 0, got {snr_top}")
    if not snr_scale > 0:
        raise ValueError(f"snr_scale must be > 0, got {snr_scale}")
    upper = math.log1p(snr_top / snr_scale) if transform == "log1p" else float(snr_top)
    if rule == "gauss_legendre":
        unit, unit_weights = gauss_legendre(num_nodes)
        u, w = 0.5 * upper * (unit + 1.0), 0.5 * upper * unit_weights
    else:
        u = torch.linspace(0.0, upper, num_nodes, dtype=torch.float64)
        w = torch.full((num_nodes,), upper / (num_nodes - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 * upper / (num_nodes - 1)
    if transform == "linear":
        return u, w
    snr = snr_scale * torch.expm1(u)
    return snr, w * (snr_scale + snr)


def path_stages(path: str, valid: torch.Tensor, block_size: int = 1, generator: Optional[torch.Generator] = None):
    """(B, L) long: the stage at which each token moves from γ = 0 to γ_top (−1 at invalid positions).

    "joint": every token at stage 0. "left_to_right": the k-th valid token of a row at stage
    k // block_size (block_size 1 = App. A.1's autoregressive contour). "random_order": the same
    over a uniformly random order of each row's valid tokens (drawn from `generator`).
    """
    if path not in NLL_PATHS:
        raise ValueError(f"path must be one of {NLL_PATHS}, got {path!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    valid = valid.bool()
    if path == "joint":
        rank = torch.zeros(valid.shape, dtype=torch.long, device=valid.device)
    elif path == "left_to_right":
        rank = valid.long().cumsum(dim=1) - 1
    else:
        keys = rand(valid.shape, generator, valid.device).masked_fill(~valid, 2.0)  # invalid last
        rank = keys.argsort(dim=1).argsort(dim=1)
    return torch.where(valid, rank // block_size, torch.full_like(rank, -1))


def path_integral_nll(
    x: torch.Tensor,
    valid: torch.Tensor,
    denoiser,
    log_likelihood,
    snr_top: float,
    path: str = "joint",
    num_nodes: int = 32,
    quadrature: str = "gauss_legendre",
    transform: str = "log1p",
    snr_scale: float = 1.0,
    repeats: int = 1,
    block_size: int = 1,
    generator: Optional[torch.Generator] = None,
    progress=None,
) -> dict:
    """Monte-Carlo estimate of the DSL bound (Eq. 4) per sequence, in nats.

    Args:
        x: clean unit embeddings (B, L, d).
        valid: (B, L) bool, the tokens scored (padding: False; kept at γ = 0 throughout).
        denoiser: z (B, L, d) fp32 → x̂(z) (B, L, d), the posterior mean given all of z.
        log_likelihood: z (B, L, d) → (B,) log P(x | z) of the clean sequence (a model: Σ_i valid
            log p_θ(x_i | z); the toy oracle: its exact joint posterior).
        snr_top: γ_top, where the integral stops and the decoder term is taken.
        path, block_size: the SNR path (`path_stages`).
        num_nodes, quadrature, transform, snr_scale: the quadrature of each stage (`quadrature_rule`).
        repeats: independent Monte-Carlo repeats (fresh noise at every node).
        generator: the source of every random draw (path order, noise), for reproducible runs.
        progress: optional callable taking an int, called after each denoiser evaluation.
    Returns:
        {"diffusion": (R, B), "reconstruction": (R, B), "nll": (R, B)} float64 tensors, nll =
        diffusion + reconstruction (½∫… and −log P(x | z_top)); row r is repeat r.
    """
    _check_repeats(repeats)
    x, valid = x.float(), valid.bool()
    snrs, weights = quadrature_rule(snr_top, num_nodes, quadrature, transform, snr_scale)
    diffusion = torch.zeros(repeats, x.shape[0], dtype=torch.float64, device=x.device)
    reconstruction = torch.zeros_like(diffusion)
    for r in range(repeats):
        stages = path_stages(path, valid, block_size, generator)
        for stage in range(int(stages.max()) + 1):
            moving, done = stages == stage, (stages >= 0) & (stages < stage)
            for snr, weight in zip(snrs.tolist(), weights.tolist()):
                gamma = torch.where(moving, snr, torch.where(done, snr_top, 0.0))
                error = (x - denoiser(corrupt(x, gamma, generator)).float()).pow(2).sum(-1)  # (B, L)
                diffusion[r] += 0.5 * weight * (error * moving).sum(-1).double()
                if progress is not None:
                    progress(1)
        z_top = corrupt(x, torch.where(valid, snr_top, 0.0), generator)
        reconstruction[r] = -log_likelihood(z_top).double()
        if progress is not None:
            progress(1)
    return {"diffusion": diffusion, "reconstruction": reconstruction, "nll": diffusion + reconstruction}


# The discrete endpoints. With γ ∈ {0, γ_vis} only, a token is hidden or visible, and the bound becomes
# the any-order autoregressive (ROAR) likelihood: for a uniformly random order σ,
#     −log P_ROAR(x) = E_σ Σ_k −log p(x_σk | x_σ<k) = L · E_{k~U{0..L−1}} E_{|S|=k} mean_{i∉S} −log p(x_i | x_S),
# an upper bound on the NLL of the ROAR sampler (Jensen over σ), unbiasedly estimated with one random
# (k, S) per sequence (the authors' `nll_roar`, dsl_official.md §8.2, without their noise on visible
# tokens: visible tokens are fed as the samplers feed them). MDLM's continuous-time ELBO with any
# schedule is the same quantity: with each token masked with probability t and weight 1/t,
# ∫₀¹ t^{m−1}(1−t)^{L−m} dt·C(L, m) = 1/m for m masked tokens (Sahoo et al. 2024; Ou et al. 2024).


def mdlm_masking(batch_size: int, seq_len: int, generator: Optional[torch.Generator] = None, device=None,
                 eps: float = 1e-3, stratified: bool = True):
    """MDLM's corruption: t per row and the mask pattern (reference mdlm_remdm.md §3).

    t = (1 − eps)·u + eps, u stratified ("antithetic", u_i = (r_i + i)/B, r_i ~ U(0, 1): MDLM's
    training and validation batches) or, with `stratified=False`, independent per row; each
    position is masked with probability (1 − eps)·t (the log-linear schedule). Returns
    (t (B,) fp32, masked (B, L) bool).
    """
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    r = rand(batch_size, generator, device)
    u = (r + torch.arange(batch_size, device=device, dtype=torch.float32)) / batch_size if stratified else r
    t = (1.0 - eps) * u + eps
    draw = rand((batch_size, seq_len), generator, device)
    return t, draw < ((1.0 - eps) * t)[:, None]


def _check_repeats(repeats) -> None:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")


def roar_nll(token_nll, valid: torch.Tensor, repeats: int = 1, generator: Optional[torch.Generator] = None):
    """ROAR (any-order autoregressive) NLL per sequence in nats, (R, B) float64.

    Per repeat and row with n valid tokens: k ~ U{0, …, n − 1}, a uniformly random set S of k valid
    tokens is visible, the rest hidden; the estimate is n · mean_{i valid, ∉ S} token_nll_i.
    `token_nll(visible)` maps a (B, L) bool of visible tokens to (B, L) −log p(x_i | visible x).
    """
    _check_repeats(repeats)
    valid = valid.bool()
    n = valid.sum(-1)
    out = torch.zeros(repeats, valid.shape[0], dtype=torch.float64, device=valid.device)
    for r in range(repeats):
        k = (rand(valid.shape[0], generator, valid.device) * n).floor().long()  # U{0..n−1}
        keys = rand(valid.shape, generator, valid.device).masked_fill(~valid, 2.0)
        rank = keys.argsort(dim=1).argsort(dim=1)
        visible = valid & (rank < k[:, None])
        hidden = valid & ~visible
        nll = (token_nll(visible).double() * hidden).sum(-1)
        out[r] = torch.where(n > 0, nll * n / hidden.sum(-1).clamp(min=1), 0.0)
    return out


def mdlm_elbo(token_nll, valid: torch.Tensor, repeats: int = 1, generator: Optional[torch.Generator] = None,
              eps: float = 1e-3):
    """MDLM's negative ELBO per sequence in nats, (R, B) float64: Σ_{masked valid i} token_nll_i / t
    with t and the mask from `mdlm_masking` (independent t per row and repeat, so that the
    repeats and rows are independent estimates; MDLM validates with eps = 1e-3). It estimates
    ∫ over t ∈ [eps, 1] of the log-linear schedule, which differs from the continuous-time ELBO by
    O(eps) relative. `token_nll` as in `roar_nll` (its argument: the visible tokens)."""
    _check_repeats(repeats)
    valid = valid.bool()
    out = torch.zeros(repeats, valid.shape[0], dtype=torch.float64, device=valid.device)
    for r in range(repeats):
        t, masked = mdlm_masking(valid.shape[0], valid.shape[1], generator, valid.device, eps, stratified=False)
        masked = masked & valid
        out[r] = (token_nll(valid & ~masked).double() * masked).sum(-1) / t.double()
    return out
