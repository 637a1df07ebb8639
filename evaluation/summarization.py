"""Zero-shot summarization with ROUGE: the DSL-LLaDA protocol, reproducible, resumable, shardable.

Sources of every protocol default (`../shared`): "ref §6" = `reference/llada_dsl.md` §6 (the
DSL-LLaDA `eval_summarization.py` / `analyze_summarization.py` / `eval_data` facts); "data README" =
`data/summarization/README.md` (sentence split and lead-k baselines).

Protocol (each item overridable through `EvalSettings`):
- Prompt: the dataset's instruction, a blank line, the document capped to a number of words
  (`PROTOCOLS`, ref §6). With a tokenizer that has a chat template the prompt is the single user
  turn, rendered with `add_generation_prompt=True` and tokenized with `add_special_tokens=False`
  (ref §3, §6); without one the raw prompt is tokenized with the tokenizer's own special tokens.
- Generation: gen length per dataset (ref §6), seed 42 (ref §6; sample `i` uses `seed + i`, so a
  sample's output does not depend on its batch, shard or a resume), `generate()` asked for the
  full G generated ids (no truncation at the first EOS, ref §6): `truncate_at_eos=False` is passed
  explicitly, whatever the checkpoint's generation config says.
- Decoding: the G generated ids with special tokens removed (ref §6; ids outside the tokenizer's
  vocabulary, such as MDLM's appended mask id, are dropped too); a decoding error gives "" (ref §6).
  Optional: cut at the first EOS yourself (`truncate_at_eos=True`).
- Scoring: `rouge_score.RougeScorer(use_stemmer=True)`, `score(reference, output)`, F1 × 100 for
  ROUGE-1/2/L on the plain texts (ref §6), plus ROUGE-Lsum on both texts split into sentences at
  `.!?` + whitespace and joined with newlines (data README); an output without words scores 0
  (ref §6). Per-sample scores are averaged.
- Failure tags (ref §6, `analyze_summarization.py`): see `failure_tags`.
- Long prompts: a prompt longer than the context minus G is cut at the END OF THE DOCUMENT
  (token level), keeping the instruction and the chat template's closing tokens; one warning
  counts the cut prompts, and each record says whether its prompt was cut.

Methods (`PRESETS`, `STEP_RULES`): a method is a `generate()` strategy with fixed settings and a
rule NFE budget → `steps`; a preset is one table entry: `original_remask` and
`original_remask_eosInf_b32` (LLaDA's low-confidence remasking as the authors ran it, on the
published model's own token inputs when the backbone has a token embedding; the second with block
32 and the EOS logit at −inf, ref §6) and `dsl_llada_sde` (DSL-LLaDA's Heun SDE, S = NFE // 2,
ref §5.5). `lead-k` / `lead-N` is the extractive baseline through the same scorer. NFE per sample
is `generate()`'s returned `nfe` (a batch-level count: every row of a batch gets it; it is the same
for any batch for strategies with a fixed budget — sde, dsl_llada_sde, low_confidence, roar — and
can depend on the batch for mdlm / remdm, which skip evaluations where no row changes);
dsl_llada_sde's budget, as the authors count it, leaves out the final decode (NFE used = NFE + 1
for an even NFE).

Models (`load_model`): a LLaDA-format checkpoint (`GSAI-ML/LLaDA-8B-Instruct`, a released
DSL-LLaDA) through `DSLForDiffusionLM.from_llada`, a saved DSL checkpoint through
`from_pretrained`; folder or Hub id, at `revision`.

Outputs in `output_dir` (see `run` and `merge`): `samples[.shard-I-of-N].jsonl` (per sample),
`run[.shard-I-of-N].json` (every setting, model and environment), and after a complete run or a
merge `results.json`, `results.md` and `rouge1_vs_nfe.png`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .reporting import (
    Column,
    JsonlWriter,
    environment,
    markdown_table,
    plot_lines,
    read_json,
    read_jsonl,
    write_json,
)

logger = logging.getLogger(__name__)

# ============================================================================ protocol tables


@dataclass(frozen=True)
class DatasetProtocol:
    """How one dataset is prompted and scored.

    instruction: text before the blank line and the document.
    max_words: the document is cut to its first `max_words` whitespace words (None: no cap).
    rejoin_short: True: the first `max_words` words are always re-joined with single spaces (the
        `*_100.json` prompts); False: a document within the cap stays unchanged (the 1000-sample
        build).
    gen_length: tokens generated G. lead_k: sentences of the lead-k baseline.
    hf_names / hf_config / columns: Hugging Face dataset names that select this protocol, and the
        config and (document, summary) columns used for them.

    Sources of `PROTOCOLS` (ref §6 unless noted):
    | name | instruction, cap | G | lead-k (data README) |
    |---|---|---|---|
    | xsum | summarization_100.json; 1500 words as the 1000-sample build (the shared documents are within it) | 128 | 1 |
    | cnn_dailymail | cnn_dailymail_100.json: first 400 words joined by single spaces | 256 | 3 |
    | pubmed, arxiv | the 1000-sample build: 1500 words, unchanged when shorter | 256 | 3 |
    | billsum | billsum_100.json: first 400 words (the 1000-sample build: 1500) | 256 | 3 |
    | aeslc | aeslc_100.json: first 300 words; no Hugging Face source in the reference | 64 | 1 |
    Hugging Face names and columns: the 1000-sample build (EdinburghNLP/xsum document/summary,
    cnn_dailymail 3.0.0 article/highlights, ccdv/pubmed- and ccdv/arxiv-summarization
    article/abstract, FiscalNote/billsum text/summary).
    """

    name: str
    instruction: str
    max_words: Optional[int]
    rejoin_short: bool
    gen_length: int
    lead_k: int
    hf_names: Tuple[str, ...] = ()
    hf_config: Optional[str] = None
    columns: Tuple[str, str] = ("document", "summary")


# name: (instruction, word cap, re-join short documents, gen length, lead k)
_PROTOCOL_ROWS = {
    "xsum": ("Summarize the following text in one sentence:", 1500, False, 128, 1),
    "cnn_dailymail": ("Summarize the following news article in 2-3 sentences:", 400, True, 256, 3),
    "pubmed": ("Summarize the following scientific paper in a concise abstract:", 1500, False, 256, 3),
    "arxiv": ("Summarize the following research paper in a concise abstract:", 1500, False, 256, 3),
    "billsum": ("Summarize the following legislation:", 400, True, 256, 3),
    "aeslc": ("Write a short subject line for this email:", 300, True, 64, 1),
}
# name: (Hugging Face names, config, (document column, summary column))
_HF_SOURCES = {
    "xsum": (("EdinburghNLP/xsum", "xsum"), None, ("document", "summary")),
    "cnn_dailymail": (("cnn_dailymail", "abisee/cnn_dailymail"), "3.0.0", ("article", "highlights")),
    "pubmed": (("ccdv/pubmed-summarization",), None, ("article", "abstract")),
    "arxiv": (("ccdv/arxiv-summarization",), None, ("article", "abstract")),
    "billsum": (("FiscalNote/billsum", "billsum"), None, ("text", "summary")),
}
PROTOCOLS: Dict[str, DatasetProtocol] = {
    name: DatasetProtocol(name, *row, *_HF_SOURCES.get(name, ())) for name, row in _PROTOCOL_ROWS.items()}
ALIASES = {"cnn_dm": "cnn_dailymail", "cnndm": "cnn_dailymail", "cnn": "cnn_dailymail"}
LEAD_K_OTHER = 3  # data README: lead-1 for xsum and aeslc, lead-3 for everything else
DEFAULT_SEED = 42  # ref §6
DEFAULT_NFE = (8, 16, 32, 64)  # ref §6: the full sweep script
DEFAULT_SPLIT = "test"  # ref §6: every set is drawn from the test split
METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
TAGS = ("empty", "premature_eos", "repetition", "degen_ending", "degenerate")
DEGENERATE_MARKERS = (":::", "...", "{}", '""', "quest", "\u200b")  # ref §6: > 3 occurrences of any


def protocol_for(name: str) -> Optional[DatasetProtocol]:
    """The protocol a dataset name selects: a protocol name, an alias, a Hugging Face name, or
    one of those with a `_<digits>` suffix (`cnn_dailymail_100`); None when nothing matches."""
    key = name.strip()
    for protocol in PROTOCOLS.values():
        if key.lower() in (n.lower() for n in protocol.hf_names):
            return protocol
    key = key.lower()
    for candidate in (key, re.sub(r"_\d+$", "", key)):
        candidate = ALIASES.get(candidate, candidate)
        if candidate in PROTOCOLS:
            return PROTOCOLS[candidate]
    return None


# ============================================================================ text, ROUGE, tags

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")  # data README: `.`, `!` or `?` followed by whitespace


def sentences(text: str) -> List[str]:
    """Sentences of `text` split at `.!?` + whitespace (data README), stripped, empty ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def cap_words(document: str, max_words: Optional[int], rejoin_short: bool) -> str:
    """The document cut to its first `max_words` whitespace words, re-joined with single spaces
    (always with `rejoin_short`, else only when it was longer)."""
    if max_words is None:
        return document
    words = document.split()
    if rejoin_short or len(words) > max_words:
        return " ".join(words[:max_words])
    return document


