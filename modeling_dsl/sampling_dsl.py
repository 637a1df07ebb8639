"""Samplers for DSL models: small functions over a denoiser, shared by the network and exact oracles.

Every sampler works on a batch of token drafts `tokens` (B, L) and a bool `generate_mask` (B, L)
marking the positions it may write; every other position is held fixed (a prompt token is a
visible token at the clean SNR; padding is ignored through the denoiser's attention mask).

The denoiser is a [`Denoiser`]: `features(z)` runs the expensive part once per state
z (B, L, d), and `logits(features[rows])` turns any subset of rows into fp32 logits over the V
real tokens. Samplers call `logits` only on the rows they need (the positions that are drawn
this step), and draw categorical samples only on those rows, in float64. A plain callable
`z -> logits (B, L, V)` is accepted too (wrapped by [`as_denoiser`]), so the same sampler runs on
the model (`Denoiser.from_model`) and on exact Bayes oracles (the tests' `oracles.py`).
A model's denoiser is also split into the per-position converter and the backbone, so the masked
samplers (remdm, mdlm, low_confidence, roar) recompute the converter only at the positions a step
changed, and `Denoiser.from_model(..., compile=True)` runs the fixed-shape network calls through
`torch.compile`. The masked samplers sync with the host at most once per step (remdm: which
positions unmask; low_confidence and roar: once per block or call).

Discrete state convention (DESIGN.md): a masked position is z = 0; a visible token t is
z = visible_snr · E[t] (noiseless).

Every categorical draw (inverse CDF or Gumbel-max) uses float64 uniforms; Gaussian SDE noise is
float32.

When the mask id is a real vocabulary id (LLaDA-style, `mask_token_id < V`), [`Denoiser.logits`]
sets its column to −inf, so no sampler can draw it and the SDE's x̂ gives E[mask] no weight.

Randomness comes only from `generator`: `None` (torch's global stream), one `torch.Generator`
for the whole batch, or a list of per-row generators. With per-row generators every row draws a
fixed number of values per step that depends only on its own number of generated positions, so
a row's result does not depend on the other rows of the batch.

Samplers (each returns a [`SamplerOutput`] with tokens and per-step diagnostics):
    sde             dz = x̂(z) dγ + dW along per-token SNR paths (Euler–Maruyama or Heun)
    mdlm            ancestral masked diffusion (α_t = 1 − t), final greedy step
    remdm           ReMDM remasking: cap, rescale, conf, loop
    hybrid          SDE up to a switch SNR, commit a draft, discrete finish
    low_confidence  LLaDA semi-autoregressive block decoding
    roar            random-order autoregressive decoding, k tokens per step
    correct         error correction of a given text

Diagnostics (paper §7.4), each a (steps, B) tensor of per-row values, NaN where a row had
nothing to measure at that step:
    u_t   mean uncertainty 1 − max_v p(v)
    H_t   mean entropy (nats) of p
    k_t   mean nucleus size: tokens needed to cover `diagnostics_p` (0.9) of the mass
    r_t   remask ratio: generated positions remasked at the step / a denominator (below)
    Δ_t   change rate: generated positions whose state (token or mask) changed / G
and `rewrites` (B, L): how often each position's token was replaced by a different token after
it was first set (mask → token commitments are not counted; a token remasked and redrawn as a
different token counts once; SDE: how often the running argmax changed). This is the reading of
Eq. 25 under which the paper's Table 5 counts are below 1 at T = 128: they count ReMDM-loop's
remask-and-redraw events only, ≈ (0.5·T loop steps)·α_on·η_cap per token.

`diagnostics_positions` chooses the normalisation, G being a row's number of generated positions
(= L for unconditional generation):
    "evaluated" (default): u_t, H_t, k_t average over the positions whose distribution the step
        evaluated to draw from (masked samplers: the positions drawn at that step; SDE and
        correct: every generated position); r_t divides by the generated positions visible
        before the step. Cheap: no extra network evaluations.
    "all" (the paper's §7.4 / Eq. 25 normalisation): u_t, H_t, k_t average over all G generated
        positions and r_t divides by G. Masked samplers then evaluate p_θ at every generated
        position every step; a step that needs no network call for sampling gets one for the
        diagnostics, which is not counted in `nfe`.

Callback protocol: a sampler given `callback` calls `callback(step, draft, masked, permanent)`
after every step, with `step` the step number (0-based, counted over the whole run), `draft`
(B, L) long the current tokens (fixed positions as given, still-masked generated positions
holding the mask id; SDE: the running argmax), `masked` (B, L) bool the generated positions
still masked, and `permanent` True when committed tokens are never revised afterwards
(low_confidence, roar), so a streamer may emit every committed token left of the first masked
position.
"""

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from .noise_dsl import rand, randn, snr_schedule

GeneratorArg = Union[None, torch.Generator, Sequence[torch.Generator]]

REMDM_MODES = ("cap", "rescale", "conf", "loop")

# η_cap(T) for ReMDM at step budget T: the DSL paper's Eq. 24, the values "as used in our logs".
# Table 5's rewrite counts confirm them: (0.5·T loop steps)·α_on·η_cap = 0.58 / 0.92 / 1.61 / 1.84
# against the reported 0.580 / 0.925 / 1.611 / 1.849 (reproduced by tests/test_sampling_protocol.py).
# §6.1 and Table 4 print 0.002 at T = 1024, which would remask half as much as the logged runs.
ETA_CAP_TABLE = {128: 0.010, 256: 0.008, 512: 0.007, 1024: 0.004}
# Official ReMDM OWT default of the rescale mode (reference mdlm_remdm.md).
ETA_RESCALE_DEFAULT = 0.015

# Rows per chunk where a sampler only needs a reduction of the (rows, V) logits (SDE's x̂): about
# 2^22 logits (16 MiB fp32) at a time instead of the whole (N, V) tensor.
_CHUNK_ELEMENTS = 2**22

# Which positions u_t, H_t, k_t average over and what r_t divides by (see the module docstring).
DIAGNOSTIC_POSITIONS = ("evaluated", "all")


def eta_cap_default(steps: int) -> float:
    """η_cap(T) from the DSL paper; log₂(T)-linear interpolation between table points, clamped."""
    points = sorted(ETA_CAP_TABLE.items())
    if steps <= points[0][0]:
        return points[0][1]
    if steps >= points[-1][0]:
        return points[-1][1]
    for (t0, e0), (t1, e1) in zip(points, points[1:]):
        if t0 <= steps <= t1:
            w = (math.log2(steps) - math.log2(t0)) / (math.log2(t1) - math.log2(t0))
            return e0 + w * (e1 - e0)
    raise AssertionError("unreachable")


# ============================================================================ denoisers


