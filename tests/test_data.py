"""Data pipelines of trainers/data.py: MDLM wrapping, prompt/response rows, collator, loading."""

import json

import datasets
import pytest
import torch

from trainers.data import (
    DSLDataCollator,
    detokenize_wikitext,
    load_raw_dataset,
    pack_dataset,
    pack_token_stream,
    prompt_response_dataset,
    split_train_eval,
    split_wikitext_articles,
    train_bpe_tokenizer,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "A second document about tokenizers and diffusion models.",
    "Short one.",
    "Another paragraph with more words so that packing has something to cut into several blocks.",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def test_pack_token_stream_mdlm_wrapping():
    rows = pack_token_stream([[1, 2, 3], [4, 5], [6, 7, 8, 9]], block_size=5, bos_token_id=0, eos_token_id=99)
    # stream: 1 2 3 E 4 5 E 6 7 8 9 E (12 tokens) -> pieces of 3, the 4th piece is complete too
    assert rows == [[0, 1, 2, 3, 99], [0, 99, 4, 5, 99], [0, 99, 6, 7, 99], [0, 8, 9, 99, 99]]
    with pytest.raises(ValueError, match="block_size"):
        pack_token_stream([[1]], block_size=2, bos_token_id=0, eos_token_id=1)


def test_pack_dataset_rows_start_with_bos_end_with_eos(tokenizer):
    ds = datasets.Dataset.from_dict({"text": TEXTS + ["", "   "]})
    packed = pack_dataset(ds, tokenizer, block_size=16)
    assert len(packed) > 3
    eos = tokenizer.eos_token_id
    stream = []
    for row in packed:
        assert len(row["input_ids"]) == 16 and row["attention_mask"] == [1] * 16
        assert row["input_ids"][0] == eos and row["input_ids"][-1] == eos  # BOS = EOS for this tokenizer
        stream.extend(row["input_ids"][1:-1])
    # the concatenated pieces are the documents, each followed by EOS, in order (tail dropped)
    expected = []
    for text in TEXTS:
        expected.extend(tokenizer(text, add_special_tokens=False)["input_ids"] + [eos])
    assert stream == expected[: len(stream)] and len(expected) - len(stream) < 14
    with pytest.raises(ValueError, match="text_column"):
        pack_dataset(ds, tokenizer, block_size=16, text_column="body")


def test_prompt_response_rows_and_collator(tokenizer):
    ds = datasets.Dataset.from_dict({"prompt": ["Question: what?", "Q"], "response": [" An answer.", " A" * 40]})
    rows = prompt_response_dataset(ds, tokenizer, max_length=20)
    first = rows[0]
    n_prompt = 1 + len(tokenizer("Question: what?", add_special_tokens=False)["input_ids"])
    assert first["prompt_mask"] == [1] * n_prompt + [0] * (len(first["input_ids"]) - n_prompt)
    assert first["input_ids"][0] == tokenizer.bos_token_id and first["input_ids"][-1] == tokenizer.eos_token_id
    assert len(rows[1]["input_ids"]) == 20 and rows[1]["input_ids"][-1] == tokenizer.eos_token_id  # truncated

    batch = DSLDataCollator(pad_token_id=7, pad_to_multiple_of=8)([rows[0], rows[1], {"input_ids": [1, 2]}])
    assert batch["input_ids"].shape == (3, 24)
    n0 = len(first["input_ids"])
    assert batch["attention_mask"][0].tolist() == [1] * n0 + [0] * (24 - n0)
    assert (batch["input_ids"][0, n0:] == 7).all()
    assert batch["prompt_mask"][0, :n_prompt].all() and not batch["prompt_mask"][0, n_prompt:].any()
    assert set(batch) == {"input_ids", "attention_mask", "prompt_mask"}
    with pytest.raises(ValueError, match="features"):
        DSLDataCollator()([])


def test_load_raw_dataset_text_and_jsonl(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("line one\nline two\n\nline three\n")
    assert load_raw_dataset(str(txt), sample_by="line")["text"][:2] == ["line one", "line two"]
    assert len(load_raw_dataset(str(txt), sample_by="document")) == 1
    jl = tmp_path / "b.jsonl"
    jl.write_text("\n".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) for i in range(3)))
    ds = load_raw_dataset(str(jl))
    assert ds.column_names == ["prompt", "response"] and ds["response"] == ["r0", "r1", "r2"]
    with pytest.raises(ValueError, match="sample_by"):
        load_raw_dataset(str(txt), sample_by="word")


def test_split_and_wikitext_helpers():
    ds = datasets.Dataset.from_dict({"x": list(range(20))})
    train, held = split_train_eval(ds, eval_fraction=0.1)
    assert train["x"] == list(range(18)) and held["x"] == [18, 19]
    with pytest.raises(ValueError, match="eval_rows"):
        split_train_eval(ds, eval_rows=20)
    assert detokenize_wikitext("a state @-@ of @-@ the @-@ art model , it 's 1 @,@ 000 ( big ) .") == (
        "a state-of-the-art model, it's 1,000 (big)."
    )
    text = " = A = \n body a \n = = Sub = = \n more \n = B = \n body b \n"
    arts = split_wikitext_articles(text)
    assert len(arts) == 2 and arts[0].startswith("= A =") and "Sub" in arts[0] and arts[1].startswith("= B =")


def test_bpe_tokenizer_roundtrip(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    assert len(tokenizer) <= 300 and tokenizer.eos_token_id == tokenizer.pad_token_id == 0
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    ids = again("héllo wörld, unseen text ✓", add_special_tokens=False)["input_ids"]
    assert again.decode(ids) == "héllo wörld, unseen text ✓"  # byte-level: no unknown tokens
    assert torch.tensor(ids).max() < len(tokenizer)
