"""Data pipelines for DSL training, built on `datasets`.

Two kinds of examples reach [`DSLTrainer`](./dsl_trainer.py):

* **Packed blocks** (pretraining): documents are tokenised without special tokens, each one is
  followed by EOS, the stream is concatenated and cut into pieces of `block_size - 2` tokens, and
  every row becomes `[BOS] + piece + [EOS]` — MDLM's "wrap" convention
  (`reference/mdlm_remdm.md` §3), so every row starts and ends with the BOS/EOS ids. As in MDLM,
  the remainder of each `datasets.map` batch is dropped. Rows have no padding.
* **Prompt / response pairs**: `[BOS] + prompt + response + [EOS]`, truncated to `max_length`, with
  a `prompt_mask` column (1 on BOS and prompt tokens). The trainer keeps prompt tokens clean
  (γ = γ_max) and does not score them.

`DSLDataCollator` pads to the longest row of a batch (`attention_mask` 0 on padding) and returns
`input_ids`, `attention_mask` and, when present, `prompt_mask`.

`train_bpe_tokenizer` builds a small byte-level BPE tokenizer (used by `scripts/demo.py`), and
`detokenize_wikitext` undoes WikiText's `@-@` style markers.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

TEXT_EXTENSIONS = {".txt": "text", ".tokens": "text", ".raw": "text", ".json": "json", ".jsonl": "json",
                   ".csv": "csv", ".parquet": "parquet"}

_WIKITEXT_RULES = [
    (re.compile(r" @(.)@ "), r"\1"),  # " @-@ " -> "-", " @,@ " -> ",", " @.@ " -> "."
    (re.compile(r" ([.,;:!?)\]}'])"), r"\1"),
    (re.compile(r"([(\[{]) "), r"\1"),
    (re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m)\b"), r"\1"),
    (re.compile(r"\s+\n"), "\n"),
]

logger = logging.getLogger(__name__)


def detokenize_wikitext(text: str) -> str:
    """Turn WikiText's word-level format into plain text.

    Undoes `" @-@ "`-style intra-word markers and the spaces WikiText puts before punctuation and
    around brackets (" , " → ", "). `<unk>` is kept as is. Heading lines (" = Title = ") are kept.
    """
    for pattern, replacement in _WIKITEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


def split_wikitext_articles(text: str) -> list[str]:
    """Split a WikiText file into articles at top-level headings (`" = Title = "` lines)."""
    articles, current = [], []
    for line in text.split("\n"):
        if re.fullmatch(r" ?= [^=].* = ?", line) and current:
            article = "\n".join(current).strip()
            if article:
                articles.append(article)
            current = []
        current.append(line)
    article = "\n".join(current).strip()
    if article:
        articles.append(article)
    return articles


# ----------------------------------------------------------------------------- loading raw text


def load_raw_dataset(
    source: str,
    split: str = "train",
    dataset_config_name: Optional[str] = None,
    sample_by: str = "document",
):
    """Load raw examples from a local file (text / jsonl / csv / parquet) or a Hub dataset name.

    Args:
        source: a file path (`.txt`/`.tokens`/`.raw` → the `text` builder, `.json`/`.jsonl` → `json`,
            `.csv`, `.parquet`), a directory of such files, or a Hub dataset name
            (e.g. `"Salesforce/wikitext"`).
        split: split to return (local files are all put in `"train"`).
        dataset_config_name: Hub dataset configuration (e.g. `"wikitext-103-raw-v1"`).
        sample_by: for text files, `"document"` (whole file is one example), `"paragraph"` (blank-line
            separated) or `"line"`.
    Returns:
        a `datasets.Dataset`.
    """
    import datasets

    if sample_by not in ("document", "paragraph", "line"):
        raise ValueError(f"sample_by must be 'document', 'paragraph' or 'line', got {sample_by!r}")
    if os.path.isfile(source) or os.path.isdir(source):
        files = [source]
        if os.path.isdir(source):
            files = sorted(
                os.path.join(source, f) for f in os.listdir(source)
                if os.path.splitext(f)[1] in TEXT_EXTENSIONS
            )
            if not files:
                raise ValueError(f"source directory {source!r} holds no {sorted(TEXT_EXTENSIONS)} files")
        kinds = {TEXT_EXTENSIONS.get(os.path.splitext(f)[1]) for f in files}
        if None in kinds or len(kinds) != 1:
            raise ValueError(
                f"source files must share one known extension {sorted(TEXT_EXTENSIONS)}, got {files}"
            )
        builder = kinds.pop()
        kwargs = {"sample_by": sample_by} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files={"train": files}, **kwargs)
        return ds["train"]
    return datasets.load_dataset(source, dataset_config_name, split=split)


def special_token_ids(tokenizer) -> tuple[int, int]:
    """(BOS id, EOS id) for MDLM-style wrapping; BOS falls back to EOS (GPT-2: both 50256)."""
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if eos is None or bos is None:
        raise ValueError("tokenizer must define eos_token (and optionally bos_token) for BOS/EOS wrapping")
    return bos, eos


# ----------------------------------------------------------------------------- packing


def pack_token_stream(
    documents: Iterable[Sequence[int]], block_size: int, bos_token_id: int, eos_token_id: int
) -> list[list[int]]:
    """MDLM wrapping of already tokenised documents: doc + EOS, concatenated, cut into pieces of
    `block_size - 2`, each row `[BOS] + piece + [EOS]`; the incomplete tail is dropped."""
    if block_size < 3:
        raise ValueError(f"block_size must be >= 3 (BOS + at least one token + EOS), got {block_size}")
    stream: list[int] = []
    for doc in documents:
        stream.extend(doc)
        stream.append(eos_token_id)
    piece = block_size - 2
    n_rows = len(stream) // piece
    return [[bos_token_id] + stream[i * piece:(i + 1) * piece] + [eos_token_id] for i in range(n_rows)]


def pack_dataset(
    dataset,
    tokenizer,
    block_size: int,
    text_column: str = "text",
    num_proc: Optional[int] = None,
    map_batch_size: int = 1000,
    max_blocks: Optional[int] = None,
):
    """Tokenise a text dataset and pack it into fixed-length blocks (MDLM wrapping).

    Args:
        dataset: a `datasets.Dataset` with a string column `text_column`.
        tokenizer: a fast tokenizer with an EOS token (BOS defaults to EOS).
        block_size: row length L including the BOS and EOS wrappers.
        text_column: the column holding the documents.
        num_proc: worker processes for `datasets.map`.
        map_batch_size: documents per `map` batch; each batch's incomplete last block is dropped.
        max_blocks: keep at most this many blocks (the first ones, so the order is deterministic).
    Returns:
        a `datasets.Dataset` with `input_ids` and `attention_mask` (all ones), every row of length
        `block_size`.
    """
    if text_column not in dataset.column_names:
        raise ValueError(f"text_column {text_column!r} not in dataset columns {dataset.column_names}")
    if block_size < 3:
        raise ValueError(f"block_size must be >= 3, got {block_size}")
    bos, eos = special_token_ids(tokenizer)

    def wrap(batch):
        texts = [t for t in batch[text_column] if t and not t.isspace()]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        rows = pack_token_stream(ids, block_size, bos, eos)
        return {"input_ids": rows, "attention_mask": [[1] * block_size for _ in rows]}

    packed = dataset.map(
        wrap, batched=True, batch_size=map_batch_size, remove_columns=dataset.column_names, num_proc=num_proc,
        desc=f"Packing into blocks of {block_size}",
    )
    if max_blocks is not None:
        packed = packed.select(range(min(max_blocks, len(packed))))
    return packed


def prompt_response_dataset(
    dataset,
    tokenizer,
    max_length: int,
    prompt_column: str = "prompt",
    response_column: str = "response",
    num_proc: Optional[int] = None,
):
    """Tokenise prompt / response pairs into `[BOS] + prompt + response + [EOS]` rows.

    Rows longer than `max_length` are truncated from the end of the response (the prompt is kept
    whole; a prompt that alone exceeds `max_length - 2` is cut too). `prompt_mask` is 1 on BOS and
    the prompt tokens: they stay clean during training and are not scored.

    Returns:
        a `datasets.Dataset` with `input_ids`, `attention_mask`, `prompt_mask` (variable length;
        pad with [`DSLDataCollator`]).
    """
    for column in (prompt_column, response_column):
        if column not in dataset.column_names:
            raise ValueError(f"column {column!r} not in dataset columns {dataset.column_names}")
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3, got {max_length}")
    bos, eos = special_token_ids(tokenizer)

    def encode(batch):
        prompts = tokenizer(list(batch[prompt_column]), add_special_tokens=False)["input_ids"]
        responses = tokenizer(list(batch[response_column]), add_special_tokens=False)["input_ids"]
        out = {"input_ids": [], "attention_mask": [], "prompt_mask": []}
        truncated = sum(len(p) + len(r) + 2 > max_length for p, r in zip(prompts, responses))
        if truncated:
            logger.warning("%d of %d prompt/response pairs exceed max_length=%d and were truncated",
                           truncated, len(prompts), max_length)
        for p, r in zip(prompts, responses):
            p = p[: max_length - 2]
            ids = ([bos] + p + r)[: max_length - 1] + [eos]
            n_prompt = 1 + len(p)
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["prompt_mask"].append([1] * n_prompt + [0] * (len(ids) - n_prompt))
        return out

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, num_proc=num_proc,
                       desc="Tokenising prompt/response pairs")


def split_train_eval(dataset, eval_fraction: float = 0.05, eval_rows: Optional[int] = None):
    """Deterministic split: the last rows (`eval_rows`, or `eval_fraction` of them) are held out.

    Taking the tail instead of a random subset keeps held-out text contiguous, so packed blocks
    of the same document do not leak between the two sets (beyond one boundary).
    """
    n = len(dataset)
    if eval_rows is None:
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        eval_rows = max(1, int(round(n * eval_fraction)))
    if not 0 < eval_rows < n:
        raise ValueError(f"eval_rows must be in (0, {n}), got {eval_rows}")
    return dataset.select(range(n - eval_rows)), dataset.select(range(n - eval_rows, n))


# ----------------------------------------------------------------------------- collator


@dataclass
class DSLDataCollator:
    """Pad rows to the batch's longest (optionally to a multiple) and stack them.

    Args:
        pad_token_id: id written at padded positions (never scored, never attended to).
        pad_to_multiple_of: round the padded length up to a multiple of this.
    Returns (from `__call__`): dict of LongTensors `input_ids`, `attention_mask` and, if the rows
    carry it, `prompt_mask`. Other columns are dropped.
    """

    pad_token_id: int = 0
    pad_to_multiple_of: Optional[int] = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("features must be a non-empty list of examples")
        lengths = [len(f["input_ids"]) for f in features]
        length = max(lengths)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": torch.full((len(features), length), self.pad_token_id, dtype=torch.long),
                 "attention_mask": torch.zeros((len(features), length), dtype=torch.long)}
        has_prompt = any("prompt_mask" in f for f in features)
        if has_prompt:
            batch["prompt_mask"] = torch.zeros((len(features), length), dtype=torch.long)
        for i, f in enumerate(features):
            n = lengths[i]
            batch["input_ids"][i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask = f.get("attention_mask")
            batch["attention_mask"][i, :n] = 1 if mask is None else torch.as_tensor(mask, dtype=torch.long)
            if has_prompt and "prompt_mask" in f:  # rows without one have no prompt
                batch["prompt_mask"][i, :n] = torch.as_tensor(f["prompt_mask"], dtype=torch.long)
        return batch


# ----------------------------------------------------------------------------- tokenizer


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2):
    """Train a small byte-level BPE tokenizer and wrap it as a `PreTrainedTokenizerFast`.

    The special token `<|endoftext|>` (id 0) serves as BOS, EOS and padding, as GPT-2's does.
    Byte-level BPE covers any input, so there is no unknown token.

    Args:
        texts: training texts.
        vocab_size: total vocabulary size including the 256 byte symbols and the special token.
        min_frequency: minimum pair frequency for a merge.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise ValueError(f"vocab_size must be >= 260 (256 bytes + specials), got {vocab_size}")
    special = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special, eos_token=special, pad_token=special)
