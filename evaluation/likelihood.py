"""Likelihood of text under a DSL model: the DSL path-integral bound, the ROAR estimate, the MDLM ELBO.

The estimators themselves are functions over a denoiser in `modeling_dsl/noise_dsl.py` (paper
Eq. 3–4; their derivation is written there); this module feeds them a model and data:

- `read_documents`: documents from a text file (blank-line separated paragraphs, lines or the
  whole file), a jsonl file (one field), or a `datasets` dataset (a `save_to_disk` folder or a
  Hub name).
- `pack_documents`: token rows of at most `block_size` tokens. `wrap=True` is MDLM's wrapping
  (reference mdlm_remdm.md §3, `trainers/data.py`): each document followed by EOS, the stream cut
  into pieces of `block_size − 2`, each row `[BOS] + piece + [EOS]`; `wrap=False` cuts the plain
  token stream (no special tokens: character-level data such as text8). The last, shorter row is
  kept (padded, never scored), so every token of the data is scored once.
- `evaluate_likelihood`: per-sequence estimates (nats, Monte-Carlo repeats) of each estimator,
  then `summarize` them into nats/token, bits/token, bits/char and perplexity, each with its
  standard error.
- `run`: load a checkpoint and data, evaluate, write `likelihood.json` (with the environment) and
  `likelihood.md`.

Units and errors. Every estimator gives an upper bound on −log P(x) in nats per sequence (the
DSL bound for the SDE-then-decode model, the ROAR and MDLM ones for the any-order / masked
model; the two discrete ones estimate the same quantity). Corpus figures are token-weighted:
nats/token = Σ_s NLL_s / Σ_s n_s over sequences s with n_s scored tokens (BOS/EOS included when
wrapping, as MDLM scores them). `*_se` is the standard error of that ratio over sequences
(delta method; it contains the Monte-Carlo noise as well as the spread of the data); `*_mc_se`
is the Monte-Carlo part alone (repeat variance, for the fixed data set; needs repeats ≥ 2).
bits/char = Σ NLL / (characters of the documents · ln 2) = nats/token · tokens/char / ln 2;
perplexity = exp(nats/token) with SE perplexity · SE(nats/token).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .reporting import Column, environment, markdown_table, write_json

logger = logging.getLogger(__name__)

ESTIMATORS = ("dsl", "roar", "mdlm")
SAMPLE_BY = ("paragraph", "line", "document")
# The authors' integration top: snr_max = 30 scaled by ln V / ln 35 (dsl_official.md §8.1; 91.3 for GPT-2).
AUTHORS_SNR_TOP, AUTHORS_VOCAB = 30.0, 35
DEFAULT_REPEATS = 5  # the authors' `nll` / eval config n_rep (dsl_official.md §8.1)
DEFAULT_NUM_NODES = 32  # Gauss–Legendre nodes per stage: from 16 on, below the MC error (README "Likelihood", measured)
DEFAULT_MDLM_EPS = 1e-3  # MDLM's sampling_eps (mdlm_remdm.md §3; trainers.DSLTrainer's mdlm_eps)


def default_snr_top(vocab_size: int) -> float:
    """γ_top = 30 · ln V / ln 35: the authors' top of the integral (dsl_official.md §8.1)."""
    return AUTHORS_SNR_TOP * math.log(vocab_size) / math.log(AUTHORS_VOCAB)


def default_estimators(config) -> Tuple[str, ...]:
    """The model's own bound and the ROAR estimate: ("dsl", "roar") for a DSL-trained model,
    ("mdlm", "roar") for `training_objective="mdlm"` (trainers.DSLTrainer records it)."""
    objective = getattr(config, "training_objective", None) or "dsl"
    return ("mdlm", "roar") if objective == "mdlm" else ("dsl", "roar")


# ============================================================================ data


