"""`DSLTrainer`: DSL continued pretraining (paper §4.1, Algorithm 1) as a `transformers.Trainer`.

Per micro-batch, `compute_loss`

1. draws a per-token SNR γ for every position from the model config's mixture (ROAR endpoints with
   probability 1/k, LogNormal otherwise) through `modeling_dsl.noise_dsl.SNRSampler` — the one
   sampler of the project;
2. keeps prompt tokens of prompt/response rows clean — at the config's visible SNR γ_vis
   (`effective_visible_snr`) and noise-free, z = γ_vis·x, exactly as the samplers feed a prompt —
   and gives padding γ = 0 (padding keys are never attended to);
3. runs the model with `snr=` and `clean_mask=`: spherical embedding → z = γx + √γ ε →
   converter → backbone;
4. takes the token-mean cross-entropy (nats) over every non-pad, non-prompt position.

`objective="mdlm"` trains the masked-diffusion baseline with the same model, data and code: MDLM's
log-linear schedule (eps = 1e-3), antithetic (stratified) t per row, each target token masked
(γ = 0) with probability (1 − eps)·t, the rest visible (γ = γ_vis, noise-free: MDLM's one-hot
inputs); loss = Σ_masked CE/t divided by the number of target tokens, as MDLM reduces it.

Noise is reproducible: each micro-batch gets a `torch.Generator` seeded from (`args.seed`,
optimiser step, micro-batch index, process index), so a resumed run draws the same noise as an
uninterrupted one; Trainer restores the data order and the global RNG (dropout) itself.

Logged extras: `loss_snr_<lo>-<hi>` (mean CE of the scored tokens per SNR bucket, since the last
log) and, at each evaluation, `eval_ce_snr_<γ>` / `eval_acc_snr_<γ>` for γ in {0, 1, 5, 10, 20,
50, 100} (every target token at that SNR; the calibration view of the authors' code).
[`EMACallback`] keeps an exponential moving average of the weights (decay 0.999 as the authors),
saved as `ema.safetensors` in each checkpoint, restored on resume and swapped in for evaluation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from modeling_dsl.noise_dsl import SNRSampler, mdlm_masking

from .data import DSLDataCollator

logger = logging.getLogger(__name__)

OBJECTIVES = ("dsl", "mdlm")
EVAL_SNRS = (0.0, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0)
SNR_BUCKET_EDGES = (0.0, 1.0, 5.0, 20.0, 50.0)
EMA_WEIGHTS_NAME = "ema.safetensors"


def unwrap_to_dsl(model):
    """The `DSLForDiffusionLM` inside PEFT / DeepSpeed / DDP wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "module") and not hasattr(model, "config"):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            break
    if not hasattr(model, "config") or getattr(model.config, "model_type", None) != "dsl_diffusion":
        raise ValueError(f"model must be a DSLForDiffusionLM (optionally wrapped), got {type(model).__name__}")
    return model


def output_logits(outputs) -> torch.Tensor:
    """Logits from a model output (ModelOutput / dict, or the tuple of `return_dict=False`, where
    the loss is absent because no labels are passed)."""
    if isinstance(outputs, dict):
        return outputs["logits"]
    return outputs[0]


