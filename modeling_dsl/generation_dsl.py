"""Generation for DSL models: `DSLGenerationConfig` and `DSLGenerationMixin.generate()`.

Follows the DiffusionGemma pattern of transformers 5.x: an own mixin (its name ends in
`GenerationMixin`, so `can_generate()` is True without HF's autoregressive machinery) with its own
`adjust_generation_fn`, so `generation_config.json` round-trips through remote code.

Two tables drive everything (add a sampler = one row in `STRATEGIES`, new settings = rows in
`FIELDS`):
    FIELDS      every generation setting: default, type and range (→ validation), one help text
                (→ the class docstring and the flags of scripts/generate.py).
    STRATEGIES  strategy name → the sampler function, the config fields it reads and the keyword
                each one becomes, its own defaults for fields left at None, and its cross-field
                checks (→ validation, unused-argument warnings and dispatch in generate()).

Layout used inside `generate()`: row r is `[prompt_r | G generated slots | padding]` (right
padding, attention mask 0 on the padding), so every row's prompt and generation keep the
positions they would have alone. The returned `sequences` are left-padded to the longest prompt:
`sequences[:, P_max:]` is the generated part of every row.
"""

import copy
import logging
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from transformers import GenerationConfig
from transformers.utils import ModelOutput

from .noise_dsl import snr_schedule
from .sampling_dsl import REMDM_MODES, Denoiser, correct, hybrid, low_confidence, mdlm, remdm, roar, sde

logger = logging.getLogger(__name__)

# gen_length None and max_new_tokens None: G = 128, the generation length of DSL-LLaDA's
# inference.py (llada_dsl.md §5.5) and of its XSum runs (§6).
DEFAULT_GEN_LENGTH = 128


# ============================================================================ strategies


@dataclass(frozen=True)
class Strategy:
    """One row of the strategy table.

    sampler: the `sampling_dsl` function generate() calls.
    kwargs: config field → the sampler keyword it becomes (the field's value, or `defaults[field]`
        when the value is None).
    derived: config fields read only by `derive(config, run)`, which returns more keywords.
    defaults: this strategy's value of a field left at None.
    ignores: config → fields of `kwargs` these settings ignore (e.g. remdm_mode="conf" has no η).
    check: (config, steps) → None, raises ValueError; cross-field rules, run by validate() only for
        the strategy in use (`steps` = the steps this sampler gets).
    finish: config field naming a second strategy this one runs (hybrid); its fields, checks and
        keywords (as `finish_kwargs`) join this one's.
    generates: writes new tokens after a prompt (reads GENERATION_FIELDS); False for `correct`.
    beta_scale: the β_inf multiplier this strategy decodes with when the config leaves `beta` and
        `beta_scale` at their defaults (dsl_llada_sde: 2).
    """

    sampler: Callable
    kwargs: Dict[str, str] = field(default_factory=dict)
    derived: Tuple[str, ...] = ()
    derive: Optional[Callable] = None
    defaults: Dict[str, Any] = field(default_factory=dict)
    ignores: Optional[Callable] = None
    check: Optional[Callable] = None
    finish: Optional[str] = None
    generates: bool = True
    beta_scale: Optional[float] = None


@dataclass
class RunInfo:
    """What `derive` may read besides the config: the model's γ_max, G, the EOS ids and the rows
    (unprompted) whose first generated EOS is a BOS."""

    snr_max: float
    gen_length: int = 0
    eos: List[int] = field(default_factory=list)
    skip_first: Optional[torch.Tensor] = None


def _snr_max(config, run: RunInfo) -> float:
    snr_max = config.snr_max if config.snr_max is not None else float(run.snr_max)
    if config.snr_min >= snr_max:
        raise ValueError(f"snr_min={config.snr_min} must be smaller than snr_max={snr_max}")
    return snr_max


def _sde_path(config, run):
    return dict(snr_path=snr_schedule(config.snr_schedule, config.steps, config.snr_min, _snr_max(config, run)))


# DSL-LLaDA's summarization SDE (llada_dsl.md §5.5, eval_summarization): η by NFE = 2S.
DSL_LLADA_ETA = ((8, 0.1), (16, 0.05), (32, 0.01))
DSL_LLADA_ETA_ELSE = 0.005
DSL_LLADA_SNR_MIN, DSL_LLADA_SNR_MAX = 0.01, 100.0  # s_min → s_max = 0.01 → 100 (§5.5)


def dsl_llada_eta(nfe: int) -> float:
    """DSL-LLaDA's adaptive η: NFE ≤ 8: 0.1, ≤ 16: 0.05, ≤ 32: 0.01, else 0.005 (§5.5)."""
    return next((eta for bound, eta in DSL_LLADA_ETA if nfe <= bound), DSL_LLADA_ETA_ELSE)


def _dsl_llada_sde(config, run):
    return dict(snr_path=snr_schedule("sensitive", config.steps, DSL_LLADA_SNR_MIN, DSL_LLADA_SNR_MAX),
                integrator="heun",
                noise_scale=dsl_llada_eta(2 * config.steps), posterior_top_k=512, parameterization="y",
                init="unit")


def _check_sensitive_steps(config, steps):
    if steps < 2:
        raise ValueError(f"steps must be >= 2 for strategy={config.strategy!r} (the sensitive schedule), got {steps}")


def _hybrid_phases(config, run):
    snr_max = _snr_max(config, run)
    sde_steps, finish_steps = config.hybrid_step_split()
    switch = config.switch_snr if config.switch_snr is not None else snr_max
    if switch <= config.snr_min:
        raise ValueError(f"switch_snr={switch} must be greater than snr_min={config.snr_min}")
    finish_kwargs = sampler_kwargs(config.hybrid_finish, config, run)
    del finish_kwargs["steps"]  # hybrid gives the finish its finish_steps
    return dict(sde_steps=sde_steps, finish_steps=finish_steps, switch_snr=switch, finish_kwargs=finish_kwargs)