def read_documents(source: str, text_column: str = "text", sample_by: str = "paragraph", split: str = "test",
                   dataset_config: Optional[str] = None, max_documents: Optional[int] = None) -> List[str]:
    """Documents (non-blank strings) from a .txt / .jsonl file or a `datasets` dataset.

    A text file is split into blank-line separated paragraphs (`sample_by="paragraph"`, the demo
    data's articles), lines, or kept whole; a .jsonl/.json file gives the `text_column` field of
    each record; anything else is a `save_to_disk` folder or a Hub dataset (`split`,
    `dataset_config`). Blank documents are skipped; `max_documents` keeps the first N.
    """
    if sample_by not in SAMPLE_BY:
        raise ValueError(f"sample_by must be one of {SAMPLE_BY}, got {sample_by!r}")
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"max_documents must be >= 1, got {max_documents}")
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".jsonl", ".json"):
        from .summarization import _read_jsonl_rows

        texts = _column(_read_jsonl_rows(path), text_column, source)
    elif path.is_file():
        text = path.read_text(encoding="utf-8")
        if sample_by == "document":
            texts = [text]
        else:
            texts = text.split("\n\n") if sample_by == "paragraph" else text.split("\n")
    else:
        from .summarization import _read_hf_rows

        texts = _column(_read_hf_rows(source, dataset_config, split), text_column, source)
    documents = [t for t in texts if t.strip()]
    if not documents:
        raise ValueError(f"{source}: no non-blank documents")
    return documents[:max_documents] if max_documents else documents


def _column(rows: Sequence[dict], column: str, source: str) -> List[str]:
    if column not in rows[0]:
        raise ValueError(f"{source}: no column {column!r} (has {sorted(rows[0])}); pass --text_column")
    bad = [i for i, row in enumerate(rows) if not isinstance(row.get(column), str)]
    if bad:
        raise ValueError(f"{source}: record {bad[0]} has no string {column!r}")
    return [row[column] for row in rows]


