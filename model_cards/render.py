"""Render a DSL checkpoint's README.md with `huggingface_hub.ModelCard` (one renderer for every call site).

Inputs, all optional except the config, read from the checkpoint folder unless given:
- `config.json` (a `DSLConfig`): picks the template (`dsl_mdlm.md` for `backbone_type="mdlm_dit"`,
  `dsl_llada.md` for `"llada"`; `lora_adapter.md` when the folder is a PEFT adapter) and fills the
  configuration table; the full config is embedded in a collapsed block.
- `generation_config.json`: the saved default strategy used in the usage snippet.
- `training_args.json` (written by `trainers.DSLTrainer` on save, `TRAINING_ARGS_FILE`): objective,
  step count and the main `TrainingArguments`.
- evaluation results JSON, by file name (`EVAL_FILES`), absent files skipped:
  `eval_summarization.json` (a copy of `evaluation/summarization.py`'s `results.json`: its `results`
  rows, ROUGE F1 × 100 per dataset, method and NFE; lead-k baselines left out),
  `eval_likelihood.json`, `eval_unconditional.json` (read generically: every JSON object holding a
  known metric key (`METRIC_NAMES`), with its `dataset` and setting keys (`SETTING_KEYS`) from
  the object or its parents; a value may be a number or {"value"|"mean": x, "stderr"|"se": s}, and
  `<metric>_stderr` / `<metric>_se` beside it is its standard error).
Each metric becomes a `model-index` entry (`EvalResult`) and a row of the card's evaluation table.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_dsl import DSLConfig

DSL_MODEL_TYPE = DSLConfig.model_type

logger = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATES = {"mdlm_dit": "dsl_mdlm.md", "llada": "dsl_llada.md"}
ADAPTER_TEMPLATE = "lora_adapter.md"
TRAINING_ARGS_FILE = "training_args.json"
EVAL_FILES = {"summarization": "eval_summarization.json", "likelihood": "eval_likelihood.json",
              "unconditional": "eval_unconditional.json"}
# Known metric keys of the likelihood / unconditional JSONs → (model-index metric type, shown name).
METRIC_NAMES = {
    "nats_per_token": ("nll", "NLL (nats/token)"), "bits_per_token": ("bits_per_token", "bits/token"),
    "bits_per_char": ("bpc", "bits/char"), "bpc": ("bpc", "bits/char"), "perplexity": ("perplexity", "perplexity"),
    "mauve": ("mauve", "MAUVE"), "gen_ppl": ("gen_ppl", "generative perplexity"),
    "generative_perplexity": ("gen_ppl", "generative perplexity"), "entropy": ("entropy", "unigram entropy"),
}
SETTING_KEYS = ("estimator", "bound", "method", "strategy", "objective", "steps", "path", "snr_path", "eval_model",
                "num_samples")
ROUGE = (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"), ("rougeLsum", "ROUGE-Lsum"))
TASK_TYPES = {"summarization": "summarization", "likelihood": "text-generation", "unconditional": "text-generation"}
# TrainingArguments shown on the card, in this order (the whole set stays in training_args.json).
TRAINING_KEYS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "max_steps", "num_train_epochs",
                 "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay", "max_grad_norm",
                 "bf16", "fp16", "activation_checkpointing", "gradient_checkpointing", "deepspeed", "seed")
CONFIG_KEYS = ("backbone_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "intermediate_size", "vocab_size", "mask_token_id", "max_position_embeddings", "noise_dim",
               "snr_preset", "snr_max", "training_objective", "prompt_embedding", "dtype")


# ============================================================================ reading the folder


def _read_json(path: Path) -> Optional[Any]:
    """A JSON file's content; None (with a warning naming it) when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        logger.warning("model card: skipping %s (%s)", path, err)
        return None


def count_parameters(folder: Path) -> Optional[int]:
    """Parameters stored in the folder's safetensors weights (from the file headers only)."""
    from safetensors import safe_open

    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                n = 1
                for dim in handle.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