def _eos_kwargs(config, run):
    return dict(eos_token_id=run.eos or None, skip_leading_eos=run.skip_first)


def _roar_step(config, run):
    return dict(tokens_per_step=config.roar_tokens_per_step or max(1, math.ceil(run.gen_length / config.steps)))


def _remdm_ignores(config):
    loop = {"t_on", "t_off", "alpha_on"}
    return {"conf": loop | {"eta"}, "loop": set()}.get(config.remdm_mode, loop)


def _positive_temperature(config, steps):
    if config.temperature == 0:
        raise ValueError(f"temperature must be > 0 for strategy={config.strategy!r}, got 0")


def _check_remdm(config, steps):
    _positive_temperature(config, steps)
    if config.remdm_mode == "loop" and config.t_off >= config.t_on:
        raise ValueError(f"t_off must be smaller than t_on={config.t_on}, got {config.t_off!r}")


def _check_blocks(config, steps):
    gen_length = config.gen_length if config.gen_length is not None else config.max_new_tokens
    if gen_length is None or config.block_length is None:
        return
    if gen_length % config.block_length:
        raise ValueError(f"block_length={config.block_length} must divide gen_length={gen_length} "
                         "(gen_length % block_length != 0)")
    blocks = gen_length // config.block_length
    if steps % blocks:
        what = "steps" if config.strategy == "low_confidence" else "the finish's steps (steps - SDE cost)"
        raise ValueError(f"steps: {what} = {steps} must be a multiple of the number of blocks "
                         f"gen_length // block_length = {blocks}")


def _check_hybrid(config, steps):
    sde_steps, finish_steps = config.hybrid_step_split()
    if finish_steps < 1:
        cost = "" if config.integrator == "euler" else " (Heun: 2 evaluations per SDE step)"
        raise ValueError(f"switch_steps={sde_steps} leaves no discrete steps{cost}: the SDE phase costs "
                         f"{config.steps - finish_steps} of steps={config.steps}")
    finish = STRATEGIES[config.hybrid_finish]
    if finish.check is not None:
        finish.check(config, finish_steps)


# Read by every strategy: never "unused".
UNIVERSAL = ("strategy", "steps", "seed", "output_diagnostics", "diagnostics_positions", "visible_snr", "beta",
             "beta_scale", "token_inputs", "suppress_token_ids", "compile")
# Read by generate() itself for every strategy that writes new tokens.
GENERATION_FIELDS = ("gen_length", "max_new_tokens", "truncate_at_eos")

DRAW = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k"}
SDE = {"integrator": "integrator", "noise_scale": "noise_scale", "posterior_top_k": "posterior_top_k"}
# Masked diffusion draws at temperature 1 with nucleus 0.9: every row of the DSL paper's tables
# and the ReMDM protocol (mdlm_remdm.md §4) use top-p 0.9.
MASKED_DEFAULTS = dict(temperature=1.0, top_p=0.9)

STRATEGIES: Dict[str, Strategy] = {
    "sde": Strategy(sde, kwargs=SDE, derived=("snr_schedule", "snr_min", "snr_max"), derive=_sde_path),
    "mdlm": Strategy(mdlm, kwargs={"steps": "steps", **DRAW}, defaults=MASKED_DEFAULTS,
                     check=_positive_temperature),
    "remdm": Strategy(remdm, kwargs={"steps": "steps", **DRAW, "remdm_mode": "mode", "eta": "eta", "t_on": "t_on",
                                     "t_off": "t_off", "alpha_on": "alpha_on"},
                      defaults=MASKED_DEFAULTS, ignores=_remdm_ignores, check=_check_remdm),
    "hybrid": Strategy(hybrid, kwargs={**SDE, "snr_min": "snr_min", "snr_schedule": "schedule",
                                       "hybrid_threshold": "threshold", "hybrid_finish": "finish"},
                       derived=("snr_max", "switch_snr", "switch_steps"), derive=_hybrid_phases,
                       check=_check_hybrid, finish="hybrid_finish"),
    # LLaDA decodes greedily (temperature 0) without nucleus; DSL-LLaDA's remask runs do the same.
    "low_confidence": Strategy(low_confidence, kwargs={"steps": "steps", **DRAW, "block_length": "block_length",
                                                       "remasking": "remasking", "cfg_scale": "cfg_scale",
                                                       "stop_at_eos": "stop_at_eos"},
                               derive=_eos_kwargs, defaults=dict(temperature=0.0), check=_check_blocks),
    # The authors' sample_roar draws at temperature 1 without nucleus.
    "roar": Strategy(roar, kwargs={**DRAW, "roar_order": "order"}, derived=("roar_tokens_per_step",),
                     derive=_roar_step, defaults=dict(temperature=1.0), check=_positive_temperature),
    # DSL-LLaDA's summarization SDE exactly (llada_dsl.md §5.5): S = steps = NFE // 2 Heun steps in
    # y = z/γ form on the sensitive grid 0.01 → 100, η by NFE, β_inf = 2·β, top-512 x̂, unit init.
    "dsl_llada_sde": Strategy(sde, derive=_dsl_llada_sde,
                              check=_check_sensitive_steps, beta_scale=2.0),
    "correct": Strategy(correct, kwargs={"steps": "steps", "correct_snr": "suspect_snr",
                                         "correct_threshold": "threshold"}, generates=False),
}