def lead(document: str, k: int) -> str:
    """The lead-k baseline: the document's first k sentences (data README), joined by spaces."""
    return " ".join(sentences(document)[:k])


@functools.lru_cache(maxsize=1)
def _scorers():
    from rouge_score import rouge_scorer

    return (rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True),
            rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True))


def rouge(reference: str, output: str) -> Dict[str, float]:
    """ROUGE-1/2/L F1 × 100 on the plain texts and ROUGE-Lsum F1 × 100 on the sentence-split
    texts; an output without words scores 0 (ref §6)."""
    if not output.split():
        return dict.fromkeys(METRICS, 0.0)
    plain, summary_level = _scorers()
    scores = {m: 100.0 * s.fmeasure for m, s in plain.score(reference, output).items()}
    lsum = summary_level.score("\n".join(sentences(reference)), "\n".join(sentences(output)))
    scores["rougeLsum"] = 100.0 * lsum["rougeLsum"].fmeasure
    return {m: scores[m] for m in METRICS}


def failure_tags(output: str, reference: str) -> List[str]:
    """Failure tags of one output (ref §6; words are whitespace-split):

    - empty: no words. An empty output gets this tag only (the others describe a text).
    - premature_eos: fewer than 15 words, or fewer than 0.4 × the reference's words.
    - repetition: 8+ words and the most frequent 4-gram's count / the number of 4-grams > 0.15.
    - degen_ending: more than 8 of '.' and ',' in the last 40 characters, or '.......' anywhere.
    - degenerate: any of ':::', '...', '{}', '""', 'quest', U+200B occurs more than 3 times.
    """
    words = output.split()
    if not words:
        return ["empty"]
    tags = []
    if len(words) < 15 or len(words) < 0.4 * len(reference.split()):
        tags.append("premature_eos")
    if len(words) >= 8:
        grams = Counter(tuple(words[i : i + 4]) for i in range(len(words) - 3))
        if max(grams.values()) / (len(words) - 3) > 0.15:
            tags.append("repetition")
    tail = output[-40:]
    if tail.count(".") + tail.count(",") > 8 or "......." in output:
        tags.append("degen_ending")
    if any(output.count(marker) > 3 for marker in DEGENERATE_MARKERS):
        tags.append("degenerate")
    return tags


# ============================================================================ data


@dataclass
class Sample:
    index: int  # position in the evaluated list (after selection); sample seed = seed + index
    id: object
    document: str
    summary: str


@dataclass
class Dataset:
    label: str
    source: str
    protocol: DatasetProtocol
    samples: List[Sample]
    columns: Dict[str, str]
    skipped_empty: int = 0

    def describe(self) -> dict:
        return {"label": self.label, "source": self.source, "n": len(self.samples),
                "skipped_empty": self.skipped_empty, "columns": self.columns,
                "protocol": dataclasses.asdict(self.protocol)}


def _read_jsonl_rows(path: Path) -> List[dict]:
    if not path.is_file():
        raise ValueError(f"data file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: the file holds no records")
    return rows


def _read_hf_rows(name: str, config: Optional[str], split: str) -> List[dict]:
    import datasets

    path = Path(name)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"{name}: no split {split!r} (has {sorted(data)})")
            data = data[split]
    else:
        data = datasets.load_dataset(name, config, split=split)
    if len(data) == 0:
        raise ValueError(f"{name} [{split}]: the split holds no records")
    return list(data)


