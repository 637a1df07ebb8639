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
