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
    random positions; every other row gets one LogNormal γ. Which rows are ROAR follows `row_rule`:
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
    ):
        if roar_type not in ("smoothed", "atomic"):
            raise ValueError(f"roar_type must be 'smoothed' or 'atomic', got {roar_type!r}")
        if granularity not in ("token", "sequence"):
            raise ValueError(f"granularity must be 'token' or 'sequence', got {granularity!r}")
        if row_rule not in self.ROW_RULES:
            raise ValueError(f"row_rule must be one of {self.ROW_RULES}, got {row_rule!r}")
        if row_rule != "bernoulli" and granularity != "sequence":
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

    @classmethod
    def from_config(cls, config) -> "SNRSampler":
        """The sampler a `DSLConfig` describes."""
        return cls(
            roar_prob=config.roar_prob, roar_type=config.roar_type, granularity=config.snr_granularity,
            snr_min=config.snr_min, snr_max=config.snr_max, roar_c=config.roar_c,
            lognormal_mu=config.lognormal_mu, lognormal_sigma=config.lognormal_sigma, clip=config.snr_clip,
            row_rule=config.roar_row_rule,
        )

    def lognormal(self, shape, generator=None, device=None) -> torch.Tensor:
        """ln γ ~ N(μ, σ²), optionally clipped to [snr_min, snr_max]."""
        normal = randn(shape, generator, device)
        snr = torch.exp(self.mu + self.sigma * normal)
        return snr.clamp(self.snr_min, self.snr_max) if self.clip else snr

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
            lognormal = self.lognormal((batch_size, 1), generator, device).expand(shape)
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