def _summarization_rows(data: Mapping) -> List[dict]:
    kinds = {m.get("label"): m.get("kind") for m in data.get("methods", []) if isinstance(m, Mapping)}
    rows = []
    for row in data.get("results", []):
        if kinds.get(row.get("method")) == "lead" or str(row.get("method", "")).startswith("lead-"):
            continue  # an extractive baseline, not this model's result
        for key, name in ROUGE:
            if isinstance(row.get(key), (int, float)):
                rows.append({"kind": "summarization", "dataset": row["dataset"], "metric": key, "name": name,
                             "setting": f"{row['method']}, NFE {row['nfe']}", "value": float(row[key]), "stderr": None})
    return rows


def _metric_value(value, parent: Mapping, key: str):
    """(value, stderr) of a metric entry, or None when it holds no number."""
    stderr = next((parent[k] for k in (f"{key}_stderr", f"{key}_se", f"{key}_standard_error") if k in parent), None)
    if isinstance(value, Mapping):
        stderr = next((value[k] for k in ("stderr", "se", "standard_error") if k in value), stderr)
        value = next((value[k] for k in ("value", "mean", "estimate") if k in value), None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value), (float(stderr) if isinstance(stderr, (int, float)) else None)


def _generic_rows(data: Any, kind: str, inherited: Optional[dict] = None, results_of: bool = False) -> List[dict]:
    """Metric rows of `data`; `results_of`: `data` is a `results` mapping whose keys name the
    estimator of each entry (`evaluation/likelihood.py` writes {"results": {"dsl": {...}, "roar": {...}}})."""
    inherited = dict(inherited or {})
    rows: List[dict] = []
    if isinstance(data, list):
        for item in data:
            rows += _generic_rows(item, kind, inherited)
        return rows
    if not isinstance(data, Mapping):
        return rows
    settings = data.get("settings") if isinstance(data.get("settings"), Mapping) else {}
    for source in (settings, data):  # the run's settings (unconditional.json), then the entry's own
        for key in ("data", "references"):  # the evaluated / reference file names the data set
            if isinstance(source.get(key), str) and not source.get("dataset"):
                inherited["dataset"] = Path(source[key]).name
        for key in ("dataset",) + SETTING_KEYS:
            if isinstance(source.get(key), (str, int, float)) and not isinstance(source.get(key), bool):
                inherited[key] = source[key]
    if results_of:  # a key names its entry only when the entry names no setting itself
        return [row for key, value in data.items()
                for row in _generic_rows(value, kind, {**inherited, "estimator": key} if isinstance(value, Mapping)
                                         and not set(SETTING_KEYS) & set(value) else inherited)]
    for key, value in data.items():
        if key in METRIC_NAMES:
            found = _metric_value(value, data, key)
            if found is not None:
                metric, name = METRIC_NAMES[key]
                setting = ", ".join(f"{k}={inherited[k]}" for k in SETTING_KEYS if k in inherited)
                rows.append({"kind": kind, "dataset": str(inherited.get("dataset", "unknown")), "metric": metric,
                             "name": name, "setting": setting or None, "value": found[0], "stderr": found[1]})
        elif isinstance(value, (Mapping, list)) and key not in ("environment", "settings", "config"):
            rows += _generic_rows(value, kind, inherited, results_of=key == "results" and isinstance(value, Mapping))
    return rows


