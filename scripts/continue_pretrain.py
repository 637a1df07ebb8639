#!/usr/bin/env python
"""DSL continued pretraining (paper §4.1, Algorithm 1) with `transformers.Trainer`.

Start from a DSL checkpoint (`--model_name_or_path`), an MDLM checkpoint (`--mdlm_checkpoint`,
converted with `DSLForDiffusionLM.from_mdlm`), a LLaDA / released DSL-LLaDA checkpoint
(`--llada_checkpoint`, `DSLForDiffusionLM.from_llada`) or a fresh config (`--config_overrides` only); train
on packed text blocks or prompt/response pairs; save a folder that loads with
`AutoModel.from_pretrained(output_dir, trust_remote_code=True)` (or a PEFT adapter with `--use_lora`).

Examples:

    # single process (CPU or one GPU)
    python scripts/continue_pretrain.py --mdlm_checkpoint kuleshov-group/mdlm-owt \\
        --tokenizer_name gpt2 --dataset_name Salesforce/wikitext --dataset_config_name wikitext-103-raw-v1 \\
        --block_size 1024 --output_dir out/dsl-owt --max_steps 10000 --learning_rate 3e-4 \\
        --per_device_train_batch_size 8 --bf16 --ema_decay 0.999

    # DeepSpeed ZeRO-3 on 8 GPUs
    accelerate launch --num_processes 8 --config_file trainers/configs/accelerate_zero3.yaml scripts/continue_pretrain.py \\
        --model_name_or_path path/to/dsl --train_file data.jsonl --output_dir out/run

    # resume the latest checkpoint in output_dir
    python scripts/continue_pretrain.py ... --resume_from_checkpoint latest

DeepSpeed on one CPU process needs RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR MASTER_PORT set by the
launcher; several CPU processes do not work through the HF integration (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain clone without installing

import transformers  # noqa: E402
from transformers import HfArgumentParser, TrainingArguments, set_seed  # noqa: E402

from modeling_dsl import DSLConfig, DSLForDiffusionLM, load_tokenizer as load_checkpoint_tokenizer  # noqa: E402
from scripts.cli_checks import check_input_file, check_output_dir, check_source  # noqa: E402
from modeling_dsl.configuration_dsl import SNR_PRESETS  # noqa: E402
from trainers.data import (  # noqa: E402
    detokenize_wikitext,
    load_raw_dataset,
    pack_dataset,
    prompt_response_dataset,
    split_train_eval,
)
from trainers.dsl_trainer import OBJECTIVES, DSLTrainer, EMACallback  # noqa: E402

logger = logging.getLogger("continue_pretrain")

# The training-time fields of a preset (SNR distribution and visible SNR) that --snr_preset applies
# to a loaded checkpoint. β₀ and the mask bias are not among them: they are already learned weights
# (the config then records snr_preset "custom" when they differ from the preset's).
SNR_FIELDS = ("snr_preset", "snr_granularity", "roar_row_rule", "roar_type", "roar_prob", "snr_max", "snr_min",
              "roar_c", "lognormal_mu", "lognormal_sigma", "snr_clip", "lognormal_max", "visible_snr")
# Fields --config_overrides may change on a loaded checkpoint: training-time settings only. The
# others describe the weights (shapes, init) and would make the saved config disagree with them.
TRAINING_FIELDS = SNR_FIELDS + ("dropout",)


@dataclass
class ModelArguments:
    """Where the model comes from and what trains."""

    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "DSL checkpoint (folder or Hub id)."})
    mdlm_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "MDLM checkpoint (kuleshov-group/mdlm-owt format) converted with from_mdlm."})
    llada_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "LLaDA (GSAI-ML/LLaDA-8B-* format) or released DSL-LLaDA checkpoint converted "
                                        "with from_llada (preset dsl_llada; LM head, E and wte frozen as the authors)."})
    converter_lr_multiplier: float = field(
        default=1.0, metadata={"help": "Converter learning rate = learning_rate × this, as a parameter group "
                                       "(DSL-LLaDA: 25, applied there as a gradient hook)."})
    config_overrides: Optional[str] = field(
        default=None,
        metadata={"help": "Comma-separated DSLConfig fields, e.g. 'hidden_size=256,num_hidden_layers=4'. Alone: "
                          "build a fresh model (vocab_size defaults to the tokenizer's)."})
    snr_preset: Optional[str] = field(
        default=None, metadata={"help": "Preset: 'paper', 'authors_code' or 'dsl_llada' (training SNR distribution, "
                                        "visible SNR; converter init for new models). Default: the checkpoint's; "
                                        "'paper' for fresh and MDLM-converted models, 'dsl_llada' for LLaDA."})
    objective: str = field(default="dsl", metadata={"help": f"Training objective, one of {OBJECTIVES}."})
    freeze_lm_head: bool = field(default=False, metadata={"help": "Freeze the output layer (LM head)."})
    freeze_embeddings: bool = field(
        default=False, metadata={"help": "Freeze the spherical token embeddings E (DSL-LLaDA freezes them)."})
    train_converter_only: bool = field(default=False, metadata={"help": "Train only the softmax converter."})
    use_lora: bool = field(default=False, metadata={"help": "PEFT LoRA on the backbone; the converter trains fully."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: Optional[str] = field(
        default=None,
        metadata={"help": "LoRA targets: a regular expression over full module names (PEFT full match) when it "
                          "contains one of '*\\()|', else comma-separated module-name suffixes. Default: the "
                          "backbone's own targets (MDLM DiT: the attention and MLP linears of every block)."})
    lora_modules_to_save: str = field(
        default="converter", metadata={"help": "Comma-separated modules trained fully and stored in the adapter."})
    ema_decay: Optional[float] = field(
        default=None, metadata={"help": "Keep an EMA of the weights with this decay (authors: 0.999); used for "
                                        "evaluation and saved to <output_dir>/ema. Not with DeepSpeed ZeRO-3 "
                                        "(partitioned parameters): use ZeRO-2."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete what --output_dir already holds and train from scratch there. "
                                         "Without it (or --resume_from_checkpoint) a non-empty --output_dir is "
                                         "refused, so a finished run is never replaced."})


@dataclass
class DataArguments:
    """What the model trains on."""

    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset name."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_file: Optional[str] = field(default=None, metadata={"help": "Text / jsonl / csv / parquet file or folder."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Held-out file (same formats)."})
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer (default: the one saved with --model_name_or_path)."})
    text_column: str = field(default="text", metadata={"help": "Column holding documents."})
    prompt_column: Optional[str] = field(
        default=None, metadata={"help": "Set to train on prompt/response pairs (prompt tokens stay clean)."})
    response_column: str = field(default="response", metadata={"help": "Response column of prompt/response data."})
    block_size: int = field(default=128, metadata={"help": "Row length (packed blocks; max length of pairs)."})
    sample_by: str = field(default="line", metadata={"help": "Text files: 'line', 'paragraph' or 'document'."})
    wikitext_detokenize: bool = field(default=False, metadata={"help": "Undo WikiText '@-@' markers first."})
    validation_split_percentage: float = field(
        default=5.0, metadata={"help": "Held-out share of the train rows when there is no validation data."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Keep at most this many train rows."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Keep at most this many eval rows."})
    eval_max_batches: Optional[int] = field(
        default=None, metadata={"help": "Batches used by the fixed-SNR evaluation sweep (default: all)."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Workers for datasets.map."})


def parse_overrides(text: Optional[str]) -> dict:
    """'a=1,b=x,c=true' → {'a': 1, 'b': 'x', 'c': True}."""
    out = {}
    if not text:
        return out
    for item in text.split(","):
        if "=" not in item:
            raise ValueError(f"config_overrides items must look like key=value, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        lowered = value.lower()
        if lowered in ("true", "false"):
            out[key] = lowered == "true"
        elif lowered in ("none", "null"):
            out[key] = None
        else:
            try:
                out[key] = int(value)
            except ValueError:
                try:
                    out[key] = float(value)
                except ValueError:
                    out[key] = value
    return out


def check_arguments(model_args: ModelArguments, data_args: DataArguments) -> None:
    """Raise ValueError naming the offending argument."""
    sources = [x for x in (model_args.model_name_or_path, model_args.mdlm_checkpoint, model_args.llada_checkpoint) if x]
    if len(sources) > 1:
        raise ValueError("pass only one of --model_name_or_path, --mdlm_checkpoint and --llada_checkpoint")
    if not sources and not model_args.config_overrides:
        raise ValueError("pass --model_name_or_path, --mdlm_checkpoint, --llada_checkpoint or --config_overrides "
                         "(fresh model)")
    if model_args.objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {OBJECTIVES}, got {model_args.objective!r}")
    if model_args.snr_preset not in (None,) + SNR_PRESETS:
        raise ValueError(f"--snr_preset must be one of {SNR_PRESETS}, got {model_args.snr_preset!r}")
    if model_args.use_lora and (model_args.train_converter_only or model_args.freeze_lm_head
                                or model_args.freeze_embeddings):
        raise ValueError("--use_lora already freezes the base model; drop --train_converter_only / --freeze_*")
    if model_args.use_lora and not model_args.model_name_or_path:
        raise ValueError("--use_lora needs --model_name_or_path (a saved DSL checkpoint the adapter can be loaded "
                         "onto); convert an MDLM checkpoint first with scripts/convert_checkpoint.py")
    if not model_args.use_lora and model_args.lora_target_modules is not None:
        raise ValueError("--lora_target_modules is only used with --use_lora")
    if data_args.dataset_name and data_args.train_file:
        raise ValueError("pass only one of --train_file and --dataset_name")
    if not data_args.dataset_name and not data_args.train_file:
        raise ValueError("pass --train_file or --dataset_name")
    if data_args.block_size < 3:
        raise ValueError(f"--block_size must be >= 3, got {data_args.block_size}")
    try:
        DSLConfig.check_field_names(parse_overrides(model_args.config_overrides))
    except ValueError as err:
        raise ValueError(f"--config_overrides: {err}") from None
    check_source(model_args.model_name_or_path, "--model_name_or_path")
    check_source(model_args.mdlm_checkpoint, "--mdlm_checkpoint")
    check_source(data_args.tokenizer_name, "--tokenizer_name")
    check_input_file(data_args.train_file, "--train_file")
    check_input_file(data_args.validation_file, "--validation_file")


def check_output_dir_arguments(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """Refuse an --output_dir that holds files (a finished or running job) unless the run resumes
    from it or --overwrite_output_dir asks to replace it; with --overwrite_output_dir the old
    contents (model, trainer state, checkpoints) are deleted so nothing stale stays beside the new run."""
    resuming = training_args.resume_from_checkpoint not in (None, "", "False", "false")
    check_output_dir(training_args.output_dir, "--output_dir", model_args.overwrite_output_dir or resuming,
                     "pass --overwrite_output_dir to replace it or --resume_from_checkpoint to continue it")
    if model_args.overwrite_output_dir and resuming:
        raise ValueError("pass only one of --overwrite_output_dir and --resume_from_checkpoint")
    if model_args.overwrite_output_dir and os.path.isdir(training_args.output_dir):
        with training_args.main_process_first(desc="clearing --output_dir"):
            if training_args.process_index == 0 and os.path.isdir(training_args.output_dir):
                logger.warning("--overwrite_output_dir: deleting the contents of %s", training_args.output_dir)
                shutil.rmtree(training_args.output_dir)


def check_block_size(max_positions: int, block_size: int) -> None:
    if block_size > max_positions:
        raise ValueError(f"--block_size {block_size} exceeds the model's max_position_embeddings {max_positions}; "
                         f"use --block_size <= {max_positions}")


def check_block_size_early(model_args: ModelArguments, data_args: DataArguments) -> None:
    """--block_size against the model's positions from config.json alone, before any weights load
    (fresh models: the overrides or the default). Converted MDLM checkpoints are checked after loading."""
    overrides = parse_overrides(model_args.config_overrides)
    if model_args.model_name_or_path:
        positions = DSLConfig.from_pretrained(model_args.model_name_or_path).max_position_embeddings
    elif model_args.mdlm_checkpoint:
        return
    else:
        positions = overrides.get("max_position_embeddings", DSLConfig().max_position_embeddings)
    check_block_size(positions, data_args.block_size)
    if not 0 < data_args.validation_split_percentage < 100:
        raise ValueError(f"--validation_split_percentage must be in (0, 100), got {data_args.validation_split_percentage}")


def load_tokenizer(model_args: ModelArguments, data_args: DataArguments):
    name = data_args.tokenizer_name or model_args.model_name_or_path or model_args.llada_checkpoint
    if name is None:
        raise ValueError("--tokenizer_name is required when starting from an MDLM checkpoint or a fresh config")
    tokenizer = load_checkpoint_tokenizer(name)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"--tokenizer_name {name!r} has no eos_token (needed for BOS/EOS wrapping)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(model_args: ModelArguments, tokenizer) -> DSLForDiffusionLM:
    """Load or create the DSL model (after TrainingArguments exist, so ZeRO-3 loads partitioned)."""
    overrides = parse_overrides(model_args.config_overrides)
    if model_args.model_name_or_path:
        model = DSLForDiffusionLM.from_pretrained(model_args.model_name_or_path)
        snr = DSLConfig.preset_fields(model_args.snr_preset, model.config.vocab_size) if model_args.snr_preset else {}
        # Only the training-time SNR fields: β and the mask bias are already learned weights.
        # validate_fields() records snr_preset "custom" if the result is not the preset exactly.
        DSLConfig.check_field_names(overrides)
        fixed = sorted(set(overrides) - set(TRAINING_FIELDS))
        if fixed:
            raise ValueError(f"--config_overrides can only change training-time fields {TRAINING_FIELDS} of a "
                             f"loaded checkpoint, not {fixed}")
        for key, value in {**{k: v for k, v in snr.items() if k in SNR_FIELDS}, **overrides}.items():
            setattr(model.config, key, value)
        model.config.validate_fields()
    elif model_args.llada_checkpoint:
        model = DSLForDiffusionLM.from_llada(model_args.llada_checkpoint, preset=model_args.snr_preset or "dsl_llada",
                                             **overrides)
    elif model_args.mdlm_checkpoint:
        model = DSLForDiffusionLM.from_mdlm(model_args.mdlm_checkpoint, preset=model_args.snr_preset or "paper",
                                            **overrides)
    else:
        overrides.setdefault("vocab_size", len(tokenizer))
        overrides.setdefault("mask_token_id", overrides["vocab_size"])
        config = DSLConfig.from_preset(model_args.snr_preset or "paper", **overrides)
        model = DSLForDiffusionLM(config)
    if len(tokenizer) > model.config.vocab_size:
        logger.warning("tokenizer has %d tokens but the model predicts %d; ids >= vocab_size must not occur",
                       len(tokenizer), model.config.vocab_size)
    return model


def lora_targets(spec: str):
    """PEFT `target_modules`: a regex string (full match) if `spec` has regex characters, else a list."""
    if any(ch in spec for ch in "*\\()|"):
        return spec
    targets = [m.strip() for m in spec.split(",") if m.strip()]
    if not targets:
        raise ValueError("--lora_target_modules names no module")
    return targets


def apply_training_mode(model, model_args: ModelArguments):
    """Freeze parameters or wrap with PEFT LoRA; returns the model to train."""
    if model_args.use_lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
            target_modules=lora_targets(model_args.lora_target_modules or model.lora_target_modules),
            modules_to_save=[m.strip() for m in model_args.lora_modules_to_save.split(",") if m.strip()] or None,
            task_type=None,
        )
        model = get_peft_model(model, lora)
        model.print_trainable_parameters()
        return model
    if model_args.train_converter_only:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("converter."))
    if model_args.freeze_lm_head:
        model.get_output_embeddings().requires_grad_(False)
    if model_args.freeze_embeddings:
        model.embed.requires_grad_(False)
    def numel(p):  # ZeRO-3 partitions parameters: their full size is ds_numel
        return getattr(p, "ds_numel", p.numel())

    n_train = sum(numel(p) for p in model.parameters() if p.requires_grad)
    n_all = sum(numel(p) for p in model.parameters())
    logger.info("trainable parameters: %d of %d", n_train, n_all)
    if n_train == 0:
        raise ValueError("no trainable parameters left after the freeze options")
    return model


def build_datasets(data_args: DataArguments, tokenizer, training_args: TrainingArguments):
    """(train, eval) datasets of packed blocks or prompt/response rows."""

    def raw(source, split):
        try:
            ds = load_raw_dataset(source, split=split, dataset_config_name=data_args.dataset_config_name,
                                  sample_by=data_args.sample_by)
        except Exception as err:  # datasets' DatasetGenerationError names neither the file nor the cause
            if type(err).__name__ != "DatasetGenerationError":
                raise
            cause = err.__cause__ or err.__context__ or err
            raise ValueError(f"could not read {source!r}: {type(cause).__name__}: {cause}") from err
        if data_args.wikitext_detokenize:
            column = data_args.text_column
            ds = ds.map(lambda b: {column: [detokenize_wikitext(t) for t in b[column]]}, batched=True)
        return ds

    def encode(ds):
        if data_args.prompt_column:
            return prompt_response_dataset(ds, tokenizer, data_args.block_size, data_args.prompt_column,
                                           data_args.response_column, num_proc=data_args.preprocessing_num_workers)
        return pack_dataset(ds, tokenizer, data_args.block_size, data_args.text_column,
                            num_proc=data_args.preprocessing_num_workers)

    with training_args.main_process_first(desc="dataset preprocessing"):
        train = encode(raw(data_args.train_file or data_args.dataset_name, "train"))
        evaluation = None
        if data_args.validation_file:
            evaluation = encode(raw(data_args.validation_file, "train"))
        elif data_args.dataset_name and not data_args.train_file:
            try:
                evaluation = encode(raw(data_args.dataset_name, "validation"))
            except (ValueError, KeyError):
                evaluation = None
        if evaluation is None:
            train, evaluation = split_train_eval(train, data_args.validation_split_percentage / 100.0)
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    if len(train) == 0:
        raise ValueError("the training data produced no rows; use a smaller --block_size or more text")
    return train, evaluation


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments), description=__doc__.split("\n")[0])
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv=None, callbacks=None) -> dict:
    """Run one training job; returns the train/eval metrics. `callbacks` are extra TrainerCallbacks."""
    model_args, data_args, training_args = parse_args(argv)  # TrainingArguments first: ZeRO-3 load order
    check_arguments(model_args, data_args)
    check_output_dir_arguments(model_args, training_args)
    check_block_size_early(model_args, data_args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    tokenizer = load_tokenizer(model_args, data_args)
    model = build_model(model_args, tokenizer)
    check_block_size(model.config.max_position_embeddings, data_args.block_size)
    model = apply_training_mode(model, model_args)
    train_dataset, eval_dataset = build_datasets(data_args, tokenizer, training_args)
    logger.info("train rows: %d, eval rows: %d", len(train_dataset), len(eval_dataset))

    trainer = DSLTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        processing_class=tokenizer, objective=model_args.objective, eval_max_batches=data_args.eval_max_batches,
        callbacks=list(callbacks or []), converter_lr_multiplier=model_args.converter_lr_multiplier,
    )
    if model_args.ema_decay is not None:
        trainer.add_callback(EMACallback(decay=model_args.ema_decay))

    resume = training_args.resume_from_checkpoint
    if resume in ("latest", "auto", "True", "true"):
        resume = True
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # model (or adapter) + remote code + tokenizer into output_dir
    metrics = dict(result.metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if model_args.ema_decay is not None:
        trainer.save_ema_model(os.path.join(training_args.output_dir, "ema"))
    if training_args.do_eval or training_args.eval_strategy != "no":
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    return metrics


if __name__ == "__main__":
    main()
