"""Generation for DSL models: `DSLGenerationConfig` and `DSLGenerationMixin.generate()`.

Follows the DiffusionGemma pattern of transformers 5.x: an own mixin (its name ends in
`GenerationMixin`, so `can_generate()` is True without HF's autoregressive machinery) with its own
`adjust_generation_fn`, so `generation_config.json` round-trips through remote code.

Layout used inside `generate()`: row r is `[prompt_r | G generated slots | padding]` (right
padding, attention mask 0 on the padding), so every row's prompt and generation keep the
positions they would have alone. The returned `sequences` are left-padded to the longest prompt:
`sequences[:, P_max:]` is the generated part of every row.
"""

import copy
import logging
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import torch
from transformers import GenerationConfig
from transformers.utils import ModelOutput

from .noise_dsl import snr_schedule
from .sampling_dsl import (
    REMDM_MODES,
    Denoiser,
    correct,
    hybrid,
    low_confidence,
    mdlm,
    remdm,
    roar,
    sde,
)

logger = logging.getLogger(__name__)

STRATEGIES = ("sde", "mdlm", "remdm", "hybrid", "low_confidence", "roar", "correct")
INTEGRATORS = ("euler", "heun")
SCHEDULES = ("geometric", "linear", "sensitive")
REMASKINGS = ("low_confidence", "random")
HYBRID_FINISHES = ("low_confidence", "remdm")
ROAR_ORDERS = ("random", "left_to_right")

DEFAULT_GEN_LENGTH = 128