class Denoiser:
    """denoise(z | draft): `features(z)` (B, L, F) once per state, `logits(rows)` (..., V) fp32.

    Args:
        features_fn: z (B, L, d) → per-position features (B, L, F) (hidden states, or logits);
            may be None when `inputs_fn` and `trunk_fn` are given (features = trunk(inputs(z))).
        head_fn: features of any subset of positions (..., F) → fp32 logits (..., V);
            `None` means the features already are logits.
        embeddings: E, the (V, d) unit token embeddings.
        visible_snr: SNR of a visible (clean) token: z = visible_snr · E[t].
        mask_token_id: id stored in drafts at masked positions (may equal V).
        suppress_token_ids: ids whose logits are −inf in every use of `logits` (draws,
            confidences, the SDE's posterior mean and final decode), as the mask id's are; e.g.
            LLaDA's `logits_eos_inf` = the EOS id (reference llada_dsl.md §3). Each in [0, V).
        inputs_fn: optional per-position part of `features_fn`, z (..., d) → backbone inputs
            (..., D) (the converter: each position's output depends on its own z only).
        trunk_fn: optional rest of `features_fn`, inputs (B, L, D) → features (B, L, F).
            With both, the masked samplers keep the backbone inputs of their draft and, after a
            step, recompute them only at the positions that changed (a discrete draft's z is 0 or
            visible_snr·E[t], so the converter's (V+1)-wide work is needed only for new tokens).
        state_inputs_fn: optional z (B, L, d) → inputs (B, L, D) of a whole state, when some
            positions' inputs do not come from `inputs_fn` (default: `inputs_fn`).
        fixed_inputs: (B, L) bool, the positions whose inputs `state_inputs_fn` sets regardless
            of z (clean prompt rows fed as the backbone's token embedding); a draft that
            generates at one of them runs the whole network per state instead.
    """

    def __init__(self, features_fn: Optional[Callable], head_fn: Optional[Callable], embeddings: torch.Tensor,
                 visible_snr: float, mask_token_id: Optional[int] = None, *, inputs_fn: Optional[Callable] = None,
                 trunk_fn: Optional[Callable] = None, token_features_fn: Optional[Callable] = None,
                 suppress_token_ids: Optional[Sequence[int]] = None,
                 state_inputs_fn: Optional[Callable] = None, fixed_inputs: Optional[torch.Tensor] = None):
        if (inputs_fn is None) != (trunk_fn is None):
            raise ValueError("give both inputs_fn and trunk_fn, or neither")
        if features_fn is None and inputs_fn is None:
            raise ValueError("features_fn is needed unless inputs_fn and trunk_fn are given")
        if inputs_fn is None and (state_inputs_fn is not None or fixed_inputs is not None):
            raise ValueError("state_inputs_fn and fixed_inputs need inputs_fn and trunk_fn")
        self.state_inputs_fn = state_inputs_fn if state_inputs_fn is not None else inputs_fn
        self.fixed_inputs = fixed_inputs
        self.features_fn = features_fn if features_fn is not None else (lambda z: trunk_fn(self.state_inputs_fn(z)))
        # Optional (tokens (B, L), visible (B, L) bool) → features: the masked samplers' discrete
        # states fed as the published model's own inputs (`token_inputs="backbone"`).
        self.token_features_fn = token_features_fn
        self.head_fn = head_fn
        self.inputs_fn, self.trunk_fn = inputs_fn, trunk_fn
        self.embeddings = embeddings.float()
        self.visible_snr = float(visible_snr)
        self.vocab_size = embeddings.shape[0]
        self.mask_token_id = self.vocab_size if mask_token_id is None else int(mask_token_id)
        self.suppress_token_ids = _check_suppressed(suppress_token_ids, self.vocab_size, self.mask_token_id)
        self._suppressed = {}  # device -> the (k,) index of the −inf columns
        self._mask_inputs = None

    @property
    def split(self) -> bool:
        """True when the per-position inputs can be updated row by row ([`_Draft`] uses it)."""
        return self.inputs_fn is not None

    def mask_inputs(self) -> torch.Tensor:
        """(D,) backbone input of a masked position (z = 0), computed once."""
        if self._mask_inputs is None:
            zero = torch.zeros(1, self.embeddings.shape[1], device=self.embeddings.device)
            self._mask_inputs = self.inputs_fn(zero)[0]
        return self._mask_inputs

    def compiled(self, **compile_kwargs) -> "Denoiser":
        """A copy whose fixed-shape backbone calls run through `torch.compile` (default
        `dynamic=False`): `trunk_fn`, the backbone on the (B, L, D) draft inputs, which the masked
        samplers call every step and `sde` calls after the converter on every position. The
        converter (a chunked custom autograd function over (rows, V+1) buffers: compiled, it ran
        slower — sde 4.38 s → 5.31 s in the network calls at B = 2, L = 128, T = 32, small trunk,
        CPU) and the LM head on the drawn rows keep their eager calls. Without a split
        (`trunk_fn` None) the whole `features_fn` is compiled. The first call of each compiles
        (seconds to tens of seconds on a CPU); later calls with the same shapes reuse it."""
        compile_kwargs.setdefault("dynamic", False)
        other = copy.copy(self)
        if self.trunk_fn is None:
            other.features_fn = torch.compile(self.features_fn, **compile_kwargs)
            return other
        other.trunk_fn = trunk = torch.compile(self.trunk_fn, **compile_kwargs)
        state_inputs = self.state_inputs_fn
        other.features_fn = lambda z: trunk(state_inputs(z))
        return other

    @classmethod
    def from_model(cls, model, attention_mask: Optional[torch.Tensor] = None, *, visible_snr: Optional[float] = None,
                   beta: Optional[float] = None, beta_scale: float = 1.0, tokens: Optional[torch.Tensor] = None,
                   clean_mask: Optional[torch.Tensor] = None, token_inputs: str = "converter",
                   suppress_token_ids: Optional[Sequence[int]] = None, compile: bool = False) -> "Denoiser":
        """Wrap a `DSLForDiffusionLM`: features = hidden states, head = the per-position LM head.

        The converter (`inputs_fn`, per position) and the backbone blocks (`trunk_fn`) are given
        separately, so the masked samplers run the converter only on the positions that change.
        A model whose `hidden_states` is replaced on the instance (instrumentation, a custom
        input path) is always called through it, as one `features` call per state.

        Args:
            attention_mask: (B, L) key-padding mask (1 = real token), or None.
            visible_snr: SNR of visible (prompt / committed) tokens, z = visible_snr·E[t];
                None → `model.config.effective_visible_snr`.
            beta: the converter's β at inference (the weights are not touched); None keeps the
                learned β.
            beta_scale: β_inf = beta_scale · β_learned (DSL-LLaDA decodes with 2×); 1.0 = no
                change. Give at most one of `beta` and `beta_scale`.
            tokens, clean_mask: (B, L) ids and bool; the marked (prompt) positions are fed as the
                backbone's own token embedding instead of the converter output
                (`prompt_embedding="backbone"`, DSL-LLaDA's clean wte(prompt)). In a doubled (CFG)
                batch only the conditional half is, the unconditional half keeps its masked prompt.
                The masked samplers keep these rows in the draft's cached inputs (`fixed_inputs`)
                and still run the converter only on the positions that change.
            token_inputs: "converter", or "backbone": the masked samplers' discrete states (visible
                tokens and masks alike) are fed as the backbone's own token embedding, i.e. the
                published model itself (LLaDA's generate.py); continuous SDE states still use the converter.
            suppress_token_ids: ids never drawn nor weighted (logits −inf, see the class docstring).
            compile: return [`compiled`]`()`: `torch.compile` of the network for fixed shapes.
        """
        _check_num("visible_snr", visible_snr, 0.0, low_open=True, optional=True)
        _check_num("beta", beta, 0.0, low_open=True, optional=True)
        _check_num("beta_scale", beta_scale, 0.0, low_open=True)
        if beta is not None and beta_scale != 1.0:
            raise ValueError(f"give beta or beta_scale, not both (got beta={beta}, beta_scale={beta_scale})")
        if beta_scale != 1.0:
            beta = beta_scale * float(model.converter.beta.detach().float().reshape(-1)[0])
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        converter_kwargs = {} if beta is None else {"beta": beta}
        mask = attention_mask
        embeddings = model.noise_embeddings()

        if token_inputs not in ("converter", "backbone"):
            raise ValueError(f"token_inputs must be 'converter' or 'backbone', got {token_inputs!r}")
        with_clean = clean_mask is not None and bool(clean_mask.any())

        def key_padding(batch):
            if mask is not None and mask.shape[0] != batch:  # e.g. CFG doubles the batch
                return mask.repeat(batch // mask.shape[0], 1)
            return mask

        def clean_rows(z):  # (clean mask, ids) of a state: the conditional half only (CFG doubles the batch)
            clean = torch.zeros(z.shape[:2], dtype=torch.bool, device=z.device)
            clean[: clean_mask.shape[0]] = clean_mask
            return clean, tokens.repeat(z.shape[0] // tokens.shape[0], 1)

        def features(z):  # = trunk(state_inputs(z)); one call, as model.hidden_states runs it
            m = key_padding(z.shape[0])
            if not with_clean:
                return model.hidden_states(z, m, **converter_kwargs)
            clean, ids = clean_rows(z)
            return model.hidden_states_with_clean(z, m, clean_ids=ids, clean_mask=clean, **converter_kwargs)

        def inputs(z):  # the converter: position by position
            return model.converter(z, embeddings, **converter_kwargs)

        def state_inputs(z):  # a whole state's inputs: the converter, clean prompt rows from the backbone's table
            h = inputs(z)
            clean, ids = clean_rows(z)
            return torch.where(clean.unsqueeze(-1), model.embed_clean_tokens(ids).to(h.dtype), h)

        def trunk(h):
            return model.backbone(h, key_padding(h.shape[0]))

        def token_features(ids, visible):
            ids = ids.masked_fill(~visible, model.config.mask_token_id)
            return model.hidden_states_from_tokens(ids, key_padding(ids.shape[0]))

        snr = model.config.effective_visible_snr if visible_snr is None else visible_snr
        # The split (converter on changed rows only): clean prompt rows fed through the backbone's
        # own embedding are part of the draft's cached inputs and never change (`fixed_inputs`).
        split = "hidden_states" not in vars(model) and hasattr(model, "converter") and hasattr(model, "backbone")
        split_kwargs = {}
        if split:
            split_kwargs = dict(inputs_fn=inputs, trunk_fn=trunk)
            if with_clean:
                split_kwargs.update(state_inputs_fn=state_inputs, fixed_inputs=clean_mask.bool())
        den = cls(features, model.logits_from_hidden, embeddings, snr, model.config.mask_token_id,
                  token_features_fn=token_features if token_inputs == "backbone" else None,
                  suppress_token_ids=suppress_token_ids, **split_kwargs)
        return den.compiled() if compile else den

    def features(self, z: torch.Tensor) -> torch.Tensor:
        return self.features_fn(z)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """fp32 logits over the V ids; the mask id's column is −inf when it is one of them."""
        return self.suppress_mask(self.raw_logits(features))

    def raw_logits(self, features: torch.Tensor) -> torch.Tensor:
        """fp32 logits over the V ids, the mask id's column included."""
        out = features if self.head_fn is None else self.head_fn(features)
        return out.float()

    def suppress_mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Set to −inf the columns of the mask id (when it is a real id, mask_token_id < V) and of
        `suppress_token_ids`: the one place every sampler's logits pass through."""
        columns = self._suppressed.get(logits.device)
        if columns is None:
            ids = [self.mask_token_id] if 0 <= self.mask_token_id < logits.shape[-1] else []
            ids = sorted(set(ids) | set(self.suppress_token_ids))
            columns = self._suppressed[logits.device] = torch.tensor(ids, dtype=torch.long, device=logits.device)
        if columns.numel():
            logits = logits.index_fill(-1, columns, -math.inf)
        return logits

    def draft_embeds(self, tokens: torch.Tensor, visible: torch.Tensor, snr: Optional[float] = None) -> torch.Tensor:
        """z of a discrete draft: snr·E[token] where `visible`, 0 elsewhere. (B, L) → (B, L, d)."""
        snr = self.visible_snr if snr is None else snr
        ids = tokens.clamp(0, self.vocab_size - 1)
        return self.embeddings[ids] * (visible.unsqueeze(-1).to(self.embeddings.dtype) * snr)


def _check_suppressed(ids, vocab_size: int, mask_token_id: int) -> Tuple[int, ...]:
    """`suppress_token_ids` as a sorted tuple; `ValueError` naming it for ids outside [0, V) or for
    a set that (with the mask id) leaves no token to draw."""
    if ids is None:
        return ()
    ids = [ids] if isinstance(ids, int) and not isinstance(ids, bool) else list(ids)
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"suppress_token_ids must be token ids in [0, vocab_size={vocab_size}), got {bad}")
    masked = {mask_token_id} if 0 <= mask_token_id < vocab_size else set()
    if len(set(ids) | masked) >= vocab_size:
        raise ValueError(f"suppress_token_ids: suppressing {len(set(ids))} ids (and the mask id) leaves no token "
                         f"of the {vocab_size} to draw")
    return tuple(sorted(set(ids)))


def as_denoiser(denoiser, embeddings: Optional[torch.Tensor] = None, visible_snr: Optional[float] = None,
                mask_token_id: Optional[int] = None) -> Denoiser:
    """A [`Denoiser`] as is, or wrap a callable `z (B, L, d) -> logits (B, L, V)`."""
    if isinstance(denoiser, Denoiser):
        return denoiser
    if embeddings is None or visible_snr is None:
        raise ValueError("a plain callable denoiser needs `embeddings` and `visible_snr`")
    return Denoiser(denoiser, None, embeddings, visible_snr, mask_token_id)


# ============================================================================ randomness


class RowRNG:
    """Draws whose per-row values do not depend on the other rows of the batch.

    `generator` is None, one generator (one draw for the whole batch: fastest), or a list of
    per-row generators (each row draws its own block: batch-composition invariant).
    """

    def __init__(self, generator: GeneratorArg, batch_size: int, device):
        self.device = torch.device(device)
        self.batch_size = batch_size
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch_size:
                raise ValueError(f"generator: got {len(generator)} generators for a batch of {batch_size}")
            self.per_row, self.single = list(generator), None
        else:
            self.per_row, self.single = None, generator

    @staticmethod
    def _dtype(kind: str, dtype):
        """Default dtype: float64 for uniforms (every categorical draw), float32 for normals."""
        if dtype is not None:
            return dtype
        return torch.float64 if kind == "uniform" else torch.float32

    def _draw(self, kind: str, shape, gen, dtype):
        draw = rand if kind == "uniform" else randn
        return draw(shape, gen, self.device, self._dtype(kind, dtype))

    def rows(self, kind: str, per_row_shape, dtype=None) -> torch.Tensor:
        """(B, *per_row_shape) draws; kind 'uniform' (default float64) or 'normal' (float32)."""
        if self.per_row is None:
            return self._draw(kind, (self.batch_size, *per_row_shape), self.single, dtype)
        return torch.stack([self._draw(kind, per_row_shape, g, dtype) for g in self.per_row])

    def ragged(self, kind: str, counts: Sequence[int], trailing=(), dtype=None) -> torch.Tensor:
        """(Σ counts, *trailing) draws, row-major: row r contributes counts[r] leading entries
        (dtype as in [`rows`])."""
        if self.per_row is None:
            return self._draw(kind, (sum(counts), *trailing), self.single, dtype)
        parts = [self._draw(kind, (n, *trailing), g, dtype) for n, g in zip(counts, self.per_row)]
        if parts:
            return torch.cat(parts)
        return torch.empty((0, *trailing), device=self.device, dtype=self._dtype(kind, dtype))


# ============================================================================ shared helpers


@dataclass
class SamplerOutput:
    """tokens (B, L) long; diagnostics: name → (steps, B) tensor plus `rewrites` (B, L);
    nfe: denoiser evaluations; changed (B, L) bool for `correct`; extra: sampler-specific values."""

    tokens: torch.Tensor
    diagnostics: Dict[str, torch.Tensor] = field(default_factory=dict)
    nfe: int = 0
    changed: Optional[torch.Tensor] = None
    extra: Dict[str, torch.Tensor] = field(default_factory=dict)


class _GenIndex:
    """Flat, row-major index of the generated positions of a batch (computed once; one host sync)."""

    def __init__(self, generate_mask: torch.Tensor):
        self.mask = generate_mask.bool()
        self.batch, self.length = generate_mask.shape
        self.rows, self.cols = self.mask.nonzero(as_tuple=True)
        self.counts = self.mask.sum(dim=1).tolist()
        self.n = self.rows.numel()
        self.row_count = self.mask.sum(dim=1).clamp_min(1).float()

    def per_row_mean(self, values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Mean of flat `values` grouped by `rows` → (B,), NaN for rows without entries."""
        total = torch.zeros(self.batch, device=values.device, dtype=torch.float32)
        count = torch.zeros(self.batch, device=values.device, dtype=torch.float32)
        total.index_add_(0, rows, values.float())
        count.index_add_(0, rows, torch.ones_like(values, dtype=torch.float32))
        return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))

    def per_row_sum(self, values: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(self.batch, device=values.device, dtype=torch.float32)
        return total.index_add_(0, self.rows, values.float())


class _Trace:
    """Per-step diagnostics accumulator (no host syncs; stacked at the end)."""

    NAMES = ("u_t", "H_t", "k_t", "r_t", "delta_t")

    def __init__(self, enabled: bool, index: _GenIndex, nucleus_p: float = 0.9, positions: str = "evaluated",
                 initial_tokens: Optional[torch.Tensor] = None):
        if positions not in DIAGNOSTIC_POSITIONS:
            raise ValueError(f"diagnostics_positions must be one of {DIAGNOSTIC_POSITIONS}, got {positions!r}")
        self.enabled, self.index, self.nucleus_p = enabled, index, nucleus_p
        self.evaluate_all = enabled and positions == "all"
        self.steps = {name: [] for name in self.NAMES}
        self.rewrites = torch.zeros(index.n, dtype=torch.long, device=index.rows.device) if enabled else None
        # last token each generated position held (−1: never set), for `rewrites`
        self.last = initial_tokens.clone() if enabled and initial_tokens is not None else None

    def rewritten(self, sel: torch.Tensor, drawn: torch.Tensor) -> Optional[torch.Tensor]:
        """(N,) bool: flat positions `sel` whose new token `drawn` replaces a different earlier one."""
        if not self.enabled or self.last is None:
            return None
        previous = self.last[sel]
        out = torch.zeros(self.index.n, dtype=torch.bool, device=sel.device)
        out[sel] = (previous >= 0) & (drawn != previous)
        self.last[sel] = drawn
        return out

    def record(self, probs: Optional[torch.Tensor], prob_rows: Optional[torch.Tensor],
               remasked: Optional[torch.Tensor] = None, visible_before: Optional[torch.Tensor] = None,
               changed: Optional[torch.Tensor] = None, rewritten: Optional[torch.Tensor] = None):
        """probs (n, V) evaluated at flat rows `prob_rows`; remasked/visible_before/changed/rewritten (N,) bool."""
        if not self.enabled:
            return
        idx = self.index
        nan = torch.full((idx.batch,), float("nan"), device=idx.rows.device)
        if probs is not None and probs.shape[0] > 0:
            u, h, k = prob_stats(probs, self.nucleus_p)
            self.steps["u_t"].append(idx.per_row_mean(u, prob_rows))
            self.steps["H_t"].append(idx.per_row_mean(h, prob_rows))
            self.steps["k_t"].append(idx.per_row_mean(k, prob_rows))
        else:
            for name in ("u_t", "H_t", "k_t"):
                self.steps[name].append(nan)
        if remasked is not None and visible_before is not None:
            denominator = idx.row_count if self.evaluate_all else idx.per_row_sum(visible_before)
            self.steps["r_t"].append(torch.where(denominator > 0, idx.per_row_sum(remasked) / denominator.clamp_min(1), nan))
        else:
            self.steps["r_t"].append(torch.zeros(idx.batch, device=idx.rows.device))
        if changed is not None:
            self.steps["delta_t"].append(idx.per_row_sum(changed) / idx.row_count)
        else:
            self.steps["delta_t"].append(torch.zeros(idx.batch, device=idx.rows.device))
        if rewritten is not None:
            self.rewrites += rewritten.long()

    def result(self) -> Dict[str, torch.Tensor]:
        if not self.enabled:
            return {}
        idx = self.index
        out = {}
        for name, values in self.steps.items():
            out[name] = torch.stack(values) if values else torch.empty(0, idx.batch, device=idx.rows.device)
        rewrites = torch.zeros(idx.batch, idx.length, dtype=torch.long, device=idx.rows.device)
        rewrites[idx.rows, idx.cols] = self.rewrites
        out["rewrites"] = rewrites
        return out


class _Draft:
    """Discrete decoding state shared by the masked samplers (remdm, low_confidence, roar).

    Every generated position holds a token or the mask (`flat`, `is_masked`: (N,), row-major over
    the generated positions); every other position holds its given token, visible. The network
    runs at most once per state (`logits` caches the features until `commit` or `remask` changes
    the state) and `nfe` counts those runs. With `cfg_scale` w > 0 each run also evaluates the
    unconditional state (fixed positions masked) and logits are u + (w + 1)(c − u) (LLaDA's CFG,
    2 NFE).

    With a split denoiser ([`Denoiser.split`]) the backbone inputs of the draft are kept between
    runs: a run recomputes the per-position inputs only at the positions committed since the
    last run and writes the z = 0 inputs at every masked position (no index sync for remasks),
    then runs the backbone. `remask` takes a (N,) flag tensor that may be all False; whether it
    changed anything is only read when the cached features would otherwise be reused.
    """

    def __init__(self, den: Denoiser, tokens: torch.Tensor, generate_mask: torch.Tensor,
                 masked: Optional[torch.Tensor] = None, cfg_scale: float = 0.0):
        self.den, self.base, self.cfg_scale = den, tokens, cfg_scale
        self.index = idx = _GenIndex(generate_mask)
        if masked is None:
            self.is_masked = torch.ones(idx.n, dtype=torch.bool, device=tokens.device)
        else:
            self.is_masked = masked[idx.rows, idx.cols].bool().clone()
        self.flat = tokens[idx.rows, idx.cols].masked_fill(self.is_masked, den.mask_token_id)
        self.features, self.counted, self.nfe = None, False, 0
        self.inputs = None  # split denoisers: backbone inputs of the draft, (B or 2B, L, D)
        # Split unless a generated position is one whose inputs the denoiser fixes (one sync, here).
        fixed = den.fixed_inputs
        self.split = den.split and (fixed is None or not bool((fixed.to(idx.mask.device) & idx.mask).any()))
        self.committed = []  # flat positions committed since `inputs` was last brought up to date
        self.remasked = None  # (N,) bool: positions remasked since the features were computed

    def tokens(self) -> torch.Tensor:
        """(B, L) the draft: given tokens, committed tokens, the mask id at masked positions."""
        out = self.base.clone()
        out[self.index.rows, self.index.cols] = self.flat
        return out

    def masked(self) -> torch.Tensor:
        """(B, L) bool, the generated positions still masked."""
        out = torch.zeros_like(self.index.mask)
        out[self.index.rows, self.index.cols] = self.is_masked
        return out

    def visible(self, condition: bool = True) -> torch.Tensor:
        """(B, L) bool, the visible positions (`condition=False`: the fixed positions masked too, for CFG)."""
        visible = ~self.index.mask if condition else torch.zeros_like(self.index.mask)
        visible = visible.clone()
        visible[self.index.rows, self.index.cols] = ~self.is_masked
        return visible

    def z(self, condition: bool = True) -> torch.Tensor:
        """Noise-space state: visible tokens at the denoiser's visible SNR, masks at z = 0
        (`condition=False`: the fixed positions masked too, for CFG)."""
        return self.den.draft_embeds(self.tokens(), self.visible(condition))

    def logits(self, flat: torch.Tensor, diagnostic: bool = False) -> torch.Tensor:
        """fp32 logits (n, V) of p_θ at flat generated positions `flat` for the current state.
        `diagnostic=True` does not count a network run made only for it."""
        if self.features is not None and self.remasked is not None and bool(self.remasked.any()):
            self.features = None
        self.remasked = None
        if self.features is None:
            self.features = self._run_network()
            self.counted = False
        if not diagnostic and not self.counted:
            self.nfe += 2 if self.cfg_scale > 0 else 1
            self.counted = True
        rows, cols = self.index.rows[flat], self.index.cols[flat]
        if self.cfg_scale <= 0:
            return self.den.logits(self.features[rows, cols])
        batch = self.index.batch
        # Combine before suppressing the mask id (−inf − −inf would be NaN when the mask id is a real id).
        cond = self.den.raw_logits(self.features[:batch][rows, cols])
        uncond = self.den.raw_logits(self.features[batch:][rows, cols])
        return self.den.suppress_mask(uncond + (self.cfg_scale + 1.0) * (cond - uncond))

    def _run_network(self) -> torch.Tensor:
        """Features of the current state (and of the unconditional state under CFG)."""
        den, cfg = self.den, self.cfg_scale > 0
        if den.token_features_fn is not None:  # the published model's own discrete inputs
            conditions = (True, False) if cfg else (True,)
            return den.token_features_fn(self.tokens().repeat(len(conditions), 1),
                                         torch.cat([self.visible(c) for c in conditions]))
        if not self.split:
            z = self.z()
            return den.features(torch.cat([z, self.z(False)]) if cfg else z)
        if self.inputs is None:
            self.inputs = self._initial_inputs()
        else:
            self._update_inputs()
        self.committed = []
        return den.trunk_fn(self.inputs)

    def _initial_inputs(self) -> torch.Tensor:
        """Backbone inputs of the first state: the converter on its visible positions only, the z = 0
        inputs at the masked ones (an unconditional draft starts all masked: no converter run). Its
        (V+1)-wide work on every position was ~10 % of an mdlm run's profiled CPU time at B = 4,
        L = 256, T = 64, V = 50257, small trunk; the run went from 3.38 s to 3.22 s. One host sync,
        for the visible positions' index."""
        den, cfg = self.den, self.cfg_scale > 0
        conditions = (True, False) if cfg else (True,)
        z = torch.cat([self.z(c) for c in conditions])
        if den.state_inputs_fn is not den.inputs_fn:  # fixed (clean prompt) rows come from elsewhere
            return den.state_inputs_fn(z)
        visible = torch.cat([self.visible(c) for c in conditions])
        mask_inputs = den.mask_inputs()
        inputs = mask_inputs.expand(*z.shape[:2], mask_inputs.shape[-1]).clone()
        where = visible.nonzero(as_tuple=True)
        if where[0].numel():
            inputs[where] = den.inputs_fn(z[where]).to(inputs.dtype)
        return inputs

    def _update_inputs(self) -> None:
        """Bring the cached backbone inputs up to the current state: new inputs at the positions
        committed since the last run, the z = 0 inputs at every masked position."""
        idx, den = self.index, self.den
        halves = (0, idx.batch) if self.cfg_scale > 0 else (0,)
        if self.committed:
            flat = torch.cat(self.committed)
            new = den.inputs_fn(den.draft_embeds(self.flat[flat], ~self.is_masked[flat]))
            rows, cols = idx.rows[flat], idx.cols[flat]
            for offset in halves:
                self.inputs[rows + offset, cols] = new.to(self.inputs.dtype)
        mask_inputs = den.mask_inputs().to(self.inputs.dtype)
        for offset in halves:
            rows = idx.rows + offset
            current = self.inputs[rows, idx.cols]
            self.inputs[rows, idx.cols] = torch.where(self.is_masked.unsqueeze(-1), mask_inputs, current)

    def commit(self, flat: torch.Tensor, drawn: torch.Tensor) -> None:
        """Set tokens `drawn` at flat generated positions `flat` (now visible)."""
        self.flat = self.flat.index_put((flat,), drawn)
        self.is_masked = self.is_masked.index_put((flat,), torch.zeros_like(flat, dtype=torch.bool))
        self.features = None
        if self.inputs is not None:
            self.committed.append(flat)

    def remask(self, flags: torch.Tensor) -> None:
        """Mask the flat generated positions where `flags` (N,) is True (it may be all False:
        no host sync here; `logits` checks it only when it would reuse the features)."""
        self.is_masked = self.is_masked | flags
        self.flat = self.flat.masked_fill(flags, self.den.mask_token_id)
        self.remasked = flags if self.remasked is None else self.remasked | flags

    def visible_tokens(self) -> torch.Tensor:
        """(N,) the current token of every generated position, −1 where masked."""
        return self.flat.masked_fill(self.is_masked, -1)

    def emit(self, callback: Optional[Callable], step: int, permanent: bool) -> None:
        if callback is not None:
            callback(step, self.tokens(), self.masked(), permanent)

    def output(self, trace: _Trace, **extra) -> SamplerOutput:
        return SamplerOutput(self.tokens(), trace.result(), self.nfe, extra={"masked": self.masked(), **extra})

    def diagnostic_probs(self, trace: _Trace, probs: Optional[torch.Tensor], sel: Optional[torch.Tensor],
                         to_probs: Callable):
        """(probs, flat rows) that a step's u_t, H_t, k_t describe: the positions drawn from, or
        with `diagnostics_positions="all"` every generated position (`to_probs` maps logits)."""
        if not trace.evaluate_all:
            return probs, None if sel is None else self.index.rows[sel]
        every = torch.arange(self.index.n, device=self.flat.device)
        return to_probs(self.logits(every, diagnostic=True)), self.index.rows


def merge_diagnostics(*parts: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Concatenate the step traces of consecutive sampler phases; add up `rewrites`."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    out = {}
    for name in _Trace.NAMES:
        out[name] = torch.cat([p[name] for p in parts])
    out["rewrites"] = sum(p["rewrites"] for p in parts)
    return out


def prob_stats(probs: torch.Tensor, nucleus_p: float = 0.9):
    """Per row of probs (n, V): (1 − max p, entropy in nats, size of the `nucleus_p` nucleus)."""
    probs = probs.float()
    uncertainty = 1.0 - probs.max(dim=-1).values
    entropy = torch.special.entr(probs).sum(dim=-1)
    sorted_probs = probs.sort(dim=-1, descending=True).values
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass strictly before each token
    nucleus = (before < nucleus_p).sum(dim=-1).float()
    return uncertainty, entropy, nucleus


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """ReMDM nucleus: keep sorted tokens whose inclusive cumulative mass is ≤ p (always the top-1),
    renormalise. The token that crosses p is dropped (HF's top_p keeps it)."""
    if top_p is None or top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep = sorted_probs.cumsum(dim=-1) <= top_p
    keep[..., 0] = True
    kept = sorted_probs * keep
    kept = kept / kept.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter_(-1, order, kept)


def top_k_filter(probs: torch.Tensor, top_k: Optional[int]) -> torch.Tensor:
    """Keep the k most likely tokens (renormalised)."""
    if top_k is None or top_k >= probs.shape[-1]:
        return probs
    values, index = probs.topk(top_k, dim=-1)
    values = values / values.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter_(-1, index, values)


def token_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None) -> torch.Tensor:
    """softmax(logits / T) in fp32 (fp64 if the logits are), then top-k and top-p. (n, V) → (n, V)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    probs = torch.softmax(logits / temperature, dim=-1)
    return top_p_filter(top_k_filter(probs, top_k), top_p)


def sample_from_probs(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF categorical draw in float64 with one U(0,1) per row: (n, V), (n,) → (n,).

    Exactly distributed as the categorical (never picks a zero-probability token); uses one
    random number per drawn position, so draws stay batch-composition invariant.
    """
    if probs.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=probs.device)
    cdf = probs.double().cumsum(dim=-1)
    target = uniform.double().clamp(0.0, 1.0) * cdf[:, -1] * (1.0 - 1e-12)
    index = torch.searchsorted(cdf, target.unsqueeze(-1), right=True).squeeze(-1)
    return index.clamp_max(probs.shape[-1] - 1)


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from transformers.utils.logging import tqdm

    return tqdm(iterable, desc=desc)


def _check_inputs(tokens: torch.Tensor, generate_mask: torch.Tensor):
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape (batch, length), got {tuple(tokens.shape)}")
    if generate_mask.shape != tokens.shape:
        raise ValueError(f"generate_mask must have shape {tuple(tokens.shape)}, got {tuple(generate_mask.shape)}")


def _check_int(name: str, value, low: int = 1, optional: bool = False):
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{' or None' if optional else ''}, got {value!r}")


def _check_num(name: str, value, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
               high_open: bool = False, optional: bool = False):
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}{' or None' if optional else ''}, got {value!r}")