def target_cross_entropy(logits: torch.Tensor, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position CE (nats, fp32) of `input_ids` under `logits`, 0 where `targets` is False.

    Non-target positions (padding, prompt) may hold ids outside the model's vocabulary (e.g. a
    `[PAD]` id ≥ V); they are ignored, never indexed. A target id outside [0, V) is an error.
    """
    vocab = logits.shape[-1]
    check_target_ids(input_ids, targets, vocab)
    labels = input_ids.masked_fill(~targets, -100)
    per_token = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100)
    return per_token.view(input_ids.shape)


def check_target_ids(input_ids: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> None:
    """Raise `ValueError` if a target position holds an id outside [0, vocab_size)."""
    ids = input_ids[targets]
    if bool(((ids < 0) | (ids >= vocab_size)).any()):
        raise ValueError(f"input_ids hold target token ids outside the model's vocabulary [0, {vocab_size})")


def seed_from(*parts: int) -> int:
    """A 63-bit seed from integers (tuple hashing of ints is the same in every process and run)."""
    return hash(tuple(int(p) for p in parts)) & ((1 << 63) - 1)


# ----------------------------------------------------------------------------- EMA


class EMACallback(TrainerCallback):
    """Exponential moving average of the trainable weights, updated after every optimiser step.

    shadow ← decay·shadow + (1 − decay)·θ (no bias correction, as the authors' code). The shadow is
    saved as `ema.safetensors` inside every `checkpoint-*` folder, restored when training resumes
    through [`DSLTrainer.train`], and swapped into the model for evaluation when `use_for_eval`.

    Args:
        decay: EMA decay in [0, 1).
        use_for_eval: evaluate with the EMA weights (DSLTrainer swaps them in and back).

    ZeRO-3 partitions parameters across ranks, so this callback refuses it (use ZeRO-2).
    """

    def __init__(self, decay: float = 0.999, use_for_eval: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.use_for_eval = use_for_eval
        self.shadow: Optional[dict[str, torch.Tensor]] = None
        self.resume_from: Optional[str] = None

    # -- helpers
    @staticmethod
    def _params(model) -> dict[str, torch.nn.Parameter]:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if any(hasattr(p, "ds_id") for p in params.values()):
            raise ValueError("EMACallback does not support DeepSpeed ZeRO-3 (partitioned parameters); use ZeRO-2")
        return params

    def init_from(self, model) -> None:
        """Start the average at the model's current trainable weights."""
        self.shadow = {n: p.detach().float().clone() for n, p in self._params(model).items()}

    @torch.no_grad()
    def update(self, model) -> None:
        """One EMA step toward the model's current weights."""
        if self.shadow is None:
            self.init_from(model)
            return
        for name, p in self._params(model).items():
            self.shadow[name].mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights (name → fp32 tensor)."""
        if self.shadow is None:
            raise ValueError("EMA has no weights yet (training has not started)")
        return {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], model) -> None:
        """Restore the shadow; names must match the model's trainable parameters."""
        params = self._params(model)
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the model: missing {missing}, unexpected {unexpected}")
        self.shadow = {n: state[n].to(device=params[n].device, dtype=torch.float32).clone() for n in params}

    def save(self, folder: str) -> str:
        """Write `ema.safetensors` into `folder`; returns its path."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, EMA_WEIGHTS_NAME)
        save_file(self.state_dict(), path, metadata={"decay": str(self.decay)})
        return path

    def load(self, folder: str, model) -> None:
        """Read `ema.safetensors` from `folder`."""
        from safetensors.torch import load_file

        path = os.path.join(folder, EMA_WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {EMA_WEIGHTS_NAME} in {folder}: the checkpoint was saved without EMA")
        self.load_state_dict(load_file(path), model)

    @contextlib.contextmanager
    def swapped_in(self, model):
        """Context manager: the model holds the EMA weights inside, its own weights after."""
        if self.shadow is None:
            yield model
            return
        params = self._params(model)
        backup = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(backup[n])

    # -- Trainer events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.resume_from is None and state.global_step > 0:
            # Resumed by a plain Trainer: the checkpoint is output_dir/checkpoint-<step>.
            candidate = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isfile(os.path.join(candidate, EMA_WEIGHTS_NAME)):
                self.resume_from = candidate
            else:
                logger.warning("Resuming at step %d without %s: EMA restarts from the current weights",
                               state.global_step, EMA_WEIGHTS_NAME)
        if self.resume_from is not None:
            self.load(self.resume_from, model)
            logger.info("Restored EMA weights from %s", self.resume_from)
            self.resume_from = None
        elif self.shadow is None:
            self.init_from(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.update(model)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save and self.shadow is not None:
            self.save(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))


# ----------------------------------------------------------------------------- trainer


def training_record(trainer) -> dict:
    """What `training_args.json` holds (read by the model card): the objective, the optimizer step,
    the process count, DSLTrainer's own options and every `TrainingArguments` field (tokens
    redacted by `TrainingArguments.to_json_string`)."""
    ema = trainer.ema_callback
    return {"objective": trainer.objective, "global_step": trainer.state.global_step,
            "world_size": trainer.args.world_size, "converter_lr_multiplier": trainer.converter_lr_multiplier,
            "ema_decay": ema.decay if ema is not None else None,
            "training_arguments": json.loads(trainer.args.to_json_string())}


def write_checkpoint_card(trainer, output_dir: str) -> None:
    """`training_args.json` and the model card (README.md, `model_cards`) of a saved model or PEFT
    adapter folder; PEFT's own template card (a page of "[More Information Needed]") is replaced."""
    from model_cards import TRAINING_ARGS_FILE, write_model_card

    training = training_record(trainer)
    with open(os.path.join(output_dir, TRAINING_ARGS_FILE), "w", encoding="utf-8") as f:
        json.dump(training, f, indent=2)
        f.write("\n")
    dsl = unwrap_to_dsl(trainer.model)
    base = getattr(dsl.config, "name_or_path", None) or None
    config = dsl.config.to_dict() if hasattr(trainer.model, "peft_config") else None
    write_model_card(output_dir, config=config, training=training, base_model=base,
                     generation_config=dsl.generation_config.to_dict())


