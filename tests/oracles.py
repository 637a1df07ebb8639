"""Exact oracles for the sampler tests (test-only: the shipped samplers never use them).

`ExactSequenceDenoiser` is the exact Bayes denoiser for data drawn from a finite set of sequences;
with `cyclic_support` it is the paper's cyclic toy (App. B): the K cyclic shifts of (0, …, K−1).
A correct sampler driven by it yields (nearly) only valid sequences, in the right proportions.
"""

from typing import Optional

import torch

from modeling_dsl.sampling_dsl import Denoiser


class ExactSequenceDenoiser(Denoiser):
    """Exact Bayes denoiser for data uniform (or `prior`-weighted) over a finite set of sequences.

    With unit embeddings, log p(z | x) = Σ_i z_i·e_{x_i} + const(z) (paper App. A.1), so
    p(x = S_n | z) ∝ prior_n exp(Σ_i z_i·E[S_n,i]) and the per-position marginals give the exact
    conditional p(x_i | z). `features` returns log-marginals (B, L, V), computed in float64.
    Used with the paper's cyclic toy (App. B): the K cyclic shifts of 0..K−1.
    """

    def __init__(self, support: torch.Tensor, embeddings: torch.Tensor, visible_snr: float = 1000.0,
                 prior: Optional[torch.Tensor] = None):
        self.support = support.long()  # (N, L)
        num, length = self.support.shape
        vocab = embeddings.shape[0]
        self.support_embeds = embeddings.double()[self.support].reshape(num, -1)  # (N, L·d)
        self.log_prior = None if prior is None else prior.double().log()
        self.onehot = torch.nn.functional.one_hot(self.support, vocab).double().reshape(num, -1)  # (N, L·V)
        self.shape = (length, vocab)
        super().__init__(self._features, None, embeddings, visible_snr)

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[0]
        scores = z.double().reshape(batch, -1) @ self.support_embeds.T  # Σ_i z_i·E[S_n,i]
        if self.log_prior is not None:
            scores = scores + self.log_prior
        post = torch.softmax(scores, dim=-1)  # (B, N)
        marginals = (post @ self.onehot).reshape(batch, *self.shape)
        return marginals.clamp_min(1e-300).log()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.suppress_mask(features)  # float64 log-marginals; samplers cast as they need


def cyclic_support(num_tokens: int) -> torch.Tensor:
    """The paper's cyclic toy: all K cyclic shifts of (0, …, K−1), shape (K, K); row s = shift s."""
    base = torch.arange(num_tokens)
    return torch.stack([(base + s) % num_tokens for s in range(num_tokens)])


# ----------------------------------------------------------------------------- ReMDM, scalar readings
# The official ReMDM formulas one time step at a time; the samplers use their tensor form
# (`sampling_dsl._remdm_row_rates`), which the tests compare with these.


def remdm_loop_schedule(t: float, dt: float, t_on: float, t_off: float, alpha_on: float):
    """ReMDM-loop's (phase, α_t, α_s) at grid time t with s = t − dt (official code).

    phase 1 (t > t_on): MDLM on α(t) = (1 − t)·α_on/(1 − t_on);
    phase 2 (t_off < t ≤ t_on): α frozen at α_on, remasking with σ = η;
    phase 3 (t ≤ t_off): MDLM on α(t) = 1 − t·(1 − α_on)/t_off.
    α_s uses the formula of t's phase even when s crosses into the next phase (as the code does).
    """
    s = t - dt
    if t > t_on:
        return 1, (1 - t) * alpha_on / (1 - t_on), (1 - s) * alpha_on / (1 - t_on)
    if t <= t_off:
        return 3, 1 - t * (1 - alpha_on) / t_off, 1 - s * (1 - alpha_on) / t_off
    return 2, alpha_on, alpha_on


def remdm_sigma(mode: str, alpha_s: float, alpha_t: float, eta: float):
    """The ReMDM remasking probability σ_t for "mdlm" (0), "cap" and "rescale" and the scale
    σ_max = min(1, (1 − α_s)/α_t) that "conf" multiplies by its per-token weights.

    cap: min(η, (1 − α_s)/α_t); rescale: η·min(1, (1 − α_s)/α_t); at α_t = 0 the code uses
    σ = η (cap) and σ_max = 1 (rescale, conf).
    """
    if mode == "mdlm":
        return 0.0
    if mode == "cap":
        return min(eta, (1 - alpha_s) / alpha_t) if alpha_t > 0 else eta
    sigma_max = min(1.0, (1 - alpha_s) / alpha_t) if alpha_t > 0 else 1.0
    if mode == "rescale":
        return eta * sigma_max
    if mode == "conf":
        return sigma_max
    raise ValueError(f"remdm mode must be one of ('mdlm', 'cap', 'rescale', 'conf') here, got {mode!r}")


def remdm_unmask_prob(alpha_s: float, alpha_t: float, sigma):
    """Probability that a masked position is unmasked (then drawn from p_θ):
    (α_s − (1 − σ)α_t)/(1 − α_t); the mask keeps (1 − α_s − σα_t)/(1 − α_t). σ = 0 is MDLM."""
    return (alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t)