def _select(rows: List[dict], source: str, columns: Dict[str, str], id_required: bool, num_samples: Optional[int],
            shuffle_seed: Optional[int]) -> Tuple[List[Sample], int]:
    """Samples from rows: checked columns, optional shuffle (`random.Random(seed)`), empty rows
    skipped, the first `num_samples` kept; the id is the id column's value, else the row number."""
    doc_col, sum_col, id_col = columns["document"], columns["summary"], columns["id"]
    for number, row in enumerate(rows):
        missing = [c for c in (doc_col, sum_col) + ((id_col,) if id_required else ()) if c not in row]
        if missing:
            raise ValueError(f"{source}: record {number} has no column(s) {missing}; its columns are "
                             f"{sorted(row)} (set the document / summary / id columns)")
    order = list(range(len(rows)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    samples, skipped = [], 0
    for row_number in order:
        row = rows[row_number]
        document, summary = row[doc_col], row[sum_col]
        if not isinstance(document, str) or not isinstance(summary, str):
            raise ValueError(f"{source}: record {row_number}: {doc_col!r} and {sum_col!r} must be strings")
        if not document.strip() or not summary.strip():
            skipped += 1  # ref §6: the 1000-sample build skips empty rows
            continue
        if num_samples is not None and len(samples) >= num_samples:
            break
        samples.append(Sample(len(samples), row.get(id_col, row_number), document, summary))
    if not samples:
        raise ValueError(f"{source}: no record with a non-empty document and summary")
    return samples, skipped


# ============================================================================ methods


def snap_block(block: int, gen_length: int) -> int:
    """The largest divisor of `gen_length` not above `block` (ref §6: "the block is snapped to a
    divisor of G"; block 256 with G <= 256 gives a single block)."""
    block = min(block, gen_length)
    while gen_length % block:
        block -= 1
    return block


def _sde_steps(nfe, config):
    return (nfe - 1) // 2 if config.integrator == "heun" else nfe - 1


def _low_confidence_steps(nfe, config):
    return nfe // 2 if config.cfg_scale > 0 else nfe


def _hybrid_steps(nfe, config):
    if config.hybrid_finish == "low_confidence" and config.cfg_scale > 0:
        raise ValueError("hybrid with cfg_scale > 0 has no NFE budget rule; use cfg_scale=0")
    return nfe - 1 if config.hybrid_finish == "low_confidence" else nfe - 2


# NFE budget → `steps`, by generate()'s own NFE accounting (DSLGenerationConfig docstring): the
# most steps whose evaluations fit the budget. Each run records the NFE generate() reports.
STEP_RULES: Dict[str, Callable] = {
    "sde": _sde_steps,                        # Euler T + 1, Heun 2T + 1
    "mdlm": lambda nfe, config: nfe - 1,      # at most T + 1
    "remdm": lambda nfe, config: nfe - 1,     # at most T + 1
    "low_confidence": _low_confidence_steps,  # T (2T with CFG)
    "hybrid": _hybrid_steps,                  # T + 1 (low_confidence finish), at most T + 2 (remdm finish)
    "roar": lambda nfe, config: nfe,          # ⌈G / ⌈G / T⌉⌉ <= T
}


@dataclass(frozen=True)
class ModelFacts:
    """What a method's settings may depend on besides the budget: the model's EOS id (the first of
    the model config's `eos_token_id`, else the tokenizer's: LLaDA's `<|endoftext|>` 126081, whose
    `<|eot_id|>` comes second, llada_dsl.md §1.1) and whether its backbone has a token embedding
    of its own (LLaDA: the published model can run on its own inputs, `token_inputs="backbone"`)."""

    eos_token_id: Optional[int] = None
    token_embedding: bool = False


@dataclass(frozen=True)
class MethodSpec:
    """A generation method (one row of `PRESETS`): a `generate()` strategy; fixed settings;
    `derived(nfe, gen_length, facts) -> settings` for those that depend on the budget, G or the
    model (`ModelFacts`: e.g. a block snapped to a divisor of G, the EOS id to suppress); the NFE →
    steps rule `steps(nfe, config)` (None: `STEP_RULES[strategy]`); `final_decode_counted`: False
    when the method's NFE budget, as its authors count it, leaves out generate()'s final decode
    (DSL-LLaDA's SDE: NFE = 2S, ref §5.5), so it uses NFE + 1 evaluations. A method's own settings
    (`NAME:key=value`) override the fixed and the derived ones."""

    strategy: str
    settings: Mapping[str, object] = field(default_factory=dict)
    derived: Optional[Callable[[int, int, ModelFacts], Mapping[str, object]]] = None
    steps: Optional[Callable] = None
    final_decode_counted: bool = True
    source: str = ""


def _llada_inputs(facts: ModelFacts) -> dict:
    """LLaDA's sampler runs the published model on its own token inputs when the backbone has a
    token embedding (LLaDA-8B-Instruct, ref §3, §6); a model without one runs through its converter."""
    return {"token_inputs": "backbone" if facts.token_embedding else "converter"}


def _remask(block: int, suppress_eos: bool = False) -> Callable:
    def derived(nfe, gen_length, facts):
        settings = {"block_length": snap_block(block, gen_length), **_llada_inputs(facts)}
        if suppress_eos:
            settings["suppress_token_ids"] = [facts.eos_token_id]
        return settings

    return derived


_LLADA_REMASK = dict(temperature=0.0, cfg_scale=0.0, remasking="low_confidence", top_p=None, top_k=None,
                     stop_at_eos=False)
PRESETS: Dict[str, MethodSpec] = {
    "original_remask": MethodSpec(
        "low_confidence", _LLADA_REMASK, derived=_remask(256), steps=lambda nfe, config: nfe,
        source="ref §6: LLaDA's low-confidence remasking as the authors ran it: steps = NFE, temperature 0, "
               "cfg 0, block 256 snapped to a divisor of G; the published model on its own token inputs when "
               "the backbone has a token embedding (LLaDA), else through the converter"),
    "original_remask_eosInf_b32": MethodSpec(
        "low_confidence", _LLADA_REMASK, derived=_remask(32, suppress_eos=True), steps=lambda nfe, config: nfe,
        source="ref §6: original_remask with block 32 snapped to a divisor of G and LLaDA's logits_eos_inf: the "
               "EOS logit (<|endoftext|> 126081, the model's first EOS id) at -inf, <|eot_id|> allowed"),
    "dsl_llada_sde": MethodSpec(
        "dsl_llada_sde", steps=lambda nfe, config: nfe // 2, final_decode_counted=False,
        source="ref §5.5, §6 (b1_sde): DSL-LLaDA's Heun SDE, S = NFE // 2 steps (NFE = 2S as the authors count "
               "it; generate() reports 2S + 1 with the final decode), sensitive grid 0.01 → 100, eta by NFE, "
               "beta_inf = 2 beta, top-512 posterior mean, unit-norm init, clean wte(prompt)"),
}
# Set by the protocol, not by a method's settings.
RESERVED = {"steps": "--nfe", "gen_length": "--gen_length", "max_new_tokens": "--gen_length", "seed": "--seed",
            "strategy": "the method name", "truncate_at_eos": "--truncate_at_eos", "eos_token_id": "the model config",
            "num_return_sequences": "(one sample per prompt)", "input_ids": "", "attention_mask": "",
            "return_dict_in_generate": ""}


@dataclass
class Method:
    label: str
    name: str
    spec: Optional[MethodSpec]  # None: lead
    settings: Dict[str, object]
    lead_k: Optional[int] = None  # lead methods: k (None: the dataset's, data README)

    @property
    def is_lead(self) -> bool:
        return self.spec is None

    def describe(self) -> dict:
        if self.is_lead:
            return {"label": self.label, "kind": "lead", "k": self.lead_k or "per dataset (data README)"}
        spec = self.spec
        return {"label": self.label, "kind": "generate", "name": self.name, "strategy": spec.strategy,
                "preset_settings": dict(spec.settings), "settings": self.settings,
                "final_decode_counted": spec.final_decode_counted, "source": spec.source}


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_method(text: str, strategies: Sequence[str]) -> Method:
    """`[LABEL=]NAME[:key=value,...]`: NAME is a preset (`PRESETS`), a `generate()` strategy with
    an NFE rule (`STEP_RULES`), `lead-k` (k per dataset) or `lead-N`; values are JSON when they
    parse (`0.5`, `true`, `null`), else strings. The label defaults to the text."""
    head, sep, rest = text.partition(":")
    label = text
    if "=" in head:
        label, _, head = head.partition("=")
    name = head.strip()
    settings: Dict[str, object] = {}
    if sep and rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"method {text!r}: settings must be key=value pairs separated by commas")
            settings[key.strip()] = _parse_value(value.strip())
    for key in settings:
        if key in RESERVED:
            where = f" (set by {RESERVED[key]})" if RESERVED[key] else ""
            raise ValueError(f"method {text!r}: {key!r} cannot be a method setting{where}")
    lead_match = re.fullmatch(r"lead-(k|\d+)", name)
    if lead_match:
        if settings:
            raise ValueError(f"method {text!r}: lead-k takes no settings")
        k = None if lead_match.group(1) == "k" else int(lead_match.group(1))
        if k is not None and k < 1:
            raise ValueError(f"method {text!r}: lead-N needs N >= 1")
        return Method(label.strip(), name, None, {}, k)
    if name in PRESETS:
        spec = PRESETS[name]
    elif name in STEP_RULES and name in strategies:
        spec = MethodSpec(name, source="generate() strategy with its settings; NFE budget → steps by STEP_RULES")
    else:
        available = sorted(PRESETS) + sorted(s for s in strategies if s in STEP_RULES) + ["lead-k", "lead-N"]
        raise ValueError(f"unknown method {name!r}; available: {available}")
    return Method(label.strip(), name, spec, settings)


def generation_strategies() -> List[str]:
    from modeling_dsl.generation_dsl import STRATEGIES

    return list(STRATEGIES)


def generate_kwargs(method: Method, nfe: int, gen_length: int, generation_config,
                    facts: ModelFacts = ModelFacts()) -> dict:
    """The exact `generate()` keyword arguments (all but the prompts and seeds) of `method` at an
    NFE budget for a model (`facts`); checked by the model's generation config (`ValueError`
    naming the problem)."""
    spec = method.spec
    derived = spec.derived(nfe, gen_length, facts) if spec.derived else {}
    settings = {**spec.settings, **derived, **method.settings}
    if settings.get("suppress_token_ids") == [None]:
        raise ValueError(f"method {method.label!r}: the model has no EOS id to suppress (no eos_token_id in its "
                         f"config or tokenizer); give it as {method.name}:suppress_token_ids=[ID]")
    unknown = sorted(k for k in settings if not hasattr(generation_config, k))
    if unknown:
        raise ValueError(f"method {method.label!r}: unknown generate() settings {unknown}")
    view = copy.deepcopy(generation_config)  # the settings the steps rule reads (integrator, cfg_scale, ...)
    for key, value in settings.items():
        setattr(view, key, value)
    steps = (spec.steps or STEP_RULES[spec.strategy])(nfe, view)
    if steps < 1:
        raise ValueError(f"method {method.label!r}: an NFE budget of {nfe} leaves no step (steps = {steps})")
    # ref §6: no truncation at the first EOS; ask generate() for every generated id explicitly.
    kwargs = dict(strategy=spec.strategy, steps=steps, gen_length=gen_length, num_return_sequences=1, **settings,
                  truncate_at_eos=False)
    config = copy.deepcopy(generation_config)
    try:
        config.update(**kwargs)
        config.validate()
    except ValueError as err:
        raise ValueError(f"method {method.label!r} at NFE {nfe}, gen_length {gen_length}: {err}") from None
    return json.loads(json.dumps(kwargs))  # plain JSON types, as records store them


# ============================================================================ settings


@dataclass
class EvalSettings:
    """Every setting of a run (the CLI's options; see `scripts/eval_summarization.py --help`)."""

    output_dir: str
    methods: List[str]
    data: List[str] = field(default_factory=list)
    hf_dataset: Optional[str] = None
    hf_config: Optional[str] = None
    split: str = DEFAULT_SPLIT
    document_column: Optional[str] = None
    summary_column: Optional[str] = None
    id_column: Optional[str] = None
    template: Optional[str] = None
    instruction: Optional[str] = None
    max_words: Optional[int] = None  # None: the protocol's; 0: no cap; N: documents within N words unchanged
    gen_length: Optional[int] = None  # None: the protocol's
    lead_k: Optional[int] = None  # None: the protocol's (lead-k)
    num_samples: Optional[int] = None
    shuffle_seed: Optional[int] = None
    nfe: List[int] = field(default_factory=lambda: list(DEFAULT_NFE))
    model: Optional[str] = None
    revision: Optional[str] = None
    tokenizer: Optional[str] = None
    dtype: str = "float32"
    device: Optional[str] = None
    seed: int = DEFAULT_SEED
    batch_size: int = 8
    chat_template: str = "auto"  # auto | on | off
    skip_special_tokens: bool = True  # ref §6
    truncate_at_eos: bool = False  # ref §6
    num_shards: int = 1
    shard_index: int = 0
    progress: bool = True
    check_evaluate: bool = True

    def check(self) -> None:
        if not self.methods:
            raise ValueError("methods: give at least one method")
        if not self.data and not self.hf_dataset:
            raise ValueError("data: give jsonl files or a Hugging Face dataset")
        if not self.nfe or any(not isinstance(n, int) or n < 1 for n in self.nfe):
            raise ValueError(f"nfe: every NFE budget must be an integer >= 1, got {self.nfe}")
        for name, low in (("batch_size", 1), ("num_shards", 1), ("shard_index", 0), ("seed", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        for name, low in (("num_samples", 1), ("gen_length", 1), ("lead_k", 1), ("max_words", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index must be < num_shards={self.num_shards}, got {self.shard_index}")
        if self.chat_template not in ("auto", "on", "off"):
            raise ValueError(f"chat_template must be auto, on or off, got {self.chat_template!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")


def _shard_suffix(settings: EvalSettings) -> str:
    return "" if settings.num_shards == 1 else f".shard-{settings.shard_index}-of-{settings.num_shards}"


def _resolve_protocol(name: str, settings: EvalSettings) -> DatasetProtocol:
    protocol = protocol_for(settings.template or name)
    if protocol is None:
        if settings.template:
            raise ValueError(f"unknown dataset template {settings.template!r}; known: {sorted(PROTOCOLS)}")
        if settings.instruction is None or settings.gen_length is None:
            raise ValueError(f"no dataset template for {name!r}; known: {sorted(PROTOCOLS)} (pass --template, or "
                             "--instruction and --gen_length for a new dataset)")
        protocol = DatasetProtocol(name, settings.instruction, None, False, settings.gen_length, LEAD_K_OTHER)
    overrides = {}
    if settings.instruction is not None:
        overrides["instruction"] = settings.instruction
    if settings.max_words is not None:  # a new cap follows the 1000-sample build: shorter documents stay as they are
        overrides.update(max_words=settings.max_words or None, rejoin_short=False)
    if settings.gen_length is not None:
        overrides["gen_length"] = settings.gen_length
    if settings.lead_k is not None:
        overrides["lead_k"] = settings.lead_k
    return dataclasses.replace(protocol, **overrides)


def load_datasets(settings: EvalSettings) -> List[Dataset]:
    """The evaluated datasets (jsonl files, then the Hugging Face dataset), validated."""
    inputs = []  # (label, source, protocol, columns, rows loader)
    for path in map(Path, settings.data):
        protocol = _resolve_protocol(path.stem, settings)
        inputs.append((path.stem, str(path), protocol, ("document", "summary"),
                       functools.partial(_read_jsonl_rows, path)))
    if settings.hf_dataset:
        name = settings.hf_dataset
        protocol = _resolve_protocol(name, settings)
        config = settings.hf_config or (protocol.hf_config if name in protocol.hf_names else None)
        source = name + (f" ({config})" if config else "") + f" [{settings.split}]"
        inputs.append((protocol.name, source, protocol, protocol.columns,
                       functools.partial(_read_hf_rows, name, config, settings.split)))
    labels = [label for label, *_ in inputs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two inputs have the same dataset name: {labels}")
    datasets_ = []
    for label, source, protocol, (doc_col, sum_col), read_rows in inputs:
        columns = {"document": settings.document_column or doc_col, "summary": settings.summary_column or sum_col,
                   "id": settings.id_column or "id"}
        samples, skipped = _select(read_rows(), source, columns, settings.id_column is not None,
                                   settings.num_samples, settings.shuffle_seed)
        if skipped:
            logger.warning("%s: skipped %d record(s) with an empty document or summary", source, skipped)
        datasets_.append(Dataset(label, source, protocol, samples, columns, skipped))
    return datasets_


# ============================================================================ model and prompts


def model_context(model) -> int:
    """The longest sequence (prompt + generation) the model takes."""
    for name in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError("the model config gives no context length (max_position_embeddings)")


def load_model(name: str, revision: Optional[str], dtype: str, device: str, seed: int = DEFAULT_SEED):
    """`(model, loader)`: a `DSLForDiffusionLM` from a LLaDA-format checkpoint (config.json
    `model_type` "llada": `GSAI-ML/LLaDA-8B-*`, released `liddlefish/DSL-LLaDA-*`) through
    `DSLForDiffusionLM.from_llada`, or from a saved DSL checkpoint (`model_type` "dsl_diffusion")
    through `DSLForDiffusionLM.from_pretrained`; a folder or a Hub id at `revision` (a branch, tag or
    commit; None: the default branch), in `dtype` on `device`.

    A plain LLaDA checkpoint has no converter: from_llada draws its bias c and the noise embeddings
    E afresh, under `seed` (`from_llada(seed=...)`, the global RNG untouched), so every process of a
    run (shards, resumes) evaluates the same model."""
    import torch
    from transformers import PretrainedConfig

    from modeling_dsl import DSLConfig, DSLForDiffusionLM

    torch_dtype = getattr(torch, dtype)
    config, _ = PretrainedConfig.get_config_dict(name, revision=revision)
    model_type = config.get("model_type")
    if model_type == "llada":
        model = DSLForDiffusionLM.from_llada(name, revision=revision, torch_dtype=torch_dtype, seed=seed)
        loader = "from_llada"
        if not Path(name).is_dir():  # the Hub commit behind `revision` (from_llada's own snapshot; cached)
            from modeling_dsl.modeling_dsl import resolve_checkpoint_dir

            folder = Path(resolve_checkpoint_dir(name, revision))
            if folder.parent.name == "snapshots":
                model.config._commit_hash = folder.name
    elif model_type == DSLConfig.model_type:
        model = DSLForDiffusionLM.from_pretrained(name, revision=revision, dtype=torch_dtype)
        loader = "from_pretrained"
    else:
        raise ValueError(f"model {name!r}: config.json has model_type {model_type!r}; expected a DSL checkpoint "
                         f"({DSLConfig.model_type!r}) or a LLaDA-format one ('llada')")
    return model.to(device=device, dtype=torch_dtype).eval(), loader


_SENTINEL = "\u0000DOCUMENT\u0000"


class PromptEncoder:
    """Prompt text → token ids within `budget` tokens (context − G).

    With the chat template: the prompt is the single user turn, rendered with
    `add_generation_prompt=True` and tokenized with `add_special_tokens=False` (the template
    brings its own BOS). Without: the raw prompt, tokenized with the tokenizer's defaults.
    A prompt over budget is cut at the end of the document: the rendered text is split around the
    document, the part up to the document's end is cut from the right at token level, and the
    rest (the template's closing tokens) is kept whole.
    """

    def __init__(self, tokenizer, use_chat: bool, budget: int):
        self.tokenizer, self.use_chat, self.budget = tokenizer, use_chat, budget

    def _render(self, text: str) -> str:
        if not self.use_chat:
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)

    def _ids(self, text: str, first: bool = True) -> List[int]:
        add = (not self.use_chat) and first
        return list(self.tokenizer(text, add_special_tokens=add)["input_ids"])

    def encode(self, instruction: str, document: str) -> Tuple[List[int], bool]:
        ids = self._ids(self._render(f"{instruction}\n\n{document}"))
        if len(ids) <= self.budget:
            return ids, False
        template = self._render(f"{instruction}\n\n{_SENTINEL}")
        if template.count(_SENTINEL) != 1:
            raise ValueError("the chat template alters the prompt; cannot cut a prompt at the end of its document")
        before, after = template.split(_SENTINEL)
        head = self._ids(before + document)
        tail = self._ids(after, first=False) if after else []
        keep = self.budget - len(tail)
        if keep <= len(self._ids(before)):
            raise ValueError(f"the prompt template alone ({len(self._ids(before)) + len(tail)} tokens) does not fit "
                             f"the {self.budget}-token prompt budget (context − gen_length)")
        return head[:keep] + tail, True


def prompt_hash(ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


def decode_output(tokenizer, ids: Sequence[int], skip_special_tokens: bool, eos_ids: Sequence[int],
                  truncate_at_eos: bool) -> Tuple[str, int]:
    """Text of the G generated ids and how many ids it came from (ref §6: special tokens removed,
    no cut at the first EOS unless asked; a decoding error gives "")."""
    ids = list(ids)
    if truncate_at_eos:
        cut = next((i for i, t in enumerate(ids) if t in set(eos_ids)), None)
        ids = ids if cut is None else ids[:cut]
    vocab = len(tokenizer)
    special = set(tokenizer.all_special_ids) if skip_special_tokens else set()
    ids = [t for t in ids if 0 <= t < vocab and t not in special]
    try:
        text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    except Exception as err:  # noqa: BLE001 — ref §6: exceptions give ""
        logger.warning("decoding failed (%s); the output counts as empty", err)
        return "", 0
    return text, len(ids)


# ============================================================================ the run


def _key(record: Mapping) -> Tuple:
    """A sample of the sweep: (dataset, method label, NFE budget, index)."""
    return (record["dataset"], record["method"], record["nfe"], record["index"])


# Fields a finished record must share with what this run would write, else resuming refuses.
_FINGERPRINT = ("id", "seed", "model", "prompt_sha256", "generate")


def _scored(record: dict, reference: str) -> dict:
    output = record["output"]
    record["words"] = len(output.split())
    record["scores"] = rouge(reference, output)
    record["tags"] = failure_tags(output, reference)
    return record


@dataclass
class _Generation:
    """What generation needs, prepared (and validated) before anything is written."""

    model: object
    tokenizer: object
    info: dict
    prompts: Dict[Tuple[str, int], Tuple[List[int], bool]]  # (dataset, index) -> (ids, cut)
    kwargs: Dict[Tuple[str, str, int], dict]  # (dataset, method, NFE) -> generate() kwargs
    eos_ids: List[int]


def _prepare_generation(settings: EvalSettings, datasets_: List[Dataset], generating: List[Method],
                        mine: Dict[str, List[Sample]]) -> _Generation:
    import torch
    from modeling_dsl import load_tokenizer

    if not settings.model:
        raise ValueError(f"methods {[m.label for m in generating]} need a model (--model)")
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(settings.tokenizer or settings.model,
                               revision=None if settings.tokenizer else settings.revision)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if settings.chat_template == "on" and not has_template:
        raise ValueError("chat_template='on' but the tokenizer has no chat template")
    use_chat = has_template and settings.chat_template != "off"
    model, loader = load_model(settings.model, settings.revision, settings.dtype, device, settings.seed)
    context = model_context(model)
    model_eos = getattr(model.config, "eos_token_id", None)  # LLaDA: [<|endoftext|>, <|eot_id|>]
    model_eos = [t for t in (model_eos if isinstance(model_eos, (list, tuple)) else [model_eos]) if isinstance(t, int)]
    facts = ModelFacts(eos_token_id=model_eos[0] if model_eos else tokenizer.eos_token_id,
                       token_embedding=model.backbone.token_embedding() is not None)
    prompts, kwargs, cut_counts = {}, {}, {}
    for d in datasets_:
        gen_length = d.protocol.gen_length
        if gen_length >= context:
            raise ValueError(f"{d.label}: gen_length {gen_length} leaves no room for a prompt in the model's "
                             f"context of {context} tokens")
        for m in generating:
            for nfe in settings.nfe:
                kwargs[(d.label, m.label, nfe)] = generate_kwargs(m, nfe, gen_length, model.generation_config, facts)
        encoder = PromptEncoder(tokenizer, use_chat, context - gen_length)
        for s in mine[d.label]:
            text = cap_words(s.document, d.protocol.max_words, d.protocol.rejoin_short)
            prompts[(d.label, s.index)] = encoder.encode(d.protocol.instruction, text)
        cut = sum(prompts[(d.label, s.index)][1] for s in mine[d.label])
        if cut:
            cut_counts[d.label] = f"{cut} of {len(mine[d.label])}"
    if cut_counts:
        logger.warning("prompts longer than the context minus gen_length were cut at the end of the document: %s",
                       ", ".join(f"{k} {v}" for k, v in cut_counts.items()))
    eos_ids = sorted({t for t in [tokenizer.eos_token_id, *model_eos] if isinstance(t, int)})
    info = {"name": settings.model, "revision": settings.revision, "loader": loader,
            "backbone_type": getattr(model.config, "backbone_type", None),
            "commit": getattr(model.config, "_commit_hash", None), "dtype": settings.dtype, "device": device,
            "context": context, "parameters": sum(p.numel() for p in model.parameters()),
            "chat_template_used": use_chat, "tokenizer": settings.tokenizer or settings.model,
            "eos_ids_for_truncation": eos_ids,
            "generation_config": json.loads(model.generation_config.to_json_string(use_diff=False))}
    return _Generation(model, tokenizer, info, prompts, kwargs, eos_ids)


def _fingerprint(d: Dataset, m: Method, nfe: int, s: Sample, settings: EvalSettings,
                 gen: Optional[_Generation]) -> dict:
    """The fields of a record that say how it was made (see `_FINGERPRINT`)."""
    base = {"dataset": d.label, "index": s.index, "id": s.id, "method": m.label, "nfe": nfe}
    if m.is_lead:
        k = m.lead_k or d.protocol.lead_k
        return {**base, "seed": None, "model": None, "prompt_sha256": None, "generate": {"lead_k": k}}
    ids, cut = gen.prompts[(d.label, s.index)]
    return {**base, "seed": settings.seed + s.index,
            "model": f"{settings.model}@{settings.revision or 'default'}/{settings.dtype}",
            "prompt_sha256": prompt_hash(ids), "prompt_tokens": len(ids), "prompt_cut": cut,
            "generate": gen.kwargs[(d.label, m.label, nfe)]}


@dataclass
class _Job:
    dataset: Dataset
    method: Method
    nfe: int
    samples: List[Sample]


def _plan(datasets_, methods, settings, mine, gen, existing: Mapping[Tuple, dict], where: Path):
    """The jobs still to do and the number of finished samples (checked against this run)."""
    jobs, finished = [], 0
    for d in datasets_:
        for m in methods:
            for nfe in ([0] if m.is_lead else settings.nfe):
                pending = []
                for s in mine[d.label]:
                    done = existing.get((d.label, m.label, nfe, s.index))
                    if done is None:
                        pending.append(s)
                        continue
                    expected = _fingerprint(d, m, nfe, s, settings, gen)
                    stale = [f for f in _FINGERPRINT if done.get(f) != expected[f]]
                    if stale:
                        raise ValueError(f"{where}: the finished sample {d.label}/{m.label}/NFE {nfe}/{s.index} was "
                                         f"made with other settings ({stale} differ); use another output_dir or "
                                         "remove that file")
                    finished += 1
                if pending:
                    jobs.append(_Job(d, m, nfe, pending))
    return jobs, finished


def run(settings: EvalSettings) -> dict:
    """Run (or resume) a sweep: every method × NFE budget (lead: once) on every dataset, on the
    samples of this shard (index mod num_shards == shard_index). Everything is validated before
    anything is written. Returns counts and the paths written."""
    settings.check()
    datasets_ = load_datasets(settings)
    strategies = generation_strategies()
    methods = [parse_method(m, strategies) for m in settings.methods]
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two methods have the same label: {labels} (name them LABEL=METHOD)")
    generating = [m for m in methods if not m.is_lead]
    mine = {d.label: [s for s in d.samples if s.index % settings.num_shards == settings.shard_index]
            for d in datasets_}
    gen = _prepare_generation(settings, datasets_, generating, mine) if generating else None

    # ---- outputs: nothing has been written so far
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = _shard_suffix(settings)
    samples_path = out / f"samples{suffix}.jsonl"
    existing = {_key(r): r for r in read_jsonl(samples_path, repair=True)}
    jobs, finished = _plan(datasets_, methods, settings, mine, gen, existing, samples_path)
    run_config = {
        "protocol": "zero-shot summarization, DSL-LLaDA (reference llada_dsl.md §6)",
        "settings": dataclasses.asdict(settings), "model": gen.info if gen else None,
        "datasets": [d.describe() for d in datasets_], "methods": [m.describe() for m in methods],
        "nfe": list(settings.nfe),
        "generate_kwargs": {"|".join(map(str, k)): v for k, v in (gen.kwargs if gen else {}).items()},
        "environment": environment(gen.info["device"] if gen else None),
    }
    write_json(out / f"run{suffix}.json", run_config)

    total = sum(len(j.samples) for j in jobs)
    logger.info("%d sample(s) already finished, %d to do", finished, total)
    calls = 0
    from tqdm.auto import tqdm

    with JsonlWriter(samples_path) as writer, tqdm(total=total, disable=not settings.progress,
                                                   desc="summarization") as bar:
        for job in jobs:
            bar.set_postfix_str(f"{job.dataset.label} {job.method.label} NFE {job.nfe}")
            if job.method.is_lead:
                for s in job.samples:
                    record = _fingerprint(job.dataset, job.method, 0, s, settings, gen)
                    record.update(output=lead(s.document, record["generate"]["lead_k"]), num_tokens=None, nfe_used=0)
                    writer.write(_scored(record, s.summary))
                    bar.update(1)
            else:
                calls += _generate_job(job, gen, settings, writer, bar)

    result = {"finished_before": finished, "generated": total, "generate_calls": calls,
              "samples": str(samples_path), "run_config": str(out / f"run{suffix}.json")}
    if settings.num_shards == 1:
        result.update(write_report(out, run_config, read_jsonl(samples_path), settings.check_evaluate))
    return result


def _generate_job(job: _Job, gen: _Generation, settings: EvalSettings, writer: JsonlWriter, bar) -> int:
    """Generate, decode, score and write the samples of one (dataset, method, NFE); returns the
    number of generate() calls."""
    import torch

    d, m, nfe = job.dataset, job.method, job.nfe
    gen_kwargs = gen.kwargs[(d.label, m.label, nfe)]
    gen_length = gen_kwargs["gen_length"]
    device = next(gen.model.parameters()).device
    order = sorted(job.samples, key=lambda s: (len(gen.prompts[(d.label, s.index)][0]), s.index))  # less padding
    calls = 0
    for start in range(0, len(order), settings.batch_size):
        batch = order[start : start + settings.batch_size]
        rows = [gen.prompts[(d.label, s.index)][0] for s in batch]
        longest = max(map(len, rows))
        input_ids = torch.zeros(len(rows), longest, dtype=torch.long)
        attention_mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for r, ids in enumerate(rows):  # right padding; generate() reads the mask
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attention_mask[r, : len(ids)] = 1
        output = gen.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                    return_dict_in_generate=True, seed=[settings.seed + s.index for s in batch],
                                    **gen_kwargs)
        calls += 1
        generated = output.sequences[:, longest:]
        if tuple(generated.shape) != (len(rows), gen_length):
            raise RuntimeError(f"generate() returned {tuple(output.sequences.shape)}, expected "
                               f"({len(rows)}, {longest} + {gen_length})")
        nfe_used = int(output.nfe)
        allowed = nfe if m.spec.final_decode_counted else nfe + 1  # + the final decode the budget leaves out
        if nfe_used > allowed:
            logger.warning("%s/%s: generate() used %d evaluations for an NFE budget of %d", d.label, m.label,
                           nfe_used, nfe)
        for r, s in enumerate(batch):
            text, num_tokens = decode_output(gen.tokenizer, generated[r].tolist(), settings.skip_special_tokens,
                                             gen.eos_ids, settings.truncate_at_eos)
            record = _fingerprint(d, m, nfe, s, settings, gen)
            record.update(output=text, num_tokens=num_tokens, nfe_used=nfe_used)
            writer.write(_scored(record, s.summary))
        bar.update(len(batch))
    return calls


# ============================================================================ aggregation and reports


def aggregate(records: Sequence[dict]) -> List[dict]:
    """One row per (dataset, method, NFE): mean scores, NFE used, valid count, mean words and
    tokens, tag rates (% of samples), cut prompts. Independent of record order."""
    groups: Dict[Tuple, List[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"], r["nfe"]), []).append(r)
    rows = []
    for (dataset, method, nfe), group in groups.items():
        group = sorted(group, key=lambda r: r["index"])
        n = len(group)
        row = {"dataset": dataset, "method": method, "nfe": nfe, "n": n}
        for metric in METRICS:
            row[metric] = sum(r["scores"][metric] for r in group) / n
        row["nfe_used_mean"] = sum(r["nfe_used"] for r in group) / n
        row["nfe_used_max"] = max(r["nfe_used"] for r in group)
        row["valid"] = sum(1 for r in group if r["words"] > 0)
        row["avg_words"] = sum(r["words"] for r in group) / n
        tokens = [r["num_tokens"] for r in group if r.get("num_tokens") is not None]
        row["avg_tokens"] = sum(tokens) / len(tokens) if tokens else None
        for tag in TAGS:
            row[f"{tag}_pct"] = 100.0 * sum(1 for r in group if tag in r["tags"]) / n
        row["prompts_cut"] = sum(1 for r in group if r.get("prompt_cut"))
        rows.append(row)
    return rows


def _ordered(rows: List[dict], run_config: dict) -> List[dict]:
    datasets_ = [d["label"] for d in run_config["datasets"]]
    methods = [m["label"] for m in run_config["methods"]]
    return sorted(rows, key=lambda r: (datasets_.index(r["dataset"]), methods.index(r["method"]), r["nfe"]))


def _sweep_keys(run_config: dict) -> List[Tuple]:
    """Every (dataset, method, NFE, index) of the run's sweep (lead methods: NFE 0)."""
    return [(d["label"], m["label"], nfe, i)
            for d in run_config["datasets"] for m in run_config["methods"]
            for nfe in ([0] if m["kind"] == "lead" else run_config["nfe"]) for i in range(d["n"])]


def _sweep_records(records: Sequence[dict], run_config: dict) -> List[dict]:
    """The records of the run's sweep (others in the file, from earlier sweeps, are left out);
    raises `ValueError` when one is missing or repeated."""
    wanted = set(_sweep_keys(run_config))
    have = Counter(_key(r) for r in records if _key(r) in wanted)
    dupes = [k for k, c in have.items() if c > 1]
    if dupes:
        raise ValueError(f"duplicate samples: {dupes[:5]}")
    missing = len(wanted) - len(have)
    if missing:
        raise ValueError(f"{missing} sample(s) of the sweep are missing (a shard unfinished?); rerun to finish them")
    return [r for r in records if _key(r) in wanted]


def cross_check_evaluate(records: Sequence[dict], references: Mapping[Tuple[str, int], str]) -> dict:
    """Score every output again with `evaluate`'s rouge, loaded from the local cache only
    (never downloaded); {"status": "agree" | "disagree" | "skipped", ...}."""
    try:
        import evaluate
        from datasets import DownloadConfig  # the class evaluate.load takes

        metric = evaluate.load("rouge", download_config=DownloadConfig(local_files_only=True))
    except Exception as err:  # noqa: BLE001 — any failure to load means: not available offline
        return {"status": "skipped", "reason": f"evaluate's rouge does not load offline: {type(err).__name__}: {err}"}
    refs = [references[(r["dataset"], r["index"])] for r in records]
    outs = [r["output"] for r in records]
    plain = metric.compute(predictions=outs, references=refs, rouge_types=["rouge1", "rouge2", "rougeL"],
                           use_aggregator=False, use_stemmer=True)
    lsum = metric.compute(predictions=["\n".join(sentences(o)) for o in outs],
                          references=["\n".join(sentences(t)) for t in refs], rouge_types=["rougeLsum"],
                          use_aggregator=False, use_stemmer=True)
    worst = 0.0
    for i, r in enumerate(records):
        empty = not r["output"].split()
        for metric_name, values in (("rouge1", plain), ("rouge2", plain), ("rougeL", plain), ("rougeLsum", lsum)):
            theirs = 0.0 if empty else 100.0 * float(values[metric_name][i])
            worst = max(worst, abs(theirs - r["scores"][metric_name]))
    return {"status": "agree" if worst <= 1e-9 else "disagree", "max_abs_diff": worst, "samples": len(records)}


def _references(run_config: dict) -> Dict[Tuple[str, int], str]:
    settings = EvalSettings(**run_config["settings"])
    return {(d.label, s.index): s.summary for d in load_datasets(settings) for s in d.samples}


TABLE_COLUMNS = [
    Column("dataset", "dataset"), Column("method", "method"),
    Column(lambda r: r["nfe"] or None, "NFE"), Column("nfe_used_mean", "NFE used", "{:g}"), Column("n", "n"),
    Column("rouge1", "R-1", "{:.2f}"), Column("rouge2", "R-2", "{:.2f}"), Column("rougeL", "R-L", "{:.2f}"),
    Column("rougeLsum", "R-Lsum", "{:.2f}"), Column("valid", "valid"), Column("avg_words", "avg words", "{:.1f}"),
] + [Column(f"{t}_pct", f"{t} %", "{:.1f}") for t in TAGS] + [Column("prompts_cut", "prompts cut")]


def render_markdown(results: dict) -> str:
    rows = results["results"]
    model = results.get("model") or {}
    lines = ["# Zero-shot summarization", "",
             f"model: {model.get('name', '–')} (revision {model.get('revision') or 'default'}, {model.get('dtype', '–')}, "
             f"{model.get('device', '–')}); seed {results['settings']['seed']}; ROUGE F1 × 100 (rouge_score, "
             "use_stemmer=True); R-Lsum on sentences split at .!? + whitespace.", "",
             "## ROUGE-1 by NFE", ""]
    datasets_ = [d["label"] for d in results["datasets"]]
    nfes = sorted({r["nfe"] for r in rows if r["nfe"]}) or [0]  # only extractive baselines: one column
    cols = [Column("method", "method")] + [
        Column(f"{d}|{n}", f"{d} NFE {n}" if n else d, "{:.2f}") for d in datasets_ for n in nfes]
    pivot: Dict[str, dict] = {}
    for r in rows:
        entry = pivot.setdefault(r["method"], {"method": r["method"]})
        for n in (nfes if r["nfe"] == 0 else [r["nfe"]]):  # an extractive baseline does not depend on NFE
            entry[f"{r['dataset']}|{n}"] = r["rouge1"]
    lines += [markdown_table(cols, pivot.values()), "## All metrics", "", markdown_table(TABLE_COLUMNS, rows)]
    check = results.get("rouge_cross_check", {})
    lines += [f"ROUGE cross-check with evaluate: {check.get('status')}"
              + (f" (max |Δ| {check['max_abs_diff']:.2e})" if "max_abs_diff" in check else
                 f" ({check.get('reason', '')})"), ""]
    return "\n".join(lines)


def write_report(out: Path, run_config: dict, records: Sequence[dict], check_evaluate: bool = True) -> dict:
    """results.json, results.md and rouge1_vs_nfe.png from a complete set of records."""
    records = _sweep_records(records, run_config)
    rows = _ordered(aggregate(records), run_config)
    results = {key: run_config[key] for key in ("protocol", "model", "settings", "datasets", "methods", "nfe",
                                                "generate_kwargs", "environment")}
    if "shards" in run_config:
        results["shards"] = run_config["shards"]
    results["results"] = rows
    if check_evaluate:
        results["rouge_cross_check"] = cross_check_evaluate(records, _references(run_config))
    else:
        results["rouge_cross_check"] = {"status": "skipped", "reason": "not asked"}
    write_json(out / "results.json", results)
    (out / "results.md").write_text(render_markdown(results), encoding="utf-8")
    panels: Dict[str, Dict[str, list]] = {d["label"]: {} for d in run_config["datasets"]}
    references: Dict[str, Dict[str, float]] = {}
    for r in rows:
        if r["nfe"] == 0:
            references.setdefault(r["dataset"], {})[r["method"]] = r["rouge1"]
        else:
            panels[r["dataset"]].setdefault(r["method"], []).append((r["nfe"], r["rouge1"]))
    plot_lines(panels, out / "rouge1_vs_nfe.png", "NFE (network evaluations)", "ROUGE-1 F1 × 100",
               title="Zero-shot summarization", references=references)
    if results["rouge_cross_check"]["status"] == "disagree":
        raise RuntimeError(f"rouge_score and evaluate's rouge disagree: {results['rouge_cross_check']}")
    return {"results": str(out / "results.json"), "table": str(out / "results.md"),
            "plot": str(out / "rouge1_vs_nfe.png")}


_VARYING = ("environment",)
# Settings shards may differ in without changing any sample (generate() rows do not depend on the batch).
_PER_SHARD_SETTINGS = ("shard_index", "device", "batch_size", "progress", "check_evaluate")


def merge(output_dir: str, check_evaluate: bool = True) -> dict:
    """Combine the shards in `output_dir` (`run.shard-I-of-N.json` + `samples.shard-I-of-N.jsonl`)
    into `run.json`, `samples.jsonl` and the reports; every shard must be complete."""
    out = Path(output_dir)
    configs = sorted(out.glob("run.shard-*-of-*.json"))
    if not configs:
        raise ValueError(f"{out}: no shard run files (run.shard-I-of-N.json)")
    parsed = {}
    for path in configs:
        match = re.fullmatch(r"run\.shard-(\d+)-of-(\d+)\.json", path.name)
        if match:
            parsed[(int(match.group(1)), int(match.group(2)))] = read_json(path)
    counts = {n for _, n in parsed}
    if len(counts) != 1:
        raise ValueError(f"{out}: shards of different splits {sorted(counts)}; keep one")
    n = counts.pop()
    missing = [i for i in range(n) if (i, n) not in parsed]
    if missing:
        raise ValueError(f"{out}: shard(s) {missing} of {n} have not run")

    def comparable(cfg):
        cfg = {k: v for k, v in cfg.items() if k not in _VARYING}
        cfg["settings"] = {k: v for k, v in cfg["settings"].items() if k not in _PER_SHARD_SETTINGS}
        if cfg.get("model"):
            cfg["model"] = {k: v for k, v in cfg["model"].items() if k != "device"}
        return cfg

    first = parsed[(0, n)]
    for i in range(1, n):
        if comparable(parsed[(i, n)]) != comparable(first):
            raise ValueError(f"{out}: shard {i} ran with other settings than shard 0")
    records = []
    for i in range(n):
        records += read_jsonl(out / f"samples.shard-{i}-of-{n}.jsonl")
    records.sort(key=lambda r: _key(r))
    merged = dict(first)
    merged["settings"] = dict(first["settings"], shard_index=None)
    merged["shards"] = [{"index": i, "environment": parsed[(i, n)]["environment"],
                         "device": (parsed[(i, n)].get("model") or {}).get("device")} for i in range(n)]
    result = write_report(out, merged, records, check_evaluate)
    with open(out / "samples.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    write_json(out / "run.json", merged)
    return {"shards": n, "samples": len(records), **result}