def sampler_kwargs(name: str, config, run: RunInfo) -> dict:
    """The keywords strategy `name` passes its sampler for `config` (per-strategy defaults applied)."""
    row = STRATEGIES[name]
    kwargs = {}
    for key, keyword in row.kwargs.items():
        value = getattr(config, key)
        kwargs[keyword] = row.defaults.get(key) if value is None else value
    if row.derive is not None:
        kwargs.update(row.derive(config, run))
    return kwargs


def strategy_fields(name: str, config) -> set:
    """The config fields strategy `name` reads at `config`'s settings (its finish's included)."""
    row = STRATEGIES[name]
    fields = set(UNIVERSAL) | set(row.kwargs) | set(row.derived)
    if row.ignores is not None:
        fields -= row.ignores(config)
    if row.generates:
        fields |= set(GENERATION_FIELDS)
    if row.finish is not None:
        fields |= {row.finish} | strategy_fields(getattr(config, row.finish), config)
    return fields


def encode_prompt(tokenizer, text: str) -> List[int]:
    """Prompt ids as DSL-LLaDA feeds them (llada_dsl.md §3, §6): `text` as the single user turn of the
    tokenizer's chat template (apply_chat_template(add_generation_prompt=True, tokenize=False), then
    tokenized with add_special_tokens=False: the BOS comes from the template) when it has one; raw
    text (the Base model's way) otherwise."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=False)
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


# ============================================================================ fields


@dataclass(frozen=True)
class Field:
    """One generation setting. `type` is int, float, str or bool; str fields list their `choices`;
    numbers must lie in [low, high] (an open end with `low_open` / `high_open`); `optional` allows
    None; `many` also allows a non-empty list of values; `hf` marks fields GenerationConfig owns."""

    default: Any
    type: type
    help: str
    choices: Tuple = ()
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    many: bool = False
    hf: bool = False
    group: str = ""

    def allowed(self) -> str:
        """The allowed values, in words (for error messages)."""
        if self.choices:
            text = f"one of {self.choices}"
        elif self.type is bool:
            text = "True or False"
        elif self.type is int:
            text = f"an integer >= {self.low}"
        else:
            text = f"a number in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.many:
            text += " or a non-empty list of them"
        return text + (" or None" if self.optional else "")

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional
        if self.many and isinstance(value, (list, tuple)):
            return bool(value) and all(v is not None and self.accepts(v) for v in value)
        if self.choices:
            return value in self.choices
        if self.type is bool or isinstance(value, bool):
            return self.type is bool and isinstance(value, bool)
        if self.type is int and not isinstance(value, int):
            return False
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        below = value < self.low or (self.low_open and value == self.low)
        above = value > self.high or (self.high_open and value == self.high)
        return not (below or above)


def _fields(**groups: Dict[str, Field]) -> Dict[str, Field]:
    return {name: replace(f, group=group) for group, fs in groups.items() for name, f in fs.items()}


# Each help text names the source of its default (reference facts: ../shared/reference/*.md).
FIELDS: Dict[str, Field] = _fields(
    general=dict(
        strategy=Field("sde", str, "the sampler (table in the README); 'sde' = the paper's own sampler (Eq. 2)",
                       choices=tuple(STRATEGIES)),
        steps=Field(64, int, "the step budget T (NFE per strategy: class docstring); 64 = the largest NFE of "
                    "DSL-LLaDA's summarization sweep", low=1),
        gen_length=Field(None, int, "tokens to generate G; None: max_new_tokens, then 128 (DSL-LLaDA inference.py)",
                         low=1, optional=True),
        max_new_tokens=Field(None, int, "transformers' name for gen_length (used when gen_length is None)",
                             low=1, optional=True, hf=True),
        seed=Field(None, int, "row r uses seed + r (or seed[r]); None draws a base seed from torch's global "
                   "generator", low=0, optional=True, many=True),
        truncate_at_eos=Field(False, bool, "replace the generated tokens after a row's first EOS by the pad id; "
                              "off as in both protocols (MDLM/ReMDM score all L ids, DSL-LLaDA decodes all G ids "
                              "and keeps later text)"),
        suppress_token_ids=Field(None, int, "token ids whose logits are set to −inf in every sampler (draws, "
                                 "confidences, the SDE's posterior mean and final decode), as the mask id's always "
                                 "are; e.g. LLaDA's logits_eos_inf = [126081] (<|endoftext|>; <|eot_id|> stays "
                                 "allowed), the eosInf baseline of DSL-LLaDA's summarization runs (llada_dsl.md §3, "
                                 "§6); None: none, as in LLaDA's generate.py defaults", low=0, optional=True,
                                 many=True),
        compile=Field(False, bool, "torch.compile the backbone for fixed shapes (`Denoiser.compiled`); the first "
                      "call of each shape compiles. The same tokens as eager under the same seed unless a draw or "
                      "argmax sits on a near-tie: compiled kernels reorder float sums (hidden states differ by "
                      "~1e-4 on a tiny model). Off by default: on the 2-core CPU it measured 1.0-1.1x eager "
                      "(benchmarks/RESULTS.md), no GPU figure yet"),
        stop_at_eos=Field(False, bool, "end block decoding once every row has an EOS (low_confidence, and hybrid "
                          "with the low_confidence finish); never-decoded positions get the pad id; off as in "
                          "DSL-LLaDA's runs"),
    ),
    draws=dict(
        temperature=Field(None, float, "softmax temperature of categorical draws", low=0.0, optional=True, hf=True),
        top_p=Field(None, float, "nucleus p on p_θ before draws, ReMDM's rule (the token that crosses p is "
                    "dropped; 1.0 = off); 0.9 in every row of the DSL paper's tables and the ReMDM protocol",
                    low=0.0, high=1.0, low_open=True, optional=True, hf=True),
        top_k=Field(None, int, "keep the k most likely tokens before draws (no protocol uses it)", low=1,
                    optional=True, hf=True),
    ),
    model=dict(
        visible_snr=Field(None, float, "SNR of prompt and revealed tokens (z = snr·E[t]) in every sampler; None: "
                          "the model config's effective_visible_snr (its preset's value, else snr_max)",
                          low=0.0, low_open=True, optional=True),
        beta=Field(None, float, "the converter's β for decoding (weights untouched); None: the learned β",
                   low=0.0, low_open=True, optional=True),
        beta_scale=Field(1.0, float, "decode with beta_scale·β_learned; 1 = no change; DSL-LLaDA decodes with "
                         "β_inf = 2·β_train (beta_scale=2; strategy dsl_llada_sde's default)", low=0.0,
                         low_open=True),
        token_inputs=Field("converter", str, "how the masked samplers feed their discrete states: through the "
                           "converter, or 'backbone': tokens and masks as the backbone's own token embedding, i.e. "
                           "the published model itself (LLaDA's generate.py, llada_dsl.md §3)",
                           choices=("converter", "backbone")),
    ),
    diagnostics=dict(
        output_diagnostics=Field(False, bool, "return per-step diagnostics u_t, H_t, k_t, r_t, Δ_t and rewrites "
                                 "(with return_dict_in_generate=True)"),
        diagnostics_positions=Field("evaluated", str, "positions u_t, H_t, k_t average over: 'evaluated' (those "
                                    "evaluated at the step) or 'all' (all L, the paper's Eq. 25 normalisation)",
                                    choices=("evaluated", "all")),
    ),
    sde=dict(
        integrator=Field("euler", str, "Euler–Maruyama of Eq. 2 (the authors' sample_path) or Heun "
                         "(DSL-LLaDA's SDE)", choices=("euler", "heun")),
        snr_schedule=Field("geometric", str, "SNR grid: log-linear (the authors' loglinear grid, DSL-LLaDA's "
                           "non-sensitive schedule), linear, or DSL-LLaDA's 'sensitive'",
                           choices=("geometric", "linear", "sensitive")),
        snr_min=Field(0.01, float, "first grid SNR γ_0 (DSL-LLaDA eval: 0.01 → s_max); the state starts at z = 0",
                      low=0.0, low_open=True),
        snr_max=Field(None, float, "last grid SNR; None: the model config's snr_max (training γ_max)",
                      low=0.0, low_open=True, optional=True),
        noise_scale=Field(1.0, float, "multiplies the Brownian increment; 1 = the exact SDE of Eq. 2", low=0.0),
        posterior_top_k=Field(None, int, "x̂ from the k most likely tokens; None: the full posterior mean (the "
                              "authors' sample_path; DSL-LLaDA uses 512)", low=1, optional=True),
    ),
    remdm=dict(
        remdm_mode=Field("loop", str, "ReMDM schedule; 'loop' is the one the DSL paper's results use; the "
                         "official ReMDM cap/rescale/conf stay selectable", choices=REMDM_MODES),
        eta=Field(None, float, "remasking η; None: η_cap(T) of the paper's Eq. 24 for cap and loop (0.010 / "
                  "0.008 / 0.007 / 0.004 at T = 128 / 256 / 512 / 1024), 0.015 for rescale (ReMDM's OWT "
                  "script); conf has none", low=0.0, high=1.0, optional=True),
        t_on=Field(0.55, float, "loop: start of the constant-α phase (ReMDM's loop script)", low=0.0, high=1.0),
        t_off=Field(0.05, float, "loop: end of the constant-α phase (ReMDM's loop script)", low=0.0, high=1.0),
        alpha_on=Field(0.9, float, "loop: α during the loop phase (ReMDM's loop script)", low=0.0, high=1.0,
                       low_open=True, high_open=True),
    ),
    hybrid=dict(
        switch_snr=Field(None, float, "SNR where the SDE hands over; None: snr_max (DSL-LLaDA's hybrid runs its "
                         "SDE to s_max)", low=0.0, low_open=True, optional=True),
        switch_steps=Field(None, int, "SDE integration steps S; None: max(1, steps // 4), a quarter of the "
                           "budget as DSL-LLaDA's split of 64 NFE into 8 Heun steps (16 NFE) + 48",
                           low=1, optional=True),
        hybrid_finish=Field("low_confidence", str, "discrete finish (DSL-LLaDA's hybrid: low-confidence "
                            "unmasking)", choices=("low_confidence", "remdm")),
        hybrid_threshold=Field(0.9, float, "keep draft tokens with probability > this, mask the rest (DSL-LLaDA "
                               "τ ∈ {0.5, 0.7, 0.9})", low=0.0, high=1.0),
    ),
    low_confidence=dict(
        block_length=Field(None, int, "block size; None: one block (DSL-LLaDA's original_remask runs)", low=1,
                           optional=True),
        remasking=Field("low_confidence", str, "which masked tokens to commit: most confident (LLaDA) or random",
                        choices=("low_confidence", "random")),
        cfg_scale=Field(0.0, float, "classifier-free guidance w; 0 as DSL-LLaDA's remask runs", low=0.0),
    ),
    roar=dict(
        roar_tokens_per_step=Field(None, int, "tokens decoded per step k; None: ⌈G / steps⌉ (the authors' "
                                   "sample_roar: k = 1 at steps = G)", low=1, optional=True),
        roar_order=Field("random", str, "decoding order (the authors' sample_roar: random)",
                         choices=("random", "left_to_right")),
    ),
    correct=dict(
        correct_snr=Field(5.0, float, "SNR of a suspect token; 5 ≈ the median training SNR of DSL-LLaDA's "
                          "LogNormal(1.69, 0.9) (no published setting)", low=0.0, low_open=True),
        correct_threshold=Field(0.0, float, "replace a token when p(argmax) − p(token) > this (no published "
                                "setting)", low=0.0, high=1.0),
    ),
)


def field_help(name: str) -> str:
    """The help text of field `name` (class docstring and CLI), with its default and the values it
    takes per strategy when left at None."""
    f = FIELDS[name]
    text = f"{f.help} (default {f.default!r})"
    per_strategy = [f"{s}: {row.defaults[name]!r}" for s, row in STRATEGIES.items() if name in row.defaults]
    if per_strategy:
        text += "; None means, per strategy, " + ", ".join(per_strategy) + " (hybrid: its finish's), else None"
    return text


def _fields_doc() -> str:
    lines = ["", "    Fields (generated from `FIELDS`; group: name (type): help):"]
    for group in dict.fromkeys(f.group for f in FIELDS.values()):
        lines.append(f"    {group}:")
        for name, f in FIELDS.items():
            if f.group == group:
                lines.append(f"        {name} (`{f.type.__name__}`): {field_help(name)}")
    return "\n".join(lines) + "\n"


# ============================================================================ config


@dataclass
class DSLGenerateOutput(ModelOutput):
    """Output of `generate(..., return_dict_in_generate=True)`.

    sequences: (B, P_max + G) prompt (left-padded) + generated tokens; with `truncate_at_eos`
        the tokens after a row's first EOS are `pad_token_id`; for `strategy="correct"` the
        corrected input, in the input's layout.
    attention_mask: (B, P_max + G) 1 on prompt and generated tokens.
    changed: (B, L) bool, positions `correct` changed (None otherwise).
    diagnostics: per-step traces `u_t`, `H_t`, `k_t`, `r_t`, `delta_t` (steps, B) and
        `rewrites` (B, P_max + G), when `output_diagnostics=True`.
    nfe: number of denoiser evaluations.
    """

    sequences: Optional[torch.LongTensor] = None
    attention_mask: Optional[torch.LongTensor] = None
    changed: Optional[torch.BoolTensor] = None
    diagnostics: Optional[Dict[str, torch.Tensor]] = None
    nfe: Optional[int] = None


class DSLGenerationConfig(GenerationConfig):
    """Decoding settings for [`DSLGenerationMixin.generate`] (saved as `generation_config.json`).

    Every field, its default and the default's source are listed below (from `FIELDS`). A field a
    strategy does not use is ignored; when one is passed explicitly to generate() with a
    non-default value, a warning names it (saved configs may carry fields of other strategies
    without a warning). Every field's type and range is checked whatever the strategy; cross-field
    rules (block sizes, the hybrid step split, loop times) only for the strategy in use.

    Step budget and NFE (denoiser evaluations, returned as `nfe`), T = steps:
        sde: Euler T + 1, Heun 2T + 1 (T integration steps + the final decode). The grid has
            T + 1 points γ_0 = snr_min < … < γ_T = snr_max and the state starts at z = 0 at γ_0
            (as the authors' sample_path).
        mdlm, remdm: at most T + 1 (one per step at which a position unmasks since the last
            evaluation, + the final greedy decode if masks remain).
        low_confidence: T (2T with cfg_scale > 0); fewer if stop_at_eos ends early. With
            block_length, `gen_length % block_length == 0` and T a multiple of the blocks.
        hybrid: S = switch_steps SDE steps cost c·S (c = 1 Euler, 2 Heun), + 1 draft decode,
            and the finish gets F = T − c·S steps: low_confidence finish T + 1 exactly (its F
            steps cost 2F with cfg_scale > 0), remdm finish at most T + 2 (its own final greedy
            decode when masks remain). The ReMDM finish starts each row at t_start = its masked
            fraction, so the schedule matches the draft.
        roar: ⌈G / k⌉ with k = roar_tokens_per_step (default ⌈G / T⌉, so at most T).
        correct: at most T (stops when a round changes nothing).

    EOS and padding: pad_token_id / eos_token_id come from this config, else the model config;
    without a pad id, padding uses `eos_token_id` if set, else the mask id. MDLM-style models
    start every training row with BOS = EOS (GPT-2's 50256), so in a row without a prompt an EOS
    at the first generated position does not count as the first EOS (for truncate_at_eos,
    stop_at_eos and streamers).
    """

    def __init__(self, **kwargs):
        for name, f in FIELDS.items():
            if not f.hf:
                setattr(self, name, kwargs.pop(name, copy.deepcopy(f.default)))
        super().__init__(**kwargs)

    def validate(self, strict: bool = False, user_set_attributes=None, **kwargs):
        """Check every field and the strategy's cross-field rules; raise `ValueError` naming the
        first bad argument. HF's autoregressive checks (sampling flags without `do_sample`,
        beams, ...) do not apply."""
        for name, f in FIELDS.items():
            value = getattr(self, name)
            if not f.accepts(value):
                raise ValueError(f"{name} must be {f.allowed()}, got {value!r}")
        if self.snr_max is not None and self.snr_max <= self.snr_min:
            raise ValueError(f"snr_max must be greater than snr_min={self.snr_min}, got {self.snr_max!r}")
        if self.beta is not None and self.beta_scale != 1.0:
            raise ValueError(f"beta and beta_scale: set one of them, got beta={self.beta!r} and "
                             f"beta_scale={self.beta_scale!r}")
        check = STRATEGIES[self.strategy].check
        if check is not None:
            check(self, self.steps)

    def hybrid_step_split(self):
        """(SDE integration steps S, finish steps F) of hybrid: S = switch_steps (None →
        max(1, steps // 4)), F = steps − c·S with c = 1 (Euler) or 2 (Heun), so that the total
        NFE is steps + 1 (the + 1 being the draft decode)."""
        sde_steps = self.switch_steps if self.switch_steps is not None else max(1, self.steps // 4)
        cost = 2 if self.integrator == "heun" else 1
        return sde_steps, self.steps - cost * sde_steps

    def used_fields(self) -> set:
        """The fields `strategy` reads at these settings (see `STRATEGIES`)."""
        return strategy_fields(self.strategy, self)

    @classmethod
    def from_model_config(cls, *args, **kwargs):
        raise NotImplementedError("DSLGenerationConfig is not derived from the model config")


DSLGenerationConfig.__doc__ += _fields_doc()


class DSLGenerationMixin:
    """Adds `generate()` to [`DSLForDiffusionLM`]."""

    def adjust_generation_fn(self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path,
                             cache_dir=None, force_download=False, proxies=None, local_files_only=False, token=None,
                             revision=None, subfolder="", trust_remote_code=None, **kwargs):
        """Load `generation_config.json` with `DSLGenerationConfig` at `from_pretrained` time."""
        if generation_config is not None:
            self.generation_config = self.generation_config_class.from_dict(generation_config.to_dict())
            return
        if pretrained_model_name_or_path is None:
            return
        local = os.path.join(str(pretrained_model_name_or_path), subfolder or "", "generation_config.json")
        try:
            self.generation_config = self.generation_config_class.from_pretrained(
                pretrained_model_name_or_path, cache_dir=cache_dir, force_download=force_download, proxies=proxies,
                local_files_only=local_files_only, token=token, revision=revision, subfolder=subfolder,
                _from_auto=from_auto_class, _from_pipeline=from_pipeline,
            )
        except (OSError, ValueError, TypeError) as err:
            # A missing file means the defaults; a file that is there but unreadable or invalid is an
            # error naming it (its saved sampler settings would otherwise be dropped without a word).
            if os.path.isfile(local):
                raise ValueError(f"{local}: invalid generation config: {err}") from None
            if not isinstance(err, OSError):
                raise ValueError(f"generation_config.json of {pretrained_model_name_or_path}: invalid: {err}") from None
            logger.info("No generation_config.json found; using the default DSLGenerationConfig.")

    def _prepare_generation_config(self, generation_config=None, **kwargs):
        """Deep-copy the default (or given) config and apply keyword overrides; returns (config, leftovers)."""
        base = generation_config if generation_config is not None else getattr(self, "generation_config", None)
        if base is None:
            base = self.generation_config_class()
        if not isinstance(base, DSLGenerationConfig):
            base = DSLGenerationConfig.from_dict(base.to_dict())
        config = copy.deepcopy(base)
        leftovers = config.update(**kwargs)
        return config, leftovers

    # ------------------------------------------------------------------ generate
    @torch.no_grad()
    def generate(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.LongTensor] = None,
        generation_config: Optional[DSLGenerationConfig] = None,
        streamer=None,
        return_dict_in_generate: bool = False,
        progress_bar: bool = False,
        **kwargs,
    ) -> Union[torch.LongTensor, DSLGenerateOutput]:
        """Generate (or, with `strategy="correct"`, correct) text with any DSL sampler.

        Args:
            input_ids: (B, P) prompts, padded on either side (see `attention_mask`); None for
                unconditional generation of `num_return_sequences` (default 1) rows.
            attention_mask: (B, P), 1 on prompt tokens, 0 on padding. Prompts are never altered.
            generation_config: a [`DSLGenerationConfig`]; default `self.generation_config`.
            streamer: object with `put(tensor)` / `end()` (and optionally `put_draft(tensor)`),
                batch size 1 only: the prompt is put first, then final tokens as they become
                final (left to right), drafts every step when supported.
            return_dict_in_generate: return a [`DSLGenerateOutput`] instead of the sequences.
            progress_bar: show a tqdm bar over sampling steps.
            kwargs: overrides of any generation-config field (e.g. `strategy="remdm", steps=256`).
        Returns:
            sequences (B, P_max + G): left-padded prompt then G generated tokens, all of them
            unless `truncate_at_eos` replaces those after a row's first EOS by the pad id
            (pad_token_id, else eos_token_id, else the mask id); positions never decoded
            (`stop_at_eos`) hold the pad id. Row r of a batch equals generating row r alone with
            seed `seed + r` (batch-composition invariant).
        """
        config, leftovers = self._prepare_generation_config(generation_config, **kwargs)
        if leftovers:
            raise ValueError(f"unknown generate() arguments: {sorted(leftovers)}")
        config.validate()
        self._warn_unused_arguments(config, kwargs)
        model_config = self.config
        device = next(self.parameters()).device
        mask_id = model_config.mask_token_id
        eos_ids = config.eos_token_id if config.eos_token_id is not None else getattr(model_config, "eos_token_id", None)
        eos_list = [] if eos_ids is None else ([eos_ids] if isinstance(eos_ids, int) else list(eos_ids))
        pad_id = config.pad_token_id
        if pad_id is None:
            pad_id = getattr(model_config, "pad_token_id", None)
        if pad_id is None:
            pad_id = eos_list[0] if eos_list else mask_id

        prompts = self._split_prompts(input_ids, attention_mask, config, device)
        batch = len(prompts)
        if streamer is not None and batch != 1:
            raise ValueError(f"streamer supports batch size 1 only, got {batch} rows")
        generators = self._row_generators(config.seed, batch, device)

        was_training = self.training
        self.eval()
        try:
            if not STRATEGIES[config.strategy].generates:
                output = self._generate_correct(input_ids, attention_mask, config, device, streamer, progress_bar)
            else:
                output = self._generate_new(prompts, config, generators, device, streamer, progress_bar,
                                            eos_list, pad_id)
        finally:
            self.train(was_training)
        if streamer is not None:
            streamer.end()
        if return_dict_in_generate:
            return output
        return output.sequences

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _warn_unused_arguments(config, kwargs):
        """Warn about generate() keyword arguments the chosen strategy ignores (non-default only)."""
        used = config.used_fields()
        for name, value in kwargs.items():
            if name in FIELDS and name not in used and value != FIELDS[name].default:
                readers = [s for s in STRATEGIES if name in strategy_fields(s, config)]
                logger.warning("generate(): %s=%r is ignored by strategy=%r (read by: %s)", name, value,
                               config.strategy, ", ".join(readers))

    def _denoiser(self, attention_mask, config, tokens=None, prompt_mask=None) -> Denoiser:
        """The model as a sampler's denoiser, at the config's visible SNR and inference β; prompt
        positions (`prompt_mask`) as the backbone's clean token embedding when the model's
        `prompt_embedding` is "backbone"."""
        beta_scale = config.beta_scale
        row = STRATEGIES[config.strategy]
        if row.beta_scale is not None and config.beta is None and beta_scale == 1.0:
            beta_scale = row.beta_scale
        extra = {}
        if self.config.effective_prompt_embedding == "backbone" and prompt_mask is not None:
            extra.update(tokens=tokens, clean_mask=prompt_mask)
        if config.token_inputs != "converter":
            extra["token_inputs"] = config.token_inputs
        if config.suppress_token_ids is not None:
            ids = config.suppress_token_ids
            extra["suppress_token_ids"] = [ids] if isinstance(ids, int) else list(ids)
        return Denoiser.from_model(self, attention_mask, visible_snr=config.visible_snr, beta=config.beta,
                                   beta_scale=beta_scale, compile=config.compile, **extra)

    def _split_prompts(self, input_ids, attention_mask, config, device) -> List[torch.Tensor]:
        repeats = 1 if config.num_return_sequences is None else config.num_return_sequences
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"num_return_sequences must be an integer >= 1, got {repeats!r}")
        if input_ids is None:
            if attention_mask is not None:
                raise ValueError("attention_mask given without input_ids")
            return [torch.zeros(0, dtype=torch.long, device=device) for _ in range(repeats)]
        if not torch.is_tensor(input_ids):
            raise ValueError(f"input_ids must be a tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dtype == torch.bool or input_ids.dtype.is_floating_point or input_ids.dtype.is_complex:
            raise ValueError(f"input_ids must be an integer tensor of token ids, got dtype {input_ids.dtype}")
        if attention_mask is not None:
            if not torch.is_tensor(attention_mask):
                raise ValueError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
            if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (prompt token)")
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
            if attention_mask is not None and attention_mask.dim() == 1:
                attention_mask = attention_mask.unsqueeze(0)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
            )
        if attention_mask is not None and input_ids.shape[1] > 0:
            empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"attention_mask: row(s) {empty} attend to no token (an empty prompt); for "
                                 f"unprompted generation pass input_ids=None with num_return_sequences")
        vocab = self.config.vocab_size
        prompts = []
        for r in range(input_ids.shape[0]):
            row = input_ids[r].to(device)
            if attention_mask is not None:
                row = row[attention_mask[r].to(device).bool()]
            if bool(((row < 0) | (row >= vocab)).any()):
                raise ValueError(f"input_ids must be token ids in [0, vocab_size={vocab}) on attended positions")
            prompts.extend([row] * repeats)
        return prompts

    @staticmethod
    def _row_generators(seed, batch, device) -> List[torch.Generator]:
        if seed is None:
            base = int(torch.randint(0, 2**62, (1,)).item())
            seeds = [base + r for r in range(batch)]
        elif isinstance(seed, (list, tuple)):
            if len(seed) != batch:
                raise ValueError(f"seed: got {len(seed)} seeds for {batch} rows")
            seeds = list(seed)
        else:
            seeds = [seed + r for r in range(batch)]
        return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def _gen_length(self, config) -> int:
        if config.gen_length is not None:
            return config.gen_length
        if config.max_new_tokens is not None:
            return config.max_new_tokens
        return DEFAULT_GEN_LENGTH

    def _generate_new(self, prompts, config, generators, device, streamer, progress_bar, eos_list, pad_id):
        model_config = self.config
        gen_len = self._gen_length(config)
        lengths = [int(p.numel()) for p in prompts]
        longest = max(lengths)
        if longest + gen_len > model_config.max_position_embeddings:
            raise ValueError(
                f"input_ids: prompt length {longest} + gen_length {gen_len} exceeds the model's "
                f"max_position_embeddings={model_config.max_position_embeddings}"
            )
        batch = len(prompts)
        total = longest + gen_len
        tokens = torch.full((batch, total), model_config.mask_token_id, dtype=torch.long, device=device)
        generate_mask = torch.zeros(batch, total, dtype=torch.bool, device=device)
        attended = torch.zeros(batch, total, dtype=torch.bool, device=device)
        for r, prompt in enumerate(prompts):
            tokens[r, : lengths[r]] = prompt
            generate_mask[r, lengths[r] : lengths[r] + gen_len] = True
            attended[r, : lengths[r] + gen_len] = True
        tokens = tokens.masked_fill(~attended, 0)
        tokens = tokens.masked_fill(generate_mask, model_config.mask_token_id)
        attn = None if bool(attended.all()) else attended.long()
        callback = None
        if streamer is not None:
            shown_eos = eos_list if config.truncate_at_eos else []
            callback = self._streamer_callback(streamer, prompts, lengths, gen_len, shown_eos)
        # MDLM-style rows start with BOS = EOS: without a prompt, an EOS at the first generated
        # position is not an end of text.
        skip_first = torch.tensor([n == 0 for n in lengths], dtype=torch.bool, device=device)
        run = RunInfo(model_config.snr_max, gen_len, eos_list, skip_first)
        result = STRATEGIES[config.strategy].sampler(
            self._denoiser(attn, config, tokens, attended & ~generate_mask), tokens, generate_mask,
            **sampler_kwargs(config.strategy, config, run),
            generator=generators, diagnostics=config.output_diagnostics,
            diagnostics_positions=config.diagnostics_positions, callback=callback, progress=progress_bar)

        # Re-layout: left-pad prompts to `longest`, then the G generated tokens.
        sequences = torch.full((batch, total), pad_id, dtype=torch.long, device=device)
        out_mask = torch.zeros(batch, total, dtype=torch.long, device=device)
        generated = torch.stack([result.tokens[r, lengths[r] : lengths[r] + gen_len] for r in range(batch)])
        generated = generated.masked_fill(generated == model_config.mask_token_id, pad_id)  # never decoded
        if config.truncate_at_eos:
            generated = self._cut_after_eos(generated, eos_list, pad_id, skip_first)
        for r in range(batch):
            sequences[r, longest - lengths[r] : longest] = prompts[r]
            out_mask[r, longest - lengths[r] :] = 1
        sequences[:, longest:] = generated
        diagnostics = None
        if config.output_diagnostics:
            diagnostics = dict(result.diagnostics)
            if "rewrites" in diagnostics:
                rewrites = torch.zeros(batch, total, dtype=torch.long, device=device)
                for r in range(batch):
                    rewrites[r, longest:] = diagnostics["rewrites"][r, lengths[r] : lengths[r] + gen_len]
                diagnostics["rewrites"] = rewrites
        if streamer is not None:
            callback.finish(generated[0])
        return DSLGenerateOutput(sequences=sequences, attention_mask=out_mask, diagnostics=diagnostics,
                                 nfe=result.nfe)

    def _generate_correct(self, input_ids, attention_mask, config, device, streamer, progress_bar):
        if input_ids is None:
            raise ValueError("input_ids: strategy='correct' needs the text to correct")
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        repeats = config.num_return_sequences or 1
        input_ids = input_ids.to(device).repeat_interleave(repeats, dim=0)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(device).repeat_interleave(repeats, dim=0)
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids: length {input_ids.shape[1]} exceeds the model's "
                f"max_position_embeddings={self.config.max_position_embeddings}"
            )
        attended = attention_mask.bool()
        tokens = input_ids.masked_fill(~attended, 0)
        attn = None if bool(attended.all()) else attention_mask.long()
        if streamer is not None:
            streamer.put(tokens[0][attended[0]].cpu())
        run = RunInfo(self.config.snr_max)
        result = STRATEGIES[config.strategy].sampler(
            self._denoiser(attn, config), tokens, attended, **sampler_kwargs(config.strategy, config, run),
            diagnostics=config.output_diagnostics, diagnostics_positions=config.diagnostics_positions,
            progress=progress_bar)
        sequences = torch.where(attended, result.tokens, input_ids)
        return DSLGenerateOutput(sequences=sequences, attention_mask=attention_mask.long(), changed=result.changed,
                                 diagnostics=result.diagnostics if config.output_diagnostics else None,
                                 nfe=result.nfe)

    @staticmethod
    def _cut_after_eos(generated: torch.Tensor, eos_list, pad_id, skip_first=None) -> torch.Tensor:
        """Replace every token after the first EOS of each row by `pad_id` (the EOS is kept).
        In rows flagged by `skip_first` (B,) bool, an EOS at position 0 (BOS = EOS) does not count."""
        if not eos_list:
            return generated
        is_eos = torch.isin(generated, torch.as_tensor(eos_list, device=generated.device))
        if skip_first is not None and generated.shape[1]:
            is_eos[:, 0] &= ~skip_first.to(is_eos.device)
        after = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
        return generated.masked_fill(after, pad_id)

    @staticmethod
    def _streamer_callback(streamer, prompts, lengths, gen_len, eos_list):
        """put(prompt) now; per step put_draft(draft) if supported and put the newly final,
        left-contiguous tokens (for samplers that never revise committed tokens); nothing after
        the first EOS is put."""
        streamer.put(prompts[0].cpu())
        state = {"sent": 0, "done": False}
        start = lengths[0]
        has_draft = callable(getattr(streamer, "put_draft", None))

        def send(tokens: torch.Tensor):
            if state["done"] or tokens.numel() == 0:
                return
            if eos_list:
                is_eos = torch.isin(tokens, torch.as_tensor(eos_list, device=tokens.device))
                if start == 0 and state["sent"] == 0:
                    is_eos[0] = False  # unprompted: the first token may be BOS = EOS
                hits = is_eos.nonzero()
                if hits.numel():
                    tokens = tokens[: int(hits[0, 0]) + 1]
                    state["done"] = True
            streamer.put(tokens.cpu())

        def callback(step, draft, masked, permanent):
            gen = draft[0, start : start + gen_len]
            if has_draft:
                streamer.put_draft(gen.cpu())
            if permanent:
                open_positions = masked[0, start : start + gen_len].nonzero()
                final_upto = int(open_positions[0, 0]) if open_positions.numel() else gen_len
                if final_upto > state["sent"]:
                    send(gen[state["sent"] : final_upto])
                    state["sent"] = final_upto

        def finish(generated: torch.Tensor):
            send(generated[state["sent"] :])
            state["sent"] = gen_len

        callback.finish = finish
        return callback