def _check_steps(steps, name: str = "steps"):
    _check_int(name, steps, 1)


def _check_draw_args(temperature, top_p, top_k, diagnostics_p, positive_temperature: bool):
    """The arguments of categorical draws, as `DSLGenerationConfig.validate` checks them."""
    if positive_temperature:
        _check_num("temperature", temperature, 0.0, low_open=True)
    else:
        _check_num("temperature", temperature, 0.0)
    _check_num("top_p", top_p, 0.0, 1.0, low_open=True, optional=True)
    _check_int("top_k", top_k, 1, optional=True)
    _check_num("diagnostics_p", diagnostics_p, 0.0, 1.0, low_open=True)


def posterior_mean(logits: torch.Tensor, embeddings: torch.Tensor, top_k: Optional[int] = None) -> torch.Tensor:
    """x̂ = Σ_v softmax(logits)_v E[v] in fp32, (..., V) → (..., d). With `top_k`, only the k most
    likely tokens, renormalised (softmax of the top values @ E[top]; no (..., V) scatter)."""
    logits = logits.float()
    embeddings = embeddings.float()
    if top_k is None or top_k >= logits.shape[-1]:
        return torch.softmax(logits, dim=-1) @ embeddings
    _check_int("posterior_top_k", top_k, 1)
    values, top = logits.topk(top_k, dim=-1)
    weights = torch.softmax(values, dim=-1)  # (..., k)
    return (weights.unsqueeze(-1) * embeddings[top]).sum(dim=-2)