def collect_eval_results(folder: Optional[os.PathLike] = None, extra: Optional[Mapping[str, os.PathLike]] = None
                         ) -> List[dict]:
    """Metric rows from the folder's `EVAL_FILES` and `extra` ({kind: path}); missing files skipped."""
    paths = {}
    if folder is not None:
        paths = {kind: Path(folder) / name for kind, name in EVAL_FILES.items() if (Path(folder) / name).is_file()}
    for kind, path in (extra or {}).items():
        if kind not in EVAL_FILES:
            raise ValueError(f"evaluation results kind must be one of {sorted(EVAL_FILES)}, got {kind!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"evaluation results file for {kind!r} not found: {path}")
        paths[kind] = Path(path)
    rows: List[dict] = []
    for kind, path in paths.items():
        data = _read_json(path)
        if data is None:
            continue
        found = _summarization_rows(data) if kind == "summarization" else _generic_rows(data, kind)
        if not found:
            logger.warning("model card: %s holds no recognised metric", path)
        rows += found
    return rows


# ============================================================================ rendering


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    from evaluation.reporting import Column, markdown_table

    columns = [Column(lambda r, i=i: r[i], h) for i, h in enumerate(headers)]
    return markdown_table(columns, [tuple(r) for r in rows])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _config_section(config: Mapping, num_parameters: Optional[int]) -> str:
    dsl = DSLConfig(**{k: v for k, v in config.items() if k not in ("architectures", "auto_map", "model_type")})
    rows = [(k, _fmt(config[k])) for k in CONFIG_KEYS if config.get(k) is not None]
    rows.append(("visible SNR (effective)", _fmt(dsl.effective_visible_snr)))
    if num_parameters is not None:
        rows.insert(0, ("parameters", f"{num_parameters / 1e6:.2f}M"))
    full = json.dumps(config, indent=2, sort_keys=True)
    return (_table(("field", "value"), rows) + "\n<details><summary>config.json</summary>\n\n```json\n" + full
            + "\n```\n\n</details>\n")


def _training_section(training: Optional[Mapping]) -> str:
    if not training:
        return "No training run is recorded in this folder (no `training_args.json`)."
    args = training.get("training_arguments", {})
    rows = [("objective", training.get("objective")), ("optimizer steps", training.get("global_step")),
            ("processes", training.get("world_size"))]
    by_steps = (args.get("max_steps") or 0) > 0  # max_steps overrides num_train_epochs
    rows += [(k, args.get(k)) for k in TRAINING_KEYS if not (by_steps and k == "num_train_epochs")]
    rows += [(k, training.get(k)) for k in ("converter_lr_multiplier", "ema_decay")]
    rows = [(k, _fmt(v)) for k, v in rows if v is not None and v is not False and v != "" and v != []]
    return (f"Trained with `trainers.DSLTrainer`; the full arguments are in `{TRAINING_ARGS_FILE}`.\n\n"
            + _table(("argument", "value"), rows))


def _evaluation_section(rows: List[dict]) -> str:
    if not rows:
        return ("No evaluation results were found in this folder (" + ", ".join(f"`{f}`" for f in EVAL_FILES.values())
                + ").")
    table = [(r["kind"], r["dataset"], r["setting"] or "–", r["name"], f"{r['value']:.4g}",
              "–" if r["stderr"] is None else f"{r['stderr']:.2g}") for r in rows]
    return _table(("evaluation", "dataset", "setting", "metric", "value", "± s.e."), table)


def _eval_results(rows: List[dict]) -> List[EvalResult]:
    return [EvalResult(task_type=TASK_TYPES[r["kind"]], dataset_type=r["dataset"], dataset_name=r["dataset"],
                       metric_type=r["metric"], metric_name=r["name"], metric_value=round(r["value"], 6),
                       metric_config=r["setting"]) for r in rows]


def _hub_id(value: Optional[str]) -> Optional[str]:
    """`value` when it names a Hub repository (not a local path), else None."""
    if not value or os.path.exists(value) or "/" not in value:
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


def render_model_card(folder: Optional[os.PathLike] = None, *, config: Optional[Mapping] = None,
                      generation_config: Optional[Mapping] = None, training: Optional[Mapping] = None,
                      eval_files: Optional[Mapping[str, os.PathLike]] = None, repo_id: Optional[str] = None,
                      base_model: Optional[str] = None, model_name: Optional[str] = None,
                      adapter: Optional[Mapping] = None, num_parameters: Optional[int] = None) -> ModelCard:
    """The card of a DSL checkpoint (see the module docstring); arguments override the folder's files.

    Args:
        folder: checkpoint folder to read `config.json`, `generation_config.json`,
            `training_args.json`, `adapter_config.json` and the evaluation JSONs from.
        config, generation_config, training, adapter: dicts replacing those files.
        eval_files: {kind: path} of extra evaluation JSONs (kinds: `EVAL_FILES`).
        repo_id: the Hub repository the card is for (used in the usage snippet).
        base_model: the Hub id the weights came from (`base_model` metadata; local paths are left out).
        model_name: name in the title and `model-index` (default: repo name, else folder name).
    """
    folder = Path(folder) if folder is not None else None

    def from_folder(value, name):
        if value is not None or folder is None or not (folder / name).is_file():
            return value
        return _read_json(folder / name)

    config = from_folder(config, "config.json")
    generation_config = from_folder(generation_config, "generation_config.json") or {}
    training = from_folder(training, TRAINING_ARGS_FILE)
    adapter = from_folder(adapter, "adapter_config.json")
    if config is None and adapter is None:
        raise FileNotFoundError(f"no config.json in {folder}: not a DSL checkpoint folder")
    if config is not None and config.get("model_type") not in (None, DSL_MODEL_TYPE):
        raise ValueError(f"config.json has model_type={config.get('model_type')!r}; "
                         f"expected a DSL checkpoint ({DSL_MODEL_TYPE!r})")
    if num_parameters is None and folder is not None and adapter is None:
        num_parameters = count_parameters(folder)
    rows = collect_eval_results(folder, eval_files)
    if adapter is not None:
        base_model = base_model or _hub_id(adapter.get("base_model_name_or_path"))
    base_model = _hub_id(base_model)
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else (folder.resolve().name if folder else "dsl-model"))
    backbone = (config or {}).get("backbone_type", "mdlm_dit")
    if adapter is None and backbone not in TEMPLATES:
        raise ValueError(f"no model card template for backbone_type={backbone!r}; known: {sorted(TEMPLATES)}")
    template = ADAPTER_TEMPLATE if adapter is not None else TEMPLATES[backbone]
    tags = ["dsl-diffusion", "diffusion-language-model", "custom_code", "mdlm" if backbone == "mdlm_dit" else "llada"]
    if adapter is not None:
        tags += ["lora", "peft"]
    data = ModelCardData(library_name="peft" if adapter is not None else "transformers", tags=tags,
                         pipeline_tag="text-generation", base_model=base_model, model_name=model_name,
                         eval_results=_eval_results(rows) or None)
    strategy = generation_config.get("strategy") or "sde"
    objective = (training or {}).get("objective") or (config or {}).get("training_objective") or "dsl"
    variables = dict(
        model_name=model_name, repo_id=repo_id or "path/to/this/folder", base_model=base_model,
        strategy=strategy, steps=generation_config.get("steps") or 64, objective=objective,
        # DSL-LLaDA's G = 128 (generate()'s default), within the model's context
        gen_length=generation_config.get("gen_length") or min(128, (config or {}).get("max_position_embeddings") or 128),
        config_section=_config_section(config, num_parameters) if config is not None else "",
        training_section=_training_section(training), evaluation_section=_evaluation_section(rows),
    )
    if adapter is not None:
        targets = adapter.get("target_modules")
        variables.update(
            targets=(f"matching `{targets}`" if isinstance(targets, str)
                     else ", ".join(f"`{t}`" for t in sorted(targets or []))),
            saved=", ".join(f"`{m}`" for m in adapter.get("modules_to_save") or []) or "no module",
            base=adapter.get("base_model_name_or_path") or "the base checkpoint",
            r=adapter.get("r"), alpha=adapter.get("lora_alpha"), dropout=adapter.get("lora_dropout"))
    return ModelCard.from_template(data, template_path=str(TEMPLATES_DIR / template), **variables)


def write_model_card(folder: os.PathLike, **kwargs) -> Path:
    """Render the card of the checkpoint in `folder` and save it as `folder/README.md`."""
    path = Path(folder) / "README.md"
    render_model_card(folder, **kwargs).save(str(path))
    return path