@dataclass
class DSLGenerateOutput(ModelOutput):
    """Output of `generate(..., return_dict_in_generate=True)`.

    sequences: (B, P_max + G) prompt (left-padded) + generated tokens (after the first EOS:
        `pad_token_id`); for `strategy="correct"` the corrected input, in the input's layout.
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

    General:
        strategy (`str`, "sde"): one of "sde", "mdlm", "remdm", "hybrid", "low_confidence",
            "roar", "correct".
        steps (`int`, 64): the step budget T (see "Step budget and NFE" below).
        gen_length (`int`, None): tokens to generate G; falls back to `max_new_tokens`, then 128.
        block_length (`int`, None): block size of low_confidence and of hybrid's low_confidence
            finish (None = one block); `gen_length % block_length == 0` is checked only there.
        temperature (`float`, None): None → 1.0, except low_confidence (and hybrid's
            low_confidence finish) where None → 0 (LLaDA's greedy default).
        top_p (`float`, None), top_k (`int`, None): applied to p_θ before categorical draws
            (ReMDM's top-p: the token that crosses p is dropped).
        seed (`int` or list of `int`, None): row r uses `seed + r` (or `seed[r]`); None draws
            a base seed from torch's global generator.
        stop_at_eos (`bool`, False): end decoding early once every row has an EOS. Honoured only
            by block decoding: "low_confidence" and "hybrid" with hybrid_finish="low_confidence"
            (checked after each block; with one block there is nothing to skip). Every other
            strategy ignores it (generate() logs a warning when it is passed for one).
        output_diagnostics (`bool`, False): return per-step diagnostics (with
            `return_dict_in_generate=True`).
        pad_token_id / eos_token_id: taken from this config, else the model config. When no
            pad id is set, padding (and the tail after the first EOS) uses `eos_token_id` if set,
            else the mask id.
    SDE (also the first phase of hybrid):
        integrator ("euler" | "heun"), snr_schedule ("geometric" | "linear" | "sensitive"),
        snr_min (`float`, 0.01), snr_max (`float`, None → the model's `snr_max`),
        noise_scale (`float`, 1.0 = the exact SDE), posterior_top_k (`int`, None). The grid
        has steps + 1 points γ_0 = snr_min < … < γ_steps = snr_max and the state starts at
        z = 0 at γ_0 (as the authors' sample_path).
    ReMDM: remdm_mode ("cap" | "rescale" | "conf" | "loop"), eta (None → η_cap(T) of the DSL
        paper for cap/loop, 0.015 for rescale; unused by conf), t_on (0.55), t_off (0.05),
        alpha_on (0.9) (loop only; `t_off < t_on` is checked only when the loop is used).
    Hybrid: switch_snr (None → snr_max), switch_steps (None → steps // 4: SDE integration
        steps), hybrid_finish ("low_confidence" | "remdm"), hybrid_threshold (0.9: draft tokens
        with probability strictly greater are kept, the rest masked). The ReMDM finish starts
        each row at t_start = its masked fraction, so the schedule matches the draft.
    low_confidence: remasking ("low_confidence" | "random"), cfg_scale (0.0).
    roar: roar_tokens_per_step (None → ⌈G / steps⌉), roar_order ("random" | "left_to_right").
    correct: correct_snr (5.0: SNR of a suspect token), correct_threshold (0.0).

    Step budget and NFE (denoiser evaluations, returned as `nfe`), T = steps:
        sde: Euler T + 1, Heun 2T + 1 (T integration steps + the final decode).
        mdlm, remdm: at most T + 1 (one per step at which a position unmasks since the last
            evaluation, + the final greedy decode if masks remain).
        low_confidence: T (2T with cfg_scale > 0); fewer if stop_at_eos ends early.
        hybrid: S = switch_steps SDE steps cost c·S (c = 1 Euler, 2 Heun), + 1 draft decode,
            and the finish gets F = T − c·S steps: low_confidence finish T + 1 exactly (its F
            steps cost 2F with cfg_scale > 0), remdm finish at most T + 2 (its own final greedy
            decode when masks remain).
        roar: ⌈G / k⌉ with k = roar_tokens_per_step (default ⌈G / T⌉, so at most T).
        correct: at most T (stops when a round changes nothing).

    EOS: generated tokens after the first EOS of a row are replaced by the pad id. MDLM-style
    models start every training row with BOS = EOS (GPT-2's 50256), so in a row without a
    prompt an EOS at the first generated position is ignored by this rule (and by stop_at_eos
    and streamers).

    Fields a strategy does not use are ignored; when one is passed explicitly to generate()
    with a non-default value, a warning names it (saved configs may carry fields of other
    strategies without a warning).
    """

    _DIFFUSION_DEFAULTS = dict(
        strategy="sde", steps=64, gen_length=None, block_length=None, seed=None,
        stop_at_eos=False, output_diagnostics=False,
        integrator="euler", snr_schedule="geometric", snr_min=0.01, snr_max=None, noise_scale=1.0,
        posterior_top_k=None,
        remdm_mode="cap", eta=None, t_on=0.55, t_off=0.05, alpha_on=0.9,
        switch_snr=None, switch_steps=None, hybrid_finish="low_confidence", hybrid_threshold=0.9,
        remasking="low_confidence", cfg_scale=0.0,
        roar_tokens_per_step=None, roar_order="random",
        correct_snr=5.0, correct_threshold=0.0,
    )

    def __init__(self, **kwargs):
        for key, default in self._DIFFUSION_DEFAULTS.items():
            setattr(self, key, kwargs.pop(key, copy.deepcopy(default)))
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ validation
    def validate(self, strict: bool = False, user_set_attributes=None, **kwargs):
        """Check the diffusion fields; raise `ValueError` naming the first bad argument.

        HF's autoregressive checks (sampling flags without `do_sample`, beams, ...) do not apply.
        """

        def bad(name, allowed):
            raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def check_choice(name, choices):
            if getattr(self, name) not in choices:
                bad(name, f"one of {choices}")

        def check_int(name, low, optional=False):
            value = getattr(self, name)
            if optional and value is None:
                return
            if not is_int(value) or value < low:
                bad(name, f"an integer >= {low}" + (" or None" if optional else ""))

        def check_num(name, low=-math.inf, high=math.inf, low_open=False, high_open=False, optional=False):
            value = getattr(self, name)
            if optional and value is None:
                return
            text = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            if not is_num(value) or value < low or value > high or (low_open and value == low) or (
                high_open and value == high
            ):
                bad(name, text + (" or None" if optional else ""))

        check_choice("strategy", STRATEGIES)
        check_int("steps", 1)
        check_int("gen_length", 1, optional=True)
        check_int("max_new_tokens", 1, optional=True)
        check_int("block_length", 1, optional=True)
        check_num("temperature", 0.0, optional=True)
        if self.temperature == 0 and self.strategy in ("mdlm", "remdm", "roar"):
            raise ValueError(f"temperature must be > 0 for strategy={self.strategy!r}, got 0")
        check_num("top_p", 0.0, 1.0, low_open=True, optional=True)
        check_int("top_k", 1, optional=True)
        seed = self.seed
        if seed is not None:
            seeds = seed if isinstance(seed, (list, tuple)) else [seed]
            if not seeds or not all(is_int(s) and s >= 0 for s in seeds):
                bad("seed", "None, an integer >= 0 or a non-empty list of them")
        for name in ("stop_at_eos", "output_diagnostics"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "True or False")
        check_choice("integrator", INTEGRATORS)
        check_choice("snr_schedule", SCHEDULES)
        check_num("snr_min", 0.0, low_open=True)
        check_num("snr_max", 0.0, low_open=True, optional=True)
        if self.snr_max is not None and self.snr_max <= self.snr_min:
            bad("snr_max", f"greater than snr_min={self.snr_min}")
        check_num("noise_scale", 0.0)
        check_int("posterior_top_k", 1, optional=True)
        check_choice("remdm_mode", REMDM_MODES)
        check_num("eta", 0.0, 1.0, optional=True)
        check_num("t_on", 0.0, 1.0)
        check_num("t_off", 0.0, 1.0)
        if self.remdm_mode == "loop" and "remdm" in self.discrete_samplers() and self.t_off >= self.t_on:
            bad("t_off", f"smaller than t_on={self.t_on}")
        check_num("alpha_on", 0.0, 1.0, low_open=True, high_open=True)
        check_num("switch_snr", 0.0, low_open=True, optional=True)
        check_int("switch_steps", 1, optional=True)
        check_choice("hybrid_finish", HYBRID_FINISHES)
        block_steps = self.steps
        if self.strategy == "hybrid":
            sde_steps, block_steps = self.hybrid_step_split()
            if block_steps < 1:
                cost = "" if self.integrator == "euler" else " (Heun: 2 evaluations per SDE step)"
                raise ValueError(
                    f"switch_steps={sde_steps} leaves no discrete steps{cost}: the SDE phase costs "
                    f"{self.steps - block_steps} of steps={self.steps}"
                )
        gen_length = self.gen_length if self.gen_length is not None else self.max_new_tokens
        if "low_confidence" in self.discrete_samplers() and gen_length is not None and self.block_length is not None:
            if gen_length % self.block_length:
                raise ValueError(
                    f"block_length={self.block_length} must divide gen_length={gen_length} (gen_length % block_length != 0)"
                )
            blocks = gen_length // self.block_length
            if block_steps % blocks:
                what = "steps" if self.strategy == "low_confidence" else "the finish's steps (steps - SDE cost)"
                raise ValueError(
                    f"steps: {what} = {block_steps} must be a multiple of the number of blocks "
                    f"gen_length // block_length = {blocks}"
                )
        check_num("hybrid_threshold", 0.0, 1.0)
        check_choice("remasking", REMASKINGS)
        check_num("cfg_scale", 0.0)
        check_int("roar_tokens_per_step", 1, optional=True)
        check_choice("roar_order", ROAR_ORDERS)
        check_num("correct_snr", 0.0, low_open=True)
        check_num("correct_threshold", 0.0, 1.0)

    def discrete_samplers(self):
        """The discrete samplers `strategy` runs: hybrid runs its finish."""
        if self.strategy == "hybrid":
            return (self.hybrid_finish,)
        return (self.strategy,)

    def hybrid_step_split(self):
        """(SDE integration steps S, finish steps F) of hybrid: S = switch_steps (None →
        max(1, steps // 4)), F = steps − c·S with c = 1 (Euler) or 2 (Heun), so that the total
        NFE is steps + 1 (the + 1 being the draft decode)."""
        sde_steps = self.switch_steps if self.switch_steps is not None else max(1, self.steps // 4)
        cost = 2 if self.integrator == "heun" else 1
        return sde_steps, self.steps - cost * sde_steps

    def used_fields(self):
        """The tunable fields `strategy` reads (see the class docstring)."""
        draw = {"temperature", "top_p", "top_k"}
        sde_fields = {"integrator", "snr_schedule", "snr_min", "snr_max", "noise_scale", "posterior_top_k"}
        remdm_fields = draw | {"remdm_mode"}
        if self.remdm_mode != "conf":
            remdm_fields.add("eta")
        if self.remdm_mode == "loop":
            remdm_fields |= {"t_on", "t_off", "alpha_on"}
        lc_fields = draw | {"block_length", "remasking", "cfg_scale", "stop_at_eos"}
        general = {"gen_length", "max_new_tokens"}
        by_strategy = {
            "sde": general | sde_fields,
            "mdlm": general | draw,
            "remdm": general | remdm_fields,
            "low_confidence": general | lc_fields,
            "roar": general | draw | {"roar_tokens_per_step", "roar_order"},
            "correct": {"correct_snr", "correct_threshold"},
        }
        if self.strategy == "hybrid":
            finish = lc_fields if self.hybrid_finish == "low_confidence" else remdm_fields
            return general | sde_fields | finish | {"switch_snr", "switch_steps", "hybrid_finish", "hybrid_threshold"}
        return by_strategy.get(self.strategy, set())

    @classmethod
    def tunable_defaults(cls):
        """Default of every field that only some strategies use."""
        defaults = {k: v for k, v in cls._DIFFUSION_DEFAULTS.items()
                    if k not in ("strategy", "steps", "seed", "output_diagnostics")}
        defaults.update(temperature=None, top_p=None, top_k=None, max_new_tokens=None)
        return defaults

    @classmethod
    def from_model_config(cls, *args, **kwargs):
        raise NotImplementedError("DSLGenerationConfig is not derived from the model config")


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
        try:
            self.generation_config = self.generation_config_class.from_pretrained(
                pretrained_model_name_or_path, cache_dir=cache_dir, force_download=force_download, proxies=proxies,
                local_files_only=local_files_only, token=token, revision=revision, subfolder=subfolder,
                _from_auto=from_auto_class, _from_pipeline=from_pipeline,
            )
        except OSError:
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
            sequences (B, P_max + G): left-padded prompt then G generated tokens; tokens after the
            first EOS of each row are replaced by the pad id (pad_token_id, else eos_token_id,
            else the mask id); in a row without a prompt an EOS at the first generated position
            (BOS = EOS of MDLM-style models) does not count as the first EOS. Row r of a batch equals generating
            row r alone with seed `seed + r` (batch-composition invariant).
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
            if config.strategy == "correct":
                output = self._generate_correct(input_ids, attention_mask, config, prompts, device, streamer,
                                                progress_bar)
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
        for name, default in config.tunable_defaults().items():
            if name in kwargs and name not in used and kwargs[name] != default:
                hint = ""
                if name == "stop_at_eos":
                    hint = " (only low_confidence and hybrid with hybrid_finish='low_confidence' honour it)"
                logger.warning("generate(): %s=%r is ignored by strategy=%r%s", name, kwargs[name],
                               config.strategy, hint)

    def _split_prompts(self, input_ids, attention_mask, config, device) -> List[torch.Tensor]:
        repeats = config.num_return_sequences or 1
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"num_return_sequences must be an integer >= 1, got {repeats!r}")
        if input_ids is None:
            if attention_mask is not None:
                raise ValueError("attention_mask given without input_ids")
            return [torch.zeros(0, dtype=torch.long, device=device) for _ in range(repeats)]
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
            )
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
        denoiser = Denoiser.from_model(self, attn)
        callback = self._streamer_callback(streamer, prompts, lengths, gen_len, eos_list) if streamer is not None else None
        # MDLM-style rows start with BOS = EOS: without a prompt, an EOS at the first generated
        # position is not an end of text.
        skip_first = torch.tensor([n == 0 for n in lengths], dtype=torch.bool, device=device)
        result = self._run_sampler(denoiser, tokens, generate_mask, config, generators, gen_len, callback,
                                   progress_bar, eos_list, skip_first)

        # Re-layout: left-pad prompts to `longest`, then the G generated tokens.
        sequences = torch.full((batch, total), pad_id, dtype=torch.long, device=device)
        out_mask = torch.zeros(batch, total, dtype=torch.long, device=device)
        generated = torch.stack([result.tokens[r, lengths[r] : lengths[r] + gen_len] for r in range(batch)])
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

    def _run_sampler(self, denoiser, tokens, generate_mask, config, generators, gen_len, callback, progress,
                     eos_list, skip_first=None):
        strategy = config.strategy
        common = dict(generator=generators, diagnostics=config.output_diagnostics, callback=callback,
                      progress=progress)
        temperature = 1.0 if config.temperature is None else config.temperature
        snr_max = config.snr_max if config.snr_max is not None else float(self.config.snr_max)
        if strategy in ("sde", "hybrid") and config.snr_min >= snr_max:
            raise ValueError(f"snr_min={config.snr_min} must be smaller than snr_max={snr_max}")
        remdm_kwargs = dict(mode=config.remdm_mode, eta=config.eta, t_on=config.t_on, t_off=config.t_off,
                            alpha_on=config.alpha_on, temperature=temperature, top_p=config.top_p,
                            top_k=config.top_k)
        if strategy == "sde":
            path = snr_schedule(config.snr_schedule, config.steps, config.snr_min, snr_max)
            return sde(denoiser, tokens, generate_mask, path, integrator=config.integrator,
                       noise_scale=config.noise_scale, posterior_top_k=config.posterior_top_k, **common)
        if strategy == "mdlm":
            return mdlm(denoiser, tokens, generate_mask, steps=config.steps, temperature=temperature,
                        top_p=config.top_p, top_k=config.top_k, **common)
        if strategy == "remdm":
            return remdm(denoiser, tokens, generate_mask, steps=config.steps, **remdm_kwargs, **common)
        if strategy == "low_confidence":
            lc_temperature = 0.0 if config.temperature is None else config.temperature
            return low_confidence(denoiser, tokens, generate_mask, steps=config.steps,
                                  block_length=config.block_length, temperature=lc_temperature,
                                  remasking=config.remasking, cfg_scale=config.cfg_scale, top_p=config.top_p,
                                  top_k=config.top_k, eos_token_id=eos_list or None,
                                  stop_at_eos=config.stop_at_eos, skip_leading_eos=skip_first, **common)
        if strategy == "roar":
            per_step = config.roar_tokens_per_step or max(1, math.ceil(gen_len / config.steps))
            return roar(denoiser, tokens, generate_mask, tokens_per_step=per_step, order=config.roar_order,
                        temperature=temperature, top_p=config.top_p, top_k=config.top_k, **common)
        if strategy == "hybrid":
            sde_steps, finish_steps = config.hybrid_step_split()
            switch = config.switch_snr if config.switch_snr is not None else snr_max
            if switch <= config.snr_min:
                raise ValueError(f"switch_snr={switch} must be greater than snr_min={config.snr_min}")
            if config.hybrid_finish == "low_confidence":
                finish_kwargs = dict(temperature=0.0 if config.temperature is None else config.temperature,
                                     remasking=config.remasking, top_p=config.top_p, top_k=config.top_k,
                                     cfg_scale=config.cfg_scale, block_length=config.block_length,
                                     eos_token_id=eos_list or None, stop_at_eos=config.stop_at_eos,
                                     skip_leading_eos=skip_first)
            else:
                finish_kwargs = remdm_kwargs
            return hybrid(denoiser, tokens, generate_mask, sde_steps=sde_steps,
                          finish_steps=finish_steps, switch_snr=switch,
                          snr_min=config.snr_min, schedule=config.snr_schedule,
                          integrator=config.integrator, noise_scale=config.noise_scale,
                          posterior_top_k=config.posterior_top_k, threshold=config.hybrid_threshold,
                          finish=config.hybrid_finish, finish_kwargs=finish_kwargs, **common)
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")

    def _generate_correct(self, input_ids, attention_mask, config, prompts, device, streamer, progress_bar):
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
        denoiser = Denoiser.from_model(self, attn)
        if streamer is not None:
            streamer.put(tokens[0][attended[0]].cpu())
        result = correct(denoiser, tokens, attended, suspect_snr=config.correct_snr, steps=config.steps,
                         threshold=config.correct_threshold, diagnostics=config.output_diagnostics,
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