# ============================================================================ SDE


def _generated_paths(snr_path, index: _GenIndex, device) -> torch.Tensor:
    """(N, S+1) float64 SNR grid of every generated position from a (S+1,), (L, S+1) or (B, L, S+1) path."""
    path = torch.as_tensor(snr_path, dtype=torch.float64, device=device)
    if path.dim() == 1:
        path = path.unsqueeze(0).expand(index.n, -1)
    elif path.dim() == 2:
        path = path[index.cols]
    elif path.dim() == 3:
        path = path[index.rows, index.cols]
    else:
        raise ValueError(f"snr_path must have 1, 2 or 3 dimensions, got shape {tuple(path.shape)}")
    if path.shape[-1] < 2:
        raise ValueError("snr_path needs at least two points")
    if bool((path < 0).any()):
        raise ValueError("snr_path must be >= 0")
    return path


def sde(
    denoiser,
    tokens: torch.Tensor,
    generate_mask: torch.Tensor,
    snr_path: torch.Tensor,
    *,
    integrator: str = "euler",
    noise_scale: float = 1.0,
    posterior_top_k: Optional[int] = None,
    z_init: Optional[torch.Tensor] = None,
    parameterization: str = "z",
    init: str = "zero",
    generator: GeneratorArg = None,
    diagnostics: bool = False,
    diagnostics_p: float = 0.9,
    diagnostics_positions: str = "evaluated",
    callback: Optional[Callable] = None,
    progress: bool = False,
) -> SamplerOutput:
    """Simulate dz_i = x̂_i(z) dγ_i + √(dγ_i) dW_i (paper Eq. 2) along per-token SNR paths.

    Args:
        denoiser: [`Denoiser`] (or callable, see [`as_denoiser`]).
        tokens: (B, L) ids; positions outside `generate_mask` are held at their clean embedding
            (z = visible_snr · E[t]) throughout.
        generate_mask: (B, L) bool, the positions to generate.
        snr_path: increasing SNR grid γ_0 < … < γ_S: shape (S+1,) shared, (L, S+1) per position
            or (B, L, S+1) per token. Without `z_init` the state starts at z = 0, taken as the
            state at γ_0 of the grid (as the authors' `sample_path`, whose γ_0 enters only
            through differences): S points after γ_0 give S integration steps.
        integrator: "euler" (Euler–Maruyama, 1 NFE per step) or "heun" (predictor–corrector
            reusing the same Brownian increment, 2 NFE per step). NFE = S + 1 (Euler) or
            2S + 1 (Heun), the + 1 being the final decode.
        noise_scale: multiplies the Brownian increment; 1.0 is the exact SDE.
        posterior_top_k: x̂ = softmax(top-k logits) @ E[top-k] (renormalised over the k most
            likely tokens). Diagnostics still describe the full p_θ.
        z_init: (B, L, d) start state at γ_0 (e.g. to continue a path).
        parameterization: "z" integrates dz = x̂ dγ + noise_scale·dW; "y" (DSL-LLaDA's SDE,
            reference llada_dsl.md §5.5) integrates y = z/γ with dy = f dγ + g dW, f = (x̂ − y)/γ,
            g = noise_scale/γ (the same SDE in continuous time: dz = y dγ + γ dy = x̂ dγ + η dW,
            so noise_scale is their η), the denoiser seeing z = γ·y; Heun then averages f and g
            of the two ends with the same ΔW = √Δγ·N(0, I), as their code does.
        init: "zero" (z = 0 at γ_0) or "unit" (DSL-LLaDA's norm init: y_0 = ε/‖ε‖ per position,
            z_0 = γ_0·y_0; ε is drawn before the first step's noise).
    Returns:
        [`SamplerOutput`]: tokens = argmax of the final denoiser logits at generated positions;
        `extra["z"]` the final state, `extra["final_logits"]` (N, V) at the generated positions
        (row-major), `extra["snr"]` the final per-position SNR (B, L).
    """
    den = as_denoiser(denoiser)
    _check_inputs(tokens, generate_mask)
    if integrator not in ("euler", "heun"):
        raise ValueError(f"integrator must be 'euler' or 'heun', got {integrator!r}")
    _check_num("noise_scale", noise_scale, 0.0)
    _check_int("posterior_top_k", posterior_top_k, 1, optional=True)
    _check_num("diagnostics_p", diagnostics_p, 0.0, 1.0, low_open=True)
    if parameterization not in ("z", "y"):
        raise ValueError(f"parameterization must be 'z' or 'y', got {parameterization!r}")
    if init not in ("zero", "unit"):
        raise ValueError(f"init must be 'zero' or 'unit', got {init!r}")
    index = _GenIndex(generate_mask)
    device = tokens.device
    batch, length = tokens.shape
    path = _generated_paths(snr_path, index, device)
    fixed = ~index.mask
    z = den.draft_embeds(tokens, fixed)  # prompt at its clean embedding, generated positions 0
    if z_init is not None:
        z[index.rows, index.cols] = z_init[index.rows, index.cols].float()
    steps = path.shape[1] - 1
    rng = RowRNG(generator, batch, device)
    trace = _Trace(diagnostics, index, diagnostics_p, diagnostics_positions)  # every generated position is evaluated
    emb = den.embeddings.to(device)
    nfe = 0
    last_argmax = None

    keep_logits = diagnostics or callback is not None
    chunk = max(1, _CHUNK_ELEMENTS // den.vocab_size)

    def evaluate(state):
        """(logits or None, x̂) at the generated positions. Without diagnostics or a callback the
        logits are never kept whole: the LM head, softmax and x̂ run over chunks of rows."""
        feats = den.features(state)[index.rows, index.cols]
        if keep_logits:
            logits = den.logits(feats).float()
            return logits, posterior_mean(logits, emb, posterior_top_k)
        parts = [posterior_mean(den.logits(part).float(), emb, posterior_top_k) for part in feats.split(chunk)]
        return None, torch.cat(parts) if parts else emb.new_zeros((0, emb.shape[1]))

    y = None  # the y-form state z/γ of the generated positions
    if init == "unit":
        eps = rng.ragged("normal", index.counts, (emb.shape[1],))
        y = eps / eps.norm(dim=-1, keepdim=True)
        z[index.rows, index.cols] = y * path[:, :1].float()
    z_gen = z[index.rows, index.cols]
    if parameterization == "y":
        if bool((path[:, 0] <= 0).any()):
            raise ValueError("snr_path must start above 0 for parameterization='y' (y = z/γ)")
        y = z_gen / path[:, :1].float() if y is None else y
    for k in _progress(range(steps), progress, "sde"):
        delta = (path[:, k + 1] - path[:, k]).clamp_min(0).float().unsqueeze(-1)  # (N, 1)
        if parameterization == "y":
            s_now, s_next = path[:, k].float().unsqueeze(-1), path[:, k + 1].float().unsqueeze(-1)
            d_w = rng.ragged("normal", index.counts, (emb.shape[1],)) * delta.sqrt()
            logits, x_hat = evaluate(z)
            nfe += 1
            f_now, g_now = (x_hat - y) / s_now, noise_scale / s_now
            if integrator == "heun":
                y_pred = y + f_now * delta + g_now * d_w
                z_pred = z.clone()
                z_pred[index.rows, index.cols] = s_next * y_pred
                _, x_hat_2 = evaluate(z_pred)
                nfe += 1
                f_next, g_next = (x_hat_2 - y_pred) / s_next, noise_scale / s_next
                y = y + 0.5 * (f_now + f_next) * delta + 0.5 * (g_now + g_next) * d_w
            else:
                y = y + f_now * delta + g_now * d_w
            z_gen = s_next * y
        else:
            noise = rng.ragged("normal", index.counts, (emb.shape[1],)) * (noise_scale * delta.sqrt())
            logits, x_hat = evaluate(z)
            nfe += 1
            if integrator == "heun":
                z_pred = z.clone()
                z_pred[index.rows, index.cols] = z_gen + x_hat * delta + noise
                _, x_hat_2 = evaluate(z_pred)
                nfe += 1
                z_gen = z_gen + 0.5 * (x_hat + x_hat_2) * delta + noise
            else:
                z_gen = z_gen + x_hat * delta + noise
        z = z.clone()
        z[index.rows, index.cols] = z_gen
        if diagnostics or callback is not None:
            current = logits.argmax(dim=-1)
            if diagnostics:
                changed = torch.ones_like(current, dtype=torch.bool) if last_argmax is None else current != last_argmax
                rewritten = None if last_argmax is None else changed
                trace.record(torch.softmax(logits, dim=-1), index.rows, changed=changed, rewritten=rewritten)
            last_argmax = current
            if callback is not None:
                draft = tokens.clone()
                draft[index.rows, index.cols] = current
                callback(k, draft, torch.zeros_like(index.mask), False)
    final_logits = den.logits(den.features(z)[index.rows, index.cols])
    nfe += 1
    out_tokens = tokens.clone()
    out_tokens[index.rows, index.cols] = final_logits.argmax(dim=-1)
    snr = torch.zeros(batch, length, dtype=torch.float64, device=device)
    snr[index.rows, index.cols] = path[:, -1]
    return SamplerOutput(out_tokens, trace.result(), nfe,
                         extra={"z": z, "final_logits": final_logits, "snr": snr})


# ============================================================================ masked diffusion


def conf_weights(conf: torch.Tensor, index: _GenIndex) -> torch.Tensor:
    """ReMDM-conf η^ℓ: softmax over each row's generated positions of conf (−inf at masks → 0)."""
    finite = torch.isfinite(conf)
    row_max = torch.full((index.batch,), -math.inf, device=conf.device)
    row_max = row_max.scatter_reduce(0, index.rows, torch.where(finite, conf, -math.inf), reduce="amax")
    shifted = torch.where(finite, conf - row_max[index.rows].clamp_min(-1e30), torch.full_like(conf, -math.inf))
    expo = torch.where(finite, shifted.exp(), torch.zeros_like(conf))
    total = torch.zeros(index.batch, device=conf.device).index_add_(0, index.rows, expo)
    return expo / total[index.rows].clamp_min(1e-30)


def _remdm_row_rates(mode: str, t: torch.Tensor, dt: torch.Tensor, eta: float, t_on: float, t_off: float,
                     alpha_on: float):
    """Per-row (σ, unmask probability) at grid times t (B,) float64, s = t − dt.

    α_t = 1 − t, except "loop" (official ReMDM-loop): phase 1 (t > t_on) α(t) = (1 − t)·α_on/(1 − t_on);
    phase 2 (t_off < t ≤ t_on) α frozen at α_on with σ = η; phase 3 (t ≤ t_off)
    α(t) = 1 − t·(1 − α_on)/t_off; α_s uses the formula of t's phase even when s crosses into the
    next phase (as the official code does). σ: "mdlm" 0; "cap" min(η, (1 − α_s)/α_t);
    "rescale" η·min(1, (1 − α_s)/α_t); "conf" σ_max = min(1, (1 − α_s)/α_t), which the per-token
    weights multiply (at α_t = 0 the code uses η for cap and 1 for rescale / conf). A masked
    position unmasks with probability (α_s − (1 − σ)α_t)/(1 − α_t) (for "conf" with σ = 0).
    Scalar readings of these formulas live in the tests' `oracles.py`."""
    if mode == "loop":
        s = t - dt
        p1, p3 = t > t_on, t <= t_off
        a_t = torch.where(p1, (1 - t) * alpha_on / max(1 - t_on, 1e-300),
                          torch.where(p3, 1 - t * (1 - alpha_on) / max(t_off, 1e-300), torch.full_like(t, alpha_on)))
        a_s = torch.where(p1, (1 - s) * alpha_on / max(1 - t_on, 1e-300),
                          torch.where(p3, 1 - s * (1 - alpha_on) / max(t_off, 1e-300), torch.full_like(t, alpha_on)))
        sigma = torch.where(~p1 & ~p3, torch.full_like(t, eta), torch.zeros_like(t))
        return sigma, (a_s - (1 - sigma) * a_t) / (1 - a_t)
    a_t, a_s = 1.0 - t, 1.0 - (t - dt)
    ratio = (1 - a_s) / a_t.clamp_min(1e-300)
    positive = a_t > 0
    if mode == "mdlm":
        sigma = torch.zeros_like(t)
    elif mode == "cap":
        sigma = torch.where(positive, ratio.clamp_max(eta), torch.full_like(t, eta))
    else:
        sigma_max = torch.where(positive, ratio.clamp_max(1.0), torch.ones_like(t))
        sigma = eta * sigma_max if mode == "rescale" else sigma_max
    unmask_sigma = torch.zeros_like(t) if mode == "conf" else sigma
    return sigma, (a_s - (1 - unmask_sigma) * a_t) / (1 - a_t)


def _check_remdm_args(mode: str, eta: Optional[float], steps: int, t_on: float, t_off: float, alpha_on: float,
                      eps: float) -> float:
    """Validate ReMDM's arguments; returns η (its default when None)."""
    if mode not in ("mdlm",) + REMDM_MODES:
        raise ValueError(f"remdm_mode must be one of {REMDM_MODES} (or 'mdlm'), got {mode!r}")
    if eta is None:
        eta = {"cap": eta_cap_default(steps), "loop": eta_cap_default(steps), "rescale": ETA_RESCALE_DEFAULT}.get(mode, 0.0)
    _check_num("eta", eta, 0.0, 1.0)
    if mode == "loop":
        if not 0.0 <= t_off < t_on <= 1.0:
            raise ValueError(f"need 0 <= t_off < t_on <= 1, got t_off={t_off}, t_on={t_on}")
        if not 0.0 < alpha_on < 1.0:
            raise ValueError(f"alpha_on must be in (0, 1), got {alpha_on}")
        if eta * alpha_on / (1 - alpha_on) > 1.0:
            raise ValueError(f"eta={eta} too large for alpha_on={alpha_on}: need eta <= (1 - alpha_on)/alpha_on")
    _check_num("eps", eps, 0.0, 1.0, low_open=True, high_open=True)
    return eta


def _start_times(t_start, batch: int, eps: float, device) -> torch.Tensor:
    """Per-row start times (B,) float64 in (eps, 1] from a float or a (B,) / (1,) tensor."""
    if isinstance(t_start, torch.Tensor):
        rows = t_start.to(device=device, dtype=torch.float64).reshape(-1)
        if rows.numel() == 1:
            rows = rows.expand(batch)
        if rows.numel() != batch:
            raise ValueError(f"t_start: got {rows.numel()} start times for a batch of {batch}")
    else:
        _check_num("t_start", t_start, 0.0, 1.0)
        rows = torch.full((batch,), float(t_start), dtype=torch.float64, device=device)
    if batch and not bool(((rows > eps) & (rows <= 1.0)).all()):
        raise ValueError(f"t_start must be in (eps={eps}, 1], got {rows.tolist()}")
    return rows


def _remdm_step_rates(mode, t_start_rows, steps, eps, eta, t_on, t_off, alpha_on, index: _GenIndex) -> Callable:
    """rates(i) → (σ, unmask probability) of step i: floats when every row shares one time grid,
    else (N,) tensors per generated position. All steps are computed up front, (steps, B)."""
    dt_rows = (t_start_rows - eps) / steps
    grid = t_start_rows.unsqueeze(0) - torch.arange(steps, dtype=torch.float64, device=t_start_rows.device).unsqueeze(1) * dt_rows
    sigma, unmask = _remdm_row_rates(mode, grid, dt_rows.unsqueeze(0), eta, t_on, t_off, alpha_on)
    if index.batch > 0 and bool((t_start_rows == t_start_rows[0]).all()):
        sigma, unmask = sigma[:, 0].tolist(), unmask[:, 0].tolist()  # scalars: no per-position gather
        return lambda i: (sigma[i], unmask[i])
    return lambda i: (sigma[i][index.rows], unmask[i][index.rows])


def remdm(
    denoiser,
    tokens: torch.Tensor,
    generate_mask: torch.Tensor,
    *,
    steps: int,
    mode: str = "loop",
    eta: Optional[float] = None,
    t_on: float = 0.55,
    t_off: float = 0.05,
    alpha_on: float = 0.9,
    temperature: float = 1.0,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    eps: float = 1e-5,
    t_start: Union[float, torch.Tensor] = 1.0,
    masked: Optional[torch.Tensor] = None,
    conf_init: Optional[torch.Tensor] = None,
    final_greedy: bool = True,
    generator: GeneratorArg = None,
    diagnostics: bool = False,
    diagnostics_p: float = 0.9,
    diagnostics_positions: str = "evaluated",
    callback: Optional[Callable] = None,
    progress: bool = False,
) -> SamplerOutput:
    """Masked diffusion with ReMDM remasking (mode "mdlm" = plain ancestral MDLM, σ = 0).

    Time grid t_i = t_start − i·dt, dt = (t_start − eps)/steps (i = 0…steps), s = t − dt,
    α_t = 1 − t (loop: see [`_remdm_row_rates`]); `t_start` may differ per row. Per step
    and generated position: a visible token is remasked with probability σ (per token for
    "conf"); a masked one is unmasked with probability (α_s − (1 − σ)α_t)/(1 − α_t) and drawn from
    p_θ(· | z) (temperature, top-k, then ReMDM top-p; one float64 uniform per position for the
    Bernoulli and one for the draw). The network runs only when some position unmasks, and the
    LM head only on those positions. After the grid, positions still masked take the argmax
    (no top-p) when `final_greedy`. NFE ≤ steps + 1.

    Args:
        steps: T.
        mode: "loop" (default: the DSL paper's ReMDM rows, Tables 4–5, use ReMDM-loop with
            η_cap(T)), "cap", "rescale", "conf" (the official ReMDM modes) or "mdlm".
        eta: η; None → η_cap(T) of the paper's Eq. 24 for cap and loop, 0.015 for rescale;
            unused by conf.
        t_on, t_off, alpha_on: loop phases (official ReMDM: 0.55, 0.05, 0.9).
        t_start: start time, a float or a (B,) tensor of per-row start times in (eps, 1]; a
            partly masked draft with masked fraction m matches t_start = m (α_t = 1 − t is the
            expected visible fraction), as the hybrid sampler uses it.
        masked: (B, L) bool initial mask state of generated positions (default: all masked);
            unmasked generated positions start as visible draft tokens.
        conf_init: (B, L) conf (= −probability) of initially visible draft tokens for mode "conf"
            (default −1: treated as fully confident).
    Returns:
        [`SamplerOutput`]; `extra["masked"]` the final mask state.
    """
    den = as_denoiser(denoiser)
    _check_inputs(tokens, generate_mask)
    _check_steps(steps)
    eta = _check_remdm_args(mode, eta, steps, t_on, t_off, alpha_on, eps)
    _check_draw_args(temperature, top_p, top_k, diagnostics_p, positive_temperature=True)
    state = _Draft(den, tokens, generate_mask, masked)
    index, batch, device = state.index, tokens.shape[0], tokens.device
    t_start_rows = _start_times(t_start, batch, eps, device)
    rng = RowRNG(generator, batch, device)
    trace = _Trace(diagnostics, index, diagnostics_p, diagnostics_positions, state.visible_tokens())
    conf = torch.full((index.n,), -math.inf, device=device)  # ReMDM-conf's −p of each visible token
    if mode == "conf":
        initial = torch.full_like(conf, -1.0) if conf_init is None else conf_init[index.rows, index.cols].float()
        conf = torch.where(state.is_masked, conf, initial)
    rates = _remdm_step_rates(mode, t_start_rows, steps, eps, eta, t_on, t_off, alpha_on, index)

    def to_probs(logits):
        return token_probs(logits, temperature, top_k, top_p)

    for i in _progress(range(steps), progress, f"remdm-{mode}"):
        sigma, p_unmask = rates(i)
        u = rng.ragged("uniform", index.counts, (2,))  # float64: [Bernoulli, categorical]
        if mode == "conf":
            sigma = conf_weights(conf, index).double() * sigma  # 0 at masked positions
        visible_before = ~state.is_masked
        remask = visible_before & (u[:, 0] < sigma)
        unmask = state.is_masked & (u[:, 0] < p_unmask)
        # The one host sync of a step: which positions unmask (the LM head and the draw run on
        # those rows only). Remasking needs no sync (see `_Draft.remask`).
        sel = unmask.nonzero(as_tuple=True)[0]
        n_unmask = sel.numel()
        probs, drawn = None, None
        if n_unmask:
            probs = to_probs(state.logits(sel))
            drawn = sample_from_probs(probs, u[sel, 1])
            if mode == "conf":
                conf[sel] = -probs.gather(-1, drawn.unsqueeze(-1)).squeeze(-1).float()
        if diagnostics:
            diag_probs, diag_rows = state.diagnostic_probs(trace, probs, sel, to_probs)
            trace.record(diag_probs, diag_rows, remasked=remask, visible_before=visible_before,
                         changed=remask | unmask, rewritten=trace.rewritten(sel, drawn) if n_unmask else None)
        if n_unmask:
            state.commit(sel, drawn)
        if mode != "mdlm":
            state.remask(remask)
            if mode == "conf":
                conf = conf.masked_fill(remask, -math.inf)
        state.emit(callback, i, False)
    if final_greedy:
        remaining = state.is_masked.nonzero(as_tuple=True)[0]
        if remaining.numel():
            state.commit(remaining, state.logits(remaining).argmax(dim=-1))
    return state.output(trace)


def mdlm(denoiser, tokens, generate_mask, *, steps: int, temperature: float = 1.0, top_p: Optional[float] = None,
         top_k: Optional[int] = None, eps: float = 1e-5, masked=None, generator: GeneratorArg = None,
         diagnostics: bool = False, diagnostics_p: float = 0.9, diagnostics_positions: str = "evaluated",
         callback=None, progress=False) -> SamplerOutput:
    """Ancestral MDLM sampling (α_t = 1 − t, unmask probability (t − s)/t, visible tokens copied,
    final greedy step); [`remdm`] with σ = 0."""
    return remdm(denoiser, tokens, generate_mask, steps=steps, mode="mdlm", eta=0.0, temperature=temperature,
                 top_p=top_p, top_k=top_k, eps=eps, masked=masked, generator=generator, diagnostics=diagnostics,
                 diagnostics_p=diagnostics_p, diagnostics_positions=diagnostics_positions, callback=callback,
                 progress=progress)


# ============================================================================ LLaDA low-confidence


def transfer_schedule(masked_count: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's per-step quota: k_i = m // s + [i < m mod s], shape (B, s) for m (B,)."""
    base = masked_count // steps
    remainder = masked_count % steps
    i = torch.arange(steps, device=masked_count.device)
    return base.unsqueeze(-1) + (i.unsqueeze(0) < remainder.unsqueeze(-1)).long()


def _block_layout(index: _GenIndex, block_length: Optional[int], steps: int):
    """(G, block_length, number of blocks, steps per block) of LLaDA's semi-AR schedule."""
    if len(set(index.counts)) > 1:
        raise ValueError("low_confidence needs the same number of generated positions in every row")
    gen_len = index.counts[0] if index.counts else 0
    block_length = gen_len if block_length is None else block_length
    if block_length < 1 or gen_len % block_length:
        raise ValueError(f"gen_length={gen_len} must be a multiple of block_length={block_length}")
    num_blocks = gen_len // block_length
    if steps % num_blocks:
        raise ValueError(f"steps={steps} must be a multiple of the number of blocks ({num_blocks})")
    return gen_len, block_length, num_blocks, steps // num_blocks


def _most_confident(conf: torch.Tensor, sel_b: torch.Tensor, sel_j: torch.Tensor, quota: torch.Tensor,
                    width: int) -> torch.Tensor:
    """(n,) bool over the candidates (sel_b, sel_j): each row's `quota` (B,) most confident."""
    table = torch.full((quota.shape[0], width), -math.inf, dtype=torch.float64, device=conf.device)
    table[sel_b, sel_j] = conf.double()
    rank = table.argsort(dim=1, descending=True).argsort(dim=1)
    return rank[sel_b, sel_j] < quota[sel_b]


def _eos_in_every_row(state: _Draft, gen_len: int, upto: int, eos_ids: torch.Tensor,
                      skip_leading_eos: Optional[torch.Tensor]) -> bool:
    """True when every row has a committed EOS among its first `upto` generated positions."""
    batch = state.index.batch
    flat, masked = state.flat.view(batch, gen_len)[:, :upto], state.is_masked.view(batch, gen_len)[:, :upto]
    hit = torch.isin(flat, eos_ids) & ~masked
    if skip_leading_eos is not None:
        hit[:, 0] &= ~skip_leading_eos.to(device=hit.device, dtype=torch.bool)
    return bool(hit.any(dim=1).all())


def low_confidence(
    denoiser,
    tokens: torch.Tensor,
    generate_mask: torch.Tensor,
    *,
    steps: int,
    block_length: Optional[int] = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    masked: Optional[torch.Tensor] = None,
    eos_token_id: Optional[Union[int, Sequence[int]]] = None,
    stop_at_eos: bool = False,
    skip_leading_eos: Optional[torch.Tensor] = None,
    generator: GeneratorArg = None,
    diagnostics: bool = False,
    diagnostics_p: float = 0.9,
    diagnostics_positions: str = "evaluated",
    callback: Optional[Callable] = None,
    progress: bool = False,
) -> SamplerOutput:
    """LLaDA's semi-autoregressive low-confidence remasking decoder.

    Every row must have the same number G of generated positions (its generation region, read
    left to right). G is split into blocks of `block_length`; each block gets `steps / blocks`
    steps. Per step: x0 = Gumbel-max sample of softmax(logits / T) in float64 (argmax at T = 0)
    at the masked positions of the current block; conf = softmax(logits)[x0] (or U(0,1) for
    `remasking="random"`); the k_i most confident are committed, k_i = m // s + [i < m mod s]
    with m the block's masked count. Committed tokens are never revised. With `cfg_scale` w > 0
    an unconditional pass (fixed positions masked) gives logits u + (w + 1)(c − u).
    NFE = steps (2·steps with CFG), fewer when `stop_at_eos` ends early.

    Randomness: per step, each row draws float64 uniforms only for its still-masked positions
    of the current block (V Gumbel uniforms each when T > 0, one confidence each for
    `remasking="random"`), so a row's draws do not depend on the other rows.

    With `stop_at_eos`, decoding stops after a block once every row has an EOS in its decoded
    part; `skip_leading_eos` (B,) bool marks rows (unprompted MDLM-style rows, whose first token
    is BOS = EOS) where an EOS at the first generated position does not count.
    """
    den = as_denoiser(denoiser)
    _check_inputs(tokens, generate_mask)
    _check_steps(steps)
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking must be 'low_confidence' or 'random', got {remasking!r}")
    _check_draw_args(temperature, top_p, top_k, diagnostics_p, positive_temperature=False)
    _check_num("cfg_scale", cfg_scale, 0.0)
    _check_int("block_length", block_length, 1, optional=True)
    state = _Draft(den, tokens, generate_mask, masked, cfg_scale)
    index, batch, device = state.index, tokens.shape[0], tokens.device
    gen_len, block_length, num_blocks, steps_per_block = _block_layout(index, block_length, steps)
    rng = RowRNG(generator, batch, device)
    trace = _Trace(diagnostics, index, diagnostics_p, diagnostics_positions)
    eos_ids = None
    if eos_token_id is not None:
        eos_ids = torch.as_tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)

    def filtered(logits):  # float64 logits, −inf outside top-k / top-p
        logits = logits.double()
        if top_k is not None or (top_p is not None and top_p < 1.0):
            logits = logits.masked_fill(token_probs(logits, 1.0, top_k, top_p) <= 0, -math.inf)
        return logits

    step_no = 0
    for block in range(num_blocks):
        lo, hi = block * block_length, (block + 1) * block_length
        block_masked = state.is_masked.view(batch, gen_len)[:, lo:hi].sum(dim=1)
        quota = transfer_schedule(block_masked, steps_per_block)
        # One host sync per block: every step commits exactly quota[:, i] positions per row (a
        # row always has that many candidates), so each step's candidate and commit counts are
        # known on the host and the steps run without syncing (fixed-size nonzero_static).
        remaining, quota_host = block_masked.tolist(), quota.tolist()
        for i in _progress(range(steps_per_block), progress, f"block {block + 1}/{num_blocks}"):
            counts = list(remaining)  # candidates per row: the block's still-masked positions
            candidates = torch.nonzero_static(state.is_masked.view(batch, gen_len)[:, lo:hi], size=sum(counts))
            sel_b, sel_j = candidates[:, 0], candidates[:, 1]
            sel = sel_b * gen_len + lo + sel_j  # flat, row-major like rng.ragged's rows
            logits = filtered(state.logits(sel))
            if temperature > 0:
                gumbel = -torch.log(-torch.log(rng.ragged("uniform", counts, (logits.shape[-1],), torch.float64)))
                x0 = (logits / temperature + gumbel).argmax(dim=-1)
            else:
                x0 = logits.argmax(dim=-1)
            probs = torch.softmax(logits, dim=-1)
            if remasking == "low_confidence":
                conf = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            else:
                conf = rng.ragged("uniform", counts, (), torch.float64)
            step_quota = [q[i] for q in quota_host]
            commit = _most_confident(conf, sel_b, sel_j, quota[:, i], block_length)
            commit = torch.nonzero_static(commit, size=sum(step_quota))[:, 0]  # = commit.nonzero(), no sync
            remaining = [r - q for r, q in zip(remaining, step_quota)]
            if diagnostics:
                changed = torch.zeros(index.n, dtype=torch.bool, device=device)
                changed[sel[commit]] = True
                trace.record(*state.diagnostic_probs(trace, probs, sel, lambda x: torch.softmax(filtered(x), -1)),
                             changed=changed)
            state.commit(sel[commit], x0[commit])
            state.emit(callback, step_no, True)
            step_no += 1
        if stop_at_eos and eos_ids is not None and block < num_blocks - 1:
            if _eos_in_every_row(state, gen_len, hi, eos_ids, skip_leading_eos):
                break
    return state.output(trace)


# ============================================================================ random-order AR


def _visit_rank(order: str, rng: RowRNG, index: _GenIndex) -> torch.Tensor:
    """(N,) the step rank of each generated position within its row: a uniformly random
    permutation per row (`order="random"`), or left to right."""
    device = index.rows.device
    starts = torch.zeros(index.batch, dtype=torch.long, device=device)
    starts[1:] = torch.as_tensor(index.counts, device=device).cumsum(0)[:-1]
    position_in_row = torch.arange(index.n, device=device) - starts[index.rows]
    if order != "random":
        return position_in_row
    keys = rng.ragged("uniform", index.counts, dtype=torch.float64) + index.rows.double()
    sorted_flat = keys.argsort()
    rank = torch.empty_like(position_in_row)
    rank[sorted_flat] = torch.arange(index.n, device=device) - starts[index.rows[sorted_flat]]
    return rank


def roar(
    denoiser,
    tokens: torch.Tensor,
    generate_mask: torch.Tensor,
    *,
    tokens_per_step: int = 1,
    order: str = "random",
    temperature: float = 1.0,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    generator: GeneratorArg = None,
    diagnostics: bool = False,
    diagnostics_p: float = 0.9,
    diagnostics_positions: str = "evaluated",
    callback: Optional[Callable] = None,
    progress: bool = False,
) -> SamplerOutput:
    """Random-order autoregressive decoding (the authors' `sample_roar`): every row visits its
    generated positions in a random order (or left to right), `tokens_per_step` at a time; each
    step runs the denoiser on the current draft (masked = z = 0, committed = clean), draws the
    visited positions from p_θ (float64 inverse CDF) and commits them. NFE = ⌈G / k⌉."""
    den = as_denoiser(denoiser)
    _check_inputs(tokens, generate_mask)
    _check_int("tokens_per_step", tokens_per_step, 1)
    if order not in ("random", "left_to_right"):
        raise ValueError(f"order must be 'random' or 'left_to_right', got {order!r}")
    _check_draw_args(temperature, top_p, top_k, diagnostics_p, positive_temperature=True)
    state = _Draft(den, tokens, generate_mask)
    index = state.index
    rng = RowRNG(generator, index.batch, tokens.device)
    trace = _Trace(diagnostics, index, diagnostics_p, diagnostics_positions)
    rank = _visit_rank(order, rng, index)
    uniforms = rng.ragged("uniform", index.counts, (), torch.float64)

    def to_probs(logits):
        return token_probs(logits, temperature, top_k, top_p)

    num_steps = math.ceil(max(index.counts, default=0) / tokens_per_step)
    for i in _progress(range(num_steps), progress, "roar"):
        now = (rank >= i * tokens_per_step) & (rank < (i + 1) * tokens_per_step)
        visits = sum(min(tokens_per_step, max(0, n - i * tokens_per_step)) for n in index.counts)
        sel = torch.nonzero_static(now, size=visits)[:, 0]  # = now.nonzero(): the count is known, no sync
        probs = to_probs(state.logits(sel))
        drawn = sample_from_probs(probs, uniforms[sel])
        if diagnostics:
            trace.record(*state.diagnostic_probs(trace, probs, sel, to_probs), changed=now)
        state.commit(sel, drawn)
        state.emit(callback, i, True)
    return state.output(trace, rank=rank)


# ============================================================================ hybrid


def hybrid(
    denoiser,
    tokens: torch.Tensor,
    generate_mask: torch.Tensor,
    *,
    sde_steps: int,
    finish_steps: int,
    switch_snr: float,
    snr_min: float = 0.01,
    schedule: str = "geometric",
    integrator: str = "euler",
    noise_scale: float = 1.0,
    posterior_top_k: Optional[int] = None,
    threshold: float = 0.9,
    finish: str = "low_confidence",
    finish_kwargs: Optional[dict] = None,
    generator: GeneratorArg = None,
    diagnostics: bool = False,
    diagnostics_p: float = 0.9,
    diagnostics_positions: str = "evaluated",
    callback: Optional[Callable] = None,
    progress: bool = False,
) -> SamplerOutput:
    """Continuous then discrete: the SDE up to `switch_snr`, a committed draft, a discrete finish.

    1. SDE (see [`sde`]) from z = 0 at γ_0 = `snr_min` to `switch_snr` in `sde_steps` steps on
       the `schedule` grid, then its final decode at the switch state gives the draft (argmax
       of p_θ) and conf = max p_θ.
    2. Draft tokens with conf > `threshold` (strict, as DSL-LLaDA's eval_hybrid_sde_remask)
       are kept; the others are masked.
    3. `finish_steps` steps of `low_confidence` (DSL-LLaDA's hybrid; `finish_kwargs` may hold
       temperature, remasking, cfg_scale, block_length, top_p, top_k, eos_token_id,
       stop_at_eos, skip_leading_eos) or `remdm` (the kept draft tokens as visible tokens
       ReMDM may remask; `finish_kwargs` such as mode, eta, top_p). The ReMDM finish starts
       each row at t_start = that row's masked fraction of its generated positions (at least
       2·eps), so its α_t = 1 − t schedule matches the draft instead of restarting at t = 1.

    NFE = (1 or 2)·sde_steps (Euler or Heun) + 1 (draft decode) + the finisher's NFE
    (low_confidence: finish_steps, ×2 with CFG; remdm: at most finish_steps + 1).
    `DSLGenerationConfig` splits a budget of `steps` so that the total is steps + 1.
    """
    if finish not in ("low_confidence", "remdm"):
        raise ValueError(f"hybrid finish must be 'low_confidence' or 'remdm', got {finish!r}")
    _check_num("threshold", threshold, 0.0, 1.0)
    _check_steps(sde_steps, "sde_steps")
    _check_steps(finish_steps, "finish_steps")
    _check_num("snr_min", snr_min, 0.0, low_open=True)
    _check_num("switch_snr", switch_snr, snr_min, low_open=True)
    kwargs = dict(finish_kwargs or {})
    reserved = {"steps", "masked", "generator", "diagnostics", "diagnostics_p", "diagnostics_positions", "callback",
                "progress", "conf_init", "t_start"} & set(kwargs)
    if reserved:
        raise ValueError(f"finish_kwargs must not set {sorted(reserved)}: hybrid sets them")
    den = as_denoiser(denoiser)
    path = snr_schedule(schedule, sde_steps, snr_min, switch_snr)
    first = sde(den, tokens, generate_mask, path, integrator=integrator, noise_scale=noise_scale,
                posterior_top_k=posterior_top_k, generator=generator, diagnostics=diagnostics,
                diagnostics_p=diagnostics_p, diagnostics_positions=diagnostics_positions, callback=callback,
                progress=progress)
    index = _GenIndex(generate_mask)
    probs = torch.softmax(first.extra["final_logits"].float(), dim=-1)
    conf, draft_flat = probs.max(dim=-1)
    masked_flat = ~(conf > threshold)
    masked = torch.zeros_like(index.mask)
    masked[index.rows, index.cols] = masked_flat
    draft = first.tokens
    common = dict(generator=generator, diagnostics=diagnostics, diagnostics_p=diagnostics_p,
                  diagnostics_positions=diagnostics_positions, callback=callback, progress=progress)
    if finish == "low_confidence":
        lc_kwargs = dict(block_length=None)
        lc_kwargs.update(kwargs)
        second = low_confidence(den, draft, generate_mask, steps=finish_steps, masked=masked, **lc_kwargs, **common)
    else:
        conf_init = torch.zeros(tokens.shape, device=tokens.device)
        conf_init[index.rows, index.cols] = -conf
        eps = kwargs.get("eps", 1e-5)
        masked_count = torch.zeros(index.batch, device=tokens.device).index_add_(0, index.rows, masked_flat.float())
        t_start = (masked_count.double() / index.row_count.double()).clamp(min(1.0, 2 * eps), 1.0)
        second = remdm(den, draft, generate_mask, steps=finish_steps, masked=masked, conf_init=conf_init,
                       t_start=t_start, **kwargs, **common)
    extra = {"draft": draft, "draft_masked": masked}
    if finish == "remdm":
        extra["t_start"] = t_start
    return SamplerOutput(second.tokens, merge_diagnostics(first.diagnostics, second.diagnostics),
                         first.nfe + second.nfe, extra=extra)


# ============================================================================ error correction


def correct(
    denoiser,
    tokens: torch.Tensor,
    suspect_mask: torch.Tensor,
    *,
    suspect_snr: float = 5.0,
    steps: int = 1,
    threshold: float = 0.0,
    diagnostics: bool = False,
    diagnostics_p: float = 0.9,
    diagnostics_positions: str = "evaluated",
    callback: Optional[Callable] = None,
    progress: bool = False,
) -> SamplerOutput:
    """Error correction (DSL-LLaDA): every suspect token is visible but at a finite SNR,
    z = suspect_snr · E[t], so context can outvote it; other positions are clean. Each round
    replaces a suspect token by the denoiser's argmax where p(argmax) − p(current) > `threshold`;
    rounds stop early when nothing changes. Deterministic.

    Returns:
        [`SamplerOutput`] with the corrected `tokens` and `changed` (B, L) bool, the positions
        whose token differs from the input.
    """
    den = as_denoiser(denoiser)
    _check_inputs(tokens, suspect_mask)
    _check_steps(steps)
    _check_num("suspect_snr", suspect_snr, 0.0, low_open=True)
    _check_num("threshold", threshold, 0.0, 1.0)
    _check_num("diagnostics_p", diagnostics_p, 0.0, 1.0, low_open=True)
    index = _GenIndex(suspect_mask)
    trace = _Trace(diagnostics, index, diagnostics_p, diagnostics_positions)  # every suspect position is evaluated
    current = tokens.clone()
    fixed = ~index.mask
    nfe = 0
    for i in _progress(range(steps), progress, "correct"):
        z = den.draft_embeds(current, fixed) + den.draft_embeds(current, index.mask, suspect_snr)
        logits = den.logits(den.features(z)[index.rows, index.cols])
        nfe += 1
        probs = torch.softmax(logits.float(), dim=-1)
        flat = current[index.rows, index.cols]
        p_best, best = probs.max(dim=-1)
        p_cur = probs.gather(-1, flat.clamp(0, probs.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
        change = (best != flat) & (p_best - p_cur > threshold)
        if diagnostics:
            trace.record(probs, index.rows, changed=change, rewritten=change)
        current = current.clone()
        current[index.rows, index.cols] = torch.where(change, best, flat)
        if callback is not None:
            callback(i, current.clone(), torch.zeros_like(index.mask), False)
        if not bool(change.any()):
            break
    changed = (current != tokens) & index.mask
    return SamplerOutput(current, trace.result(), nfe, changed=changed)