def pack_documents(documents: Sequence[str], tokenizer, block_size: int, wrap: bool = True) -> List[List[int]]:
    """Token rows of at most `block_size` ids (see the module docstring); the last row may be
    shorter. With `wrap`, BOS = the tokenizer's BOS, else its EOS (GPT-2)."""
    if wrap:
        from trainers.data import special_token_ids

        bos, eos = special_token_ids(tokenizer)
        if block_size < 3:
            raise ValueError(f"block_size must be >= 3 with wrapping (BOS + a token + EOS), got {block_size}")
    elif block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    stream: List[int] = []
    for ids in tokenizer(list(documents), add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        if wrap:
            stream.append(eos)
    piece = block_size - 2 if wrap else block_size
    rows = [stream[i:i + piece] for i in range(0, len(stream), piece)]
    return [[bos] + row + [eos] for row in rows] if wrap else rows


def batches(rows: Sequence[Sequence[int]], batch_size: int, pad_id: int):
    """(input_ids (B, L), valid (B, L) bool) for consecutive rows, padded to the longest row."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        length = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        valid = torch.zeros(len(chunk), length, dtype=torch.bool)
        for i, row in enumerate(chunk):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            valid[i, :len(row)] = True
        yield ids, valid


# ============================================================================ a model as the estimators' callables


@dataclass
class LikelihoodOptions:
    """How each estimator runs (defaults: their sources are at the constants above).

    path / block: the DSL bound's SNR path ("joint" = all tokens together; "left_to_right" with
    block 1 = App. A.1's autoregressive contour, one stage per token: L× the cost);
    snr_top: γ_top (None → `default_snr_top(V)`); num_nodes / quadrature / transform /
    snr_scale: the quadrature per stage (`noise_dsl.quadrature_rule`); repeats: Monte-Carlo
    repeats of every estimator; mdlm_eps: MDLM's t floor; seed: every random draw.
    """

    estimators: Tuple[str, ...] = ("dsl", "roar")
    path: str = "joint"
    block: int = 1
    snr_top: Optional[float] = None
    num_nodes: int = DEFAULT_NUM_NODES
    quadrature: str = "gauss_legendre"
    transform: str = "log1p"
    snr_scale: float = 1.0
    repeats: int = DEFAULT_REPEATS
    mdlm_eps: float = DEFAULT_MDLM_EPS
    seed: int = 0

    def validate(self) -> None:
        from modeling_dsl.noise_dsl import NLL_PATHS, QUADRATURE_RULES, QUADRATURE_TRANSFORMS

        unknown = [e for e in self.estimators if e not in ESTIMATORS]
        if unknown or not self.estimators:
            raise ValueError(f"estimators must be a non-empty list from {ESTIMATORS}, got {list(self.estimators)}")
        for name, value, allowed in (("path", self.path, NLL_PATHS), ("quadrature", self.quadrature, QUADRATURE_RULES),
                                     ("transform", self.transform, QUADRATURE_TRANSFORMS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name, value, low in (("block", self.block, 1), ("num_nodes", self.num_nodes, 1), ("repeats", self.repeats, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.snr_top is not None and not (math.isfinite(self.snr_top) and self.snr_top > 0):
            raise ValueError(f"snr_top must be finite and > 0, got {self.snr_top}")
        if not 0.0 < self.mdlm_eps < 1.0:
            raise ValueError(f"mdlm_eps must be in (0, 1), got {self.mdlm_eps}")


def _token_ce(logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, L) −log p(ids) in nats, 0 at invalid positions (whatever id they hold)."""
    target = ids.clamp(0, logits.shape[-1] - 1).masked_fill(~valid, 0)
    ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none").view(ids.shape)
    return ce * valid


class ModelScorer:
    """One batch (ids, valid) under a `DSLForDiffusionLM`, as the callables of `noise_dsl`'s
    estimators: the denoiser x̂(z), log P_θ(x | z) = Σ_i log p_θ(x_i | z), and the per-token NLL
    given the visible tokens (visible tokens fed noise-free at the config's visible SNR, hidden
    ones at γ = 0 — as the masked samplers and the MDLM objective feed them)."""

    def __init__(self, model, ids: torch.Tensor, valid: torch.Tensor):
        self.model, self.ids, self.valid = model, ids, valid
        self.attention_mask = None if bool(valid.all()) else valid.long()  # as DSLTrainer: no mask when full

    @torch.no_grad()
    def clean_embeddings(self) -> torch.Tensor:
        return self.model.noise_embeddings()[self.ids.clamp(0, self.model.config.vocab_size - 1)]

    @torch.no_grad()
    def denoise(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.denoise(z, self.attention_mask)

    @torch.no_grad()
    def log_likelihood(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.model.logits_from_hidden(self.model.hidden_states(z, self.attention_mask))
        return -_token_ce(logits, self.ids, self.valid).sum(-1)

    @torch.no_grad()
    def token_nll(self, visible: torch.Tensor) -> torch.Tensor:
        config = self.model.config
        inputs = torch.where(visible, self.ids, torch.full_like(self.ids, config.mask_token_id))
        snr = visible.float() * config.effective_visible_snr
        logits = self.model(input_ids=inputs, snr=snr, attention_mask=self.attention_mask, clean_mask=visible).logits
        return _token_ce(logits, self.ids, self.valid)


def forwards_per_batch(estimator: str, options: LikelihoodOptions, length: int) -> int:
    """Model evaluations one batch costs (for the progress bar)."""
    if estimator != "dsl":
        return options.repeats
    stages = 1 if options.path == "joint" else math.ceil(length / options.block)
    return options.repeats * (stages * options.num_nodes + 1)


def estimate_batch(model, ids: torch.Tensor, valid: torch.Tensor, estimator: str, options: LikelihoodOptions,
                   generator: torch.Generator, progress=None) -> Dict[str, torch.Tensor]:
    """Per-sequence estimates (R, B) in nats of one batch: {"nll"} (+ "diffusion", "reconstruction"
    for the DSL bound)."""
    from modeling_dsl.noise_dsl import mdlm_elbo, path_integral_nll, roar_nll

    scorer = ModelScorer(model, ids, valid)
    if estimator == "dsl":
        snr_top = options.snr_top or default_snr_top(model.config.vocab_size)
        return path_integral_nll(
            scorer.clean_embeddings(), valid, scorer.denoise, scorer.log_likelihood, snr_top, path=options.path,
            num_nodes=options.num_nodes, quadrature=options.quadrature, transform=options.transform,
            snr_scale=options.snr_scale, repeats=options.repeats, block_size=options.block, generator=generator,
            progress=progress)

    def counted(visible):
        out = scorer.token_nll(visible)
        if progress is not None:
            progress(1)
        return out

    if estimator == "roar":
        return {"nll": roar_nll(counted, valid, options.repeats, generator)}
    return {"nll": mdlm_elbo(counted, valid, options.repeats, generator, options.mdlm_eps)}


def evaluate_likelihood(model, rows: Sequence[Sequence[int]], n_chars: int, options: LikelihoodOptions,
                        batch_size: int = 8, pad_id: int = 0, show_progress: bool = True) -> Dict[str, dict]:
    """Every estimator of `options` over the token rows; {estimator: `summarize(...)`}.

    Batch b of estimator e draws from its own generator seeded with (seed, e, b), so an
    estimator's numbers do not depend on which others run, and a rerun repeats them exactly.
    """
    from tqdm.auto import tqdm

    options.validate()
    if not rows:
        raise ValueError("no token rows to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    tokens = torch.tensor([len(r) for r in rows], dtype=torch.float64)
    results = {}
    for e, estimator in enumerate(options.estimators):
        total = sum(forwards_per_batch(estimator, options, max(len(r) for r in rows[i:i + batch_size]))
                    for i in range(0, len(rows), batch_size))
        parts: Dict[str, List[torch.Tensor]] = {}
        with tqdm(total=total, desc=f"likelihood [{estimator}]", unit="fwd", disable=not show_progress) as bar:
            for b, (ids, valid) in enumerate(batches(rows, batch_size, pad_id)):
                generator = torch.Generator().manual_seed(_seed(options.seed, e, b))
                out = estimate_batch(model, ids.to(device), valid.to(device), estimator, options, generator, bar.update)
                for key, value in out.items():
                    parts.setdefault(key, []).append(value.cpu())
        per_sequence = {key: torch.cat(values, dim=1) for key, values in parts.items()}
        results[estimator] = summarize(per_sequence, tokens, n_chars)
    return results


def _seed(seed: int, estimator_index: int, batch_index: int) -> int:
    return (int(seed) * 1_000_003 + estimator_index * 7_919 + batch_index) % (1 << 63)


# ============================================================================ statistics


def ratio_and_errors(per_sequence: torch.Tensor, tokens: torch.Tensor) -> Tuple[float, Optional[float], Optional[float]]:
    """(Σ_s m_s / Σ_s n_s, its SE over sequences, its Monte-Carlo SE) for estimates (R, N) nats and
    n_s tokens; m_s is the mean over the R repeats. The SE over sequences is the ratio estimator's
    delta-method SE sqrt(Σ (m_s − r n_s)² / (N (N − 1))) / mean(n) (None for one sequence); the MC
    SE is sqrt(Σ_s var_r / R) / Σ n (None for one repeat)."""
    per_sequence = per_sequence.double()
    repeats, count = per_sequence.shape
    means = per_sequence.mean(0)
    ratio = float(means.sum() / tokens.sum())
    se = None
    if count > 1:
        residual = means - ratio * tokens
        se = float(torch.sqrt((residual ** 2).sum() / (count * (count - 1))) / tokens.mean())
    mc_se = None
    if repeats > 1:
        mc_se = float(torch.sqrt((per_sequence.var(0) / repeats).sum()) / tokens.sum())
    return ratio, se, mc_se


def summarize(per_sequence: Dict[str, torch.Tensor], tokens: torch.Tensor, n_chars: int) -> dict:
    """Corpus figures from per-sequence estimates (see the module docstring for the definitions)."""
    nats, se, mc_se = ratio_and_errors(per_sequence["nll"], tokens)
    n_tokens = int(tokens.sum())
    per_char = n_tokens / n_chars / math.log(2) if n_chars else None

    def scaled(value, factor):
        return None if value is None or factor is None else value * factor

    ppl = math.exp(nats) if nats < 700 else None  # beyond float range (JSON has no infinity)
    out = {
        "nats_per_token": nats, "nats_per_token_se": se, "nats_per_token_mc_se": mc_se,
        "bits_per_token": nats / math.log(2), "bits_per_token_se": scaled(se, 1 / math.log(2)),
        "bits_per_char": scaled(nats, per_char), "bits_per_char_se": scaled(se, per_char),
        "perplexity": ppl, "perplexity_se": scaled(se, ppl),
        "tokens": n_tokens, "chars": int(n_chars), "tokens_per_char": n_tokens / n_chars if n_chars else None,
        "sequences": int(per_sequence["nll"].shape[1]), "repeats": int(per_sequence["nll"].shape[0]),
    }
    for part in ("diffusion", "reconstruction"):
        if part in per_sequence:
            out[f"{part}_nats_per_token"] = ratio_and_errors(per_sequence[part], tokens)[0]
    return out


# ============================================================================ run and report


class ModelLoadError(OSError):
    """The checkpoint or its tokenizer could not be loaded (the CLI names the flag and the path)."""


@dataclass
class LikelihoodSettings:
    """Everything `run` needs (the CLI's arguments)."""

    model: str
    data: str
    output_dir: str
    options: LikelihoodOptions
    estimators_given: bool = False  # False: `default_estimators(model.config)` replaces options.estimators
    text_column: str = "text"
    sample_by: str = "paragraph"
    split: str = "test"
    dataset_config: Optional[str] = None
    max_documents: Optional[int] = None
    block_size: Optional[int] = None
    wrap: bool = True
    tokenizer: Optional[str] = None
    batch_size: int = 8
    device: Optional[str] = None
    dtype: str = "float32"
    progress: bool = True


def run(settings: LikelihoodSettings) -> dict:
    """Load, evaluate, write `likelihood.json` and `likelihood.md` into `output_dir`; returns the results."""
    from modeling_dsl import load_tokenizer

    from .summarization import load_model, model_context

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, _ = load_model(settings.model, None, settings.dtype, device)
        tokenizer = load_tokenizer(settings.tokenizer or settings.model)
    except OSError as err:
        raise ModelLoadError(str(err)) from None
    if not settings.estimators_given:
        settings.options.estimators = default_estimators(model.config)
    settings.options.validate()
    context = model_context(model)
    block_size = settings.block_size or context
    if block_size > context:
        raise ValueError(f"block_size {block_size} exceeds the model's context ({context})")
    documents = read_documents(settings.data, settings.text_column, settings.sample_by, settings.split,
                               settings.dataset_config, settings.max_documents)
    rows = pack_documents(documents, tokenizer, block_size, settings.wrap)
    n_chars = sum(len(d) for d in documents)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results = evaluate_likelihood(model, rows, n_chars, settings.options, settings.batch_size, pad_id,
                                  settings.progress)
    report = {
        "model": settings.model, "data": settings.data, "documents": len(documents), "block_size": block_size,
        "snr_top": settings.options.snr_top or default_snr_top(model.config.vocab_size),
        "training_objective": getattr(model.config, "training_objective", None),
        "settings": {**asdict(settings), "options": asdict(settings.options)},
        "results": results, "environment": environment(device),
    }
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "likelihood.json", report)
    (out / "likelihood.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def _pm(value_key: str, se_key: str, fmt: str):
    def cell(row):
        value, se = row.get(value_key), row.get(se_key)
        if value is None:
            return None
        return fmt.format(value) + ("" if se is None else " ± " + fmt.format(se))
    return cell


def render_markdown(report: dict) -> str:
    """One table row per estimator (value ± SE over sequences)."""
    rows = [{"estimator": name, **values} for name, values in report["results"].items()]
    columns = [Column("estimator", "estimator"), Column(_pm("nats_per_token", "nats_per_token_se", "{:.4f}"), "nats/token"),
               Column(_pm("bits_per_token", "bits_per_token_se", "{:.4f}"), "bits/token"),
               Column(_pm("bits_per_char", "bits_per_char_se", "{:.4f}"), "bits/char"),
               Column(_pm("perplexity", "perplexity_se", "{:.2f}"), "perplexity"),
               Column("nats_per_token_mc_se", "MC SE (nats/token)", "{:.4f}"),
               Column("tokens", "tokens"), Column("sequences", "sequences"), Column("repeats", "repeats")]
    options = report["settings"]["options"]
    lines = [f"# Likelihood of `{report['data']}` under `{report['model']}`", "",
             f"DSL bound: path `{options['path']}`, γ_top {report['snr_top']:.4g}, {options['num_nodes']} "
             f"{options['quadrature']} nodes in `{options['transform']}`; {options['repeats']} Monte-Carlo repeats; "
             f"block size {report['block_size']}.", "", markdown_table(columns, rows)]
    return "\n".join(lines)