# Samplers that feed only masked (γ = 0) and visible tokens: the ones an MDLM-objective model serves.
MASKED_STRATEGIES = ("mdlm", "remdm", "low_confidence", "roar")


def record_objective(model, objective: str) -> None:
    """Record the training objective in the model's config (`training_objective`, saved in
    config.json), and give an `objective="mdlm"` model a masked sampler (`mdlm`) as its saved
    generation default unless one is already set: such a model never saw the intermediate SNRs the
    `sde` / `hybrid` / `correct` samplers feed."""
    model.config.training_objective = objective
    generation = getattr(model, "generation_config", None)
    if objective == "mdlm" and generation is not None and getattr(generation, "strategy", None) not in MASKED_STRATEGIES:
        logger.info("objective='mdlm': the saved generation default becomes strategy='mdlm' (was %r)",
                    generation.strategy)
        generation.strategy = "mdlm"


class DSLTrainer(Trainer):
    """`transformers.Trainer` for DSL models (Algorithm 1) and the MDLM baseline.

    Args (besides `Trainer`'s):
        objective: `"dsl"` (per-token mixed SNR, CE on every target token) or `"mdlm"` (masked
            diffusion, log-linear schedule, 1/t weights, masked tokens only).
        snr_sampler: override the SNR sampler (default: `SNRSampler.from_config(model.config)`).
        eval_snrs: SNRs of the fixed-SNR evaluation sweep (empty to skip it).
        eval_max_batches: at most this many eval batches in the fixed-SNR sweep (None: all).
        snr_bucket_edges: increasing lower edges of the SNR buckets of the training-loss log.
        mdlm_eps: the log-linear schedule's eps.
        ema_decay: convenience: add an [`EMACallback`] with this decay (unless one is in `callbacks`).
        converter_lr_multiplier: the converter's parameters form their own optimizer groups at
            `learning_rate × multiplier` (the schedule scales every group alike). DSL-LLaDA used 25
            through gradient hooks (DSL_CONVERTER_LR_SCALE), which under Adam barely changes the step
            and mostly shrinks the backbone's gradients through clipping (reference llada_dsl.md §5.4);
            a parameter group is the real multiplier. 1.0 = one learning rate.

    Batches hold `input_ids`, `attention_mask` and optionally `prompt_mask` (see
    `trainers.data.DSLDataCollator`, the default collator); `remove_unused_columns` is turned off so
    `prompt_mask` survives.
    """

    # compute_loss returns a per-micro-batch mean: Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model=None, args=None, data_collator=None, *, objective: str = "dsl",
                 snr_sampler: Optional[SNRSampler] = None, eval_snrs: Sequence[float] = EVAL_SNRS,
                 eval_max_batches: Optional[int] = None, snr_bucket_edges: Sequence[float] = SNR_BUCKET_EDGES,
                 mdlm_eps: float = 1e-3, ema_decay: Optional[float] = None, converter_lr_multiplier: float = 1.0,
                 **kwargs):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        edges = [float(e) for e in snr_bucket_edges]
        if not edges or edges[0] != 0.0 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"snr_bucket_edges must be increasing and start at 0, got {list(snr_bucket_edges)}")
        if any(float(s) < 0 for s in eval_snrs):
            raise ValueError(f"eval_snrs must be >= 0, got {list(eval_snrs)}")
        if eval_max_batches is not None and eval_max_batches < 1:
            raise ValueError(f"eval_max_batches must be >= 1 or None, got {eval_max_batches}")
        if not 0.0 < mdlm_eps < 1.0:
            raise ValueError(f"mdlm_eps must be in (0, 1), got {mdlm_eps}")
        if not converter_lr_multiplier > 0:
            raise ValueError(f"converter_lr_multiplier must be > 0, got {converter_lr_multiplier}")
        self.converter_lr_multiplier = float(converter_lr_multiplier)
        dsl_model = unwrap_to_dsl(model)
        self.dsl_config = dsl_model.config
        record_objective(dsl_model, objective)
        if data_collator is None:
            processing = kwargs.get("processing_class")
            pad = getattr(processing, "pad_token_id", None)
            if pad is None:
                pad = getattr(processing, "eos_token_id", None)
            data_collator = DSLDataCollator(pad_token_id=0 if pad is None else int(pad))
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if ema_decay is not None and not any(isinstance(c, EMACallback) for c in callbacks):
            callbacks.append(EMACallback(decay=ema_decay))
        super().__init__(model=model, args=args, data_collator=data_collator, callbacks=callbacks, **kwargs)
        if self.args.remove_unused_columns:
            self.args.remove_unused_columns = False  # keep `prompt_mask`; the collator drops the rest
        self.model_accepts_loss_kwargs = False
        self.objective = objective
        self.snr_sampler = snr_sampler if snr_sampler is not None else SNRSampler.from_config(self.dsl_config)
        self.eval_snrs = tuple(float(s) for s in eval_snrs)
        self.eval_max_batches = eval_max_batches
        self.snr_bucket_edges = tuple(edges)
        self.mdlm_eps = mdlm_eps
        self._noise_step, self._noise_micro, self._eval_batch = -1, 0, 0
        self._bucket_sums: Optional[torch.Tensor] = None
        self._bucket_counts: Optional[torch.Tensor] = None

    def create_optimizer(self, model=None):
        """Trainer's optimizer, with the converter's parameters in groups of their own at
        `learning_rate × converter_lr_multiplier` when the multiplier is not 1."""
        if self.converter_lr_multiplier == 1.0 or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = []
        for converter in (False, True):
            for decayed in (True, False):
                params = [p for n, p in opt_model.named_parameters()
                          if p.requires_grad and (n in decay) == decayed and ("converter" in n.split(".")) == converter]
                if params:
                    group = {"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0}
                    if converter:
                        group["lr"] = self.args.learning_rate * self.converter_lr_multiplier
                    groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # ------------------------------------------------------------------ helpers
    @property
    def ema_callback(self) -> Optional[EMACallback]:
        """The registered [`EMACallback`], if any."""
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, EMACallback):
                return cb
        return None

    def bucket_names(self) -> list[str]:
        """Log keys of the SNR buckets, e.g. `loss_snr_0-1`, …, `loss_snr_50-inf`."""
        edges = list(self.snr_bucket_edges) + [float("inf")]
        return [f"loss_snr_{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]

    def noise_generator(self, device, training: bool) -> torch.Generator:
        """A generator seeded from (seed, step, micro-batch, rank) in training, (seed, eval batch,
        rank) in evaluation: the same noise after a resume as in an uninterrupted run."""
        rank = self.args.process_index
        if training:
            step = self.state.global_step
            if step != self._noise_step:
                self._noise_step, self._noise_micro = step, 0
            seed = seed_from(self.args.seed, 0, step, self._noise_micro, rank)
            self._noise_micro += 1
        else:
            seed = seed_from(self.args.seed, 1, self._eval_batch, rank)
            self._eval_batch += 1
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        return generator

    @staticmethod
    def _masks(inputs):
        input_ids = inputs["input_ids"]
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        attention_mask = inputs.get("attention_mask")
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        prompt = inputs.get("prompt_mask")
        prompt = torch.zeros_like(valid) if prompt is None else (prompt.bool() & valid)
        model_mask = None if attention_mask is None or bool(valid.all()) else attention_mask
        return input_ids, valid, prompt, model_mask

    def corrupt_batch(self, inputs, generator: torch.Generator):
        """SNRs, loss weights and noise-free positions for one batch under the trainer's objective.

        Returns (snr (B, L) fp32; weights (B, L) fp32, 0 where a position does not count; the
        number of target tokens the loss is divided by; clean (B, L) bool, positions fed
        noise-free, z = γ_vis·x at the config's visible SNR: prompt tokens, and MDLM's visible
        tokens, exactly as the samplers feed them at inference).
        """
        input_ids, valid, prompt, _ = self._masks(inputs)
        batch, length = input_ids.shape
        device = input_ids.device
        targets = valid & ~prompt
        visible_snr = float(self.dsl_config.effective_visible_snr)
        if self.objective == "dsl":
            snr = self.snr_sampler.sample(batch, length, generator=generator, device=device)
            weights = targets.float()
            clean = prompt
        else:
            t, masked = mdlm_masking(batch, length, generator, device, self.mdlm_eps)
            masked = masked & targets
            snr = torch.where(masked, torch.zeros((), device=device), torch.full((), visible_snr, device=device))
            weights = masked.float() / t[:, None]
            clean = valid & ~masked
        snr = torch.where(prompt, torch.full_like(snr, visible_snr), snr)
        snr = torch.where(valid, snr, torch.zeros_like(snr))
        return snr, weights, targets.sum(), clean

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Algorithm 1 (or the MDLM objective) on one micro-batch; a token mean in nats."""
        input_ids, valid, prompt, model_mask = self._masks(inputs)
        # before the model sees them: a target id outside E would otherwise meet its SNR check first
        check_target_ids(input_ids, valid & ~prompt, self.dsl_config.vocab_size)
        generator = self.noise_generator(input_ids.device, training=model.training)
        snr, weights, n_targets, clean = self.corrupt_batch(inputs, generator)
        # The model computes Σ weights·CE / n_targets itself; without `return_outputs` by the chunked LM
        # head + CE (`return_logits=False`), which keeps no (B, L, V) logits for backward.
        outputs = model(input_ids=input_ids, snr=snr, attention_mask=model_mask, generator=generator,
                        clean_mask=clean, labels=input_ids.masked_fill(~(weights > 0), -100), label_weights=weights,
                        num_items_in_batch=n_targets, return_logits=return_outputs, return_dict=True)
        loss = outputs["loss"]
        if model.training:
            self._accumulate_buckets(outputs["token_loss"], snr, weights > 0)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _accumulate_buckets(self, per_token, snr, counted):
        edges = torch.tensor(self.snr_bucket_edges, device=snr.device)
        index = (torch.bucketize(snr, edges, right=True) - 1).clamp(min=0)[counted]
        values = per_token[counted].float()
        n = len(self.snr_bucket_edges)
        if self._bucket_sums is None:
            self._bucket_sums = torch.zeros(n, device=snr.device, dtype=torch.float64)
            self._bucket_counts = torch.zeros(n, device=snr.device, dtype=torch.float64)
        self._bucket_sums.index_add_(0, index, values.double())
        self._bucket_counts.index_add_(0, index, torch.ones_like(values, dtype=torch.float64))

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        """Adds the per-SNR-bucket training CE (since the last log) to training logs."""
        if "loss" in logs and self._bucket_sums is not None:
            sums, counts = self._bucket_sums, self._bucket_counts
            if self.args.world_size > 1:
                sums, counts = self.accelerator.reduce(sums, "sum"), self.accelerator.reduce(counts, "sum")
            for name, s, c in zip(self.bucket_names(), sums.tolist(), counts.tolist()):
                if c > 0:
                    logs[name] = round(s / c, 4)
            self._bucket_sums = self._bucket_counts = None
        super().log(logs, start_time)

    # ------------------------------------------------------------------ evaluation
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation loss = the training objective with reproducible (per eval batch) noise."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._eval_batch = 0
        output = super().evaluation_loop(dataloader, description, prediction_loss_only=True,
                                         ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self.eval_snrs:
            output.metrics.update(self.fixed_snr_metrics(dataloader, metric_key_prefix))
        return output

    @torch.no_grad()
    def fixed_snr_metrics(self, dataloader, prefix: str = "eval") -> dict[str, float]:
        """CE (nats) and token accuracy with every target token at each SNR of `eval_snrs`.

        Prompt tokens stay at the visible SNR (noise-free) and padding is ignored, as in training.
        """
        model = self.model
        was_training = model.training
        model.eval()
        n = len(self.eval_snrs)
        ce_sum = torch.zeros(n, dtype=torch.float64, device=self.args.device)
        hit_sum = torch.zeros(n, dtype=torch.float64, device=self.args.device)
        count = torch.zeros((), dtype=torch.float64, device=self.args.device)
        visible_snr = float(self.dsl_config.effective_visible_snr)
        for b, inputs in enumerate(dataloader):
            if self.eval_max_batches is not None and b >= self.eval_max_batches:
                break
            inputs = self._prepare_inputs(inputs)
            input_ids, valid, prompt, model_mask = self._masks(inputs)
            targets = valid & ~prompt
            count += targets.sum()
            for i, gamma in enumerate(self.eval_snrs):
                snr = torch.full(input_ids.shape, gamma, device=input_ids.device)
                snr = torch.where(prompt, torch.full_like(snr, visible_snr), snr)
                snr = torch.where(valid, snr, torch.zeros_like(snr))
                generator = torch.Generator(device=input_ids.device)
                generator.manual_seed(seed_from(self.args.seed, 2, b, i, self.args.process_index))
                with self.compute_loss_context_manager():
                    logits = output_logits(model(input_ids=input_ids, snr=snr, attention_mask=model_mask,
                                                 generator=generator, clean_mask=prompt)).float()
                ce = target_cross_entropy(logits, input_ids, targets)
                ce_sum[i] += ce.sum()
                hit_sum[i] += ((logits.argmax(-1) == input_ids) & targets).sum()
        if self.args.world_size > 1:
            ce_sum, hit_sum, count = (self.accelerator.reduce(t, "sum") for t in (ce_sum, hit_sum, count))
        model.train(was_training)
        metrics = {}
        denom = max(float(count), 1.0)
        for i, gamma in enumerate(self.eval_snrs):
            metrics[f"{prefix}_ce_snr_{gamma:g}"] = round(float(ce_sum[i]) / denom, 4)
            metrics[f"{prefix}_acc_snr_{gamma:g}"] = round(float(hit_sum[i]) / denom, 4)
        return metrics

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """`Trainer.evaluate`, with the EMA weights swapped in when an EMA callback asks for it."""
        ema = self.ema_callback
        if ema is not None and ema.use_for_eval and ema.shadow is not None:
            with ema.swapped_in(self.model):
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    # ------------------------------------------------------------------ training / saving
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`; on resume the EMA callback also reloads `ema.safetensors`."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but no checkpoint found in {self.args.output_dir}")
        if resume_from_checkpoint is False:
            resume_from_checkpoint = None
        ema = self.ema_callback
        if ema is not None and resume_from_checkpoint is not None:
            ema.resume_from = resume_from_checkpoint
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        """`Trainer._save`, plus `training_args.json` and a model card (README.md) beside the weights
        (`write_checkpoint_card`); a PEFT adapter folder gets a real card instead of PEFT's template."""
        super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            write_checkpoint_card(self, output_dir)

    def save_ema_model(self, output_dir: str) -> None:
        """Save the model with the EMA weights swapped in (a loadable `save_pretrained` folder)."""
        ema = self.ema_callback
        if ema is None or ema.shadow is None:
            raise ValueError("no EMA weights to save: train with an EMACallback (ema_decay) first")
        with ema.swapped_in(self.model):
            self.save_model(output_dir)
