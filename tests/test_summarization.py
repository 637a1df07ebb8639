"""Zero-shot summarization evaluation (`evaluation.summarization`, `scripts/eval_summarization.py`).

Two kinds of fixtures:
- the shared sets and the GPT-2 tokenizer from `../shared` (skipped without it): lead-k against
  the data README, and the sweep on a tiny MDLM-scale model (V = 50257) with the GPT-2 tokenizer;
- a self-contained substitute built here (a word-level tokenizer and small synthetic
  "cnn_dailymail" / "xsum" files), for kill / resume, shards, chat templates, tags and bad inputs,
  so those run on any checkout.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_model

from evaluation import reporting
from evaluation.summarization import (
    PRESETS,
    EvalSettings,
    ModelFacts,
    PromptEncoder,
    failure_tags,
    generate_kwargs,
    generation_strategies,
    merge,
    parse_method,
    rouge,
    run,
    snap_block,
)

SCRIPT = REPO / "scripts" / "eval_summarization.py"
SHARED = REPO.parent / "shared"  # `../shared` beside the checkout: the summarization sets and the GPT-2 tokenizer
SETS = ("cnn_dailymail", "xsum", "aeslc", "billsum", "pubmed", "arxiv")


def settings(out, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("check_evaluate", False)
    return EvalSettings(output_dir=str(out), **kw)


def results_rows(out):
    return json.loads((Path(out) / "results.json").read_text())["results"]


def sorted_records(path):
    return sorted(reporting.read_jsonl(path), key=lambda r: (r["dataset"], r["method"], r["nfe"], r["index"]))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def summarization_dir():
    path = SHARED / "data" / "summarization"
    if not path.is_dir():
        pytest.skip(f"shared summarization sets not found at {path}")
    return path


@pytest.fixture(scope="module")
def gpt2_model_dir(tmp_path_factory):
    """A tiny MDLM-scale DSL model (V = 50257 + mask, context 1024) saved with the GPT-2 tokenizer."""
    from transformers import AutoTokenizer

    tokenizer_dir = SHARED / "tokenizers" / "gpt2"
    if not tokenizer_dir.is_dir():
        pytest.skip(f"GPT-2 tokenizer not found at {tokenizer_dir}")
    out = tmp_path_factory.mktemp("gpt2_tiny")
    tiny_model(seed=0, weight_std=0.1, vocab_size=50257, max_position_embeddings=1024).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


WORDS = ("the a council said on monday that its new plan would cut costs for local schools and homes while "
         "critics warned it could delay road repairs across the city police found man woman team club won match "
         "after late goal fans cheered minister report shows prices rose again this year").split()


def word_tokenizer(chat_template=None):
    """A word-level fast tokenizer over `WORDS`, the instructions and punctuation; it adds [BOS]
    in front of every encoded text unless add_special_tokens=False."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from evaluation.summarization import PROTOCOLS

    words = set(WORDS) | {".", ",", ":", "-", "!", "?", "[", "]", "USER", "ASSISTANT", "END"}
    for p in PROTOCOLS.values():
        words |= set(re.findall(r"\w+|[^\w\s]", p.instruction))
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[BOS]", "[EOS]"] + sorted(words))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                        bos_token="[BOS]", eos_token="[EOS]")
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def synthetic_sets(folder, n=6, words=40, seed=0):
    """cnn_dailymail.jsonl and xsum.jsonl of `n` documents of about `words` words from `WORDS`."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("cnn_dailymail", "xsum"):
        with open(folder / f"{name}.jsonl", "w") as handle:
            for i in range(n):
                sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))).capitalize() + "."
                             for _ in range(max(2, words // 9))]
                record = {"id": f"{name}-{i}", "document": " ".join(sentences), "summary": sentences[0]}
                handle.write(json.dumps(record) + "\n")
        paths.append(folder / f"{name}.jsonl")
    return paths


@pytest.fixture(scope="module")
def word_model_dir(tmp_path_factory):
    """The substitute: a tiny DSL model over the word tokenizer (context 128) and synthetic sets."""
    out = tmp_path_factory.mktemp("word_tiny")
    tokenizer = word_tokenizer()
    tiny_model(seed=0, weight_std=0.3, vocab_size=len(tokenizer), max_position_embeddings=128).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def word_sets(tmp_path_factory):
    return synthetic_sets(tmp_path_factory.mktemp("word_sets"))


# ----------------------------------------------------------------------------- lead-k and ROUGE


def readme_figures(summarization_dir):
    """The lead-k table of the data README: {file: (baseline, {metric: value})}."""
    figures = {}
    for line in (summarization_dir / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and cells[0] in SETS and cells[1].startswith("lead-"):
            figures[cells[0]] = (cells[1], dict(zip(("rouge1", "rouge2", "rougeL", "rougeLsum"), map(float, cells[2:6]))))
    return figures


@pytest.fixture(scope="module")
def lead_run(summarization_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lead")
    run(settings(out, data=[str(summarization_dir / f"{s}.jsonl") for s in SETS], methods=["lead-k"]))
    return out


def test_lead_k_reproduces_the_data_readme_on_every_set(lead_run, summarization_dir):
    figures = readme_figures(summarization_dir)
    assert set(figures) == set(SETS)
    rows = {r["dataset"]: r for r in results_rows(lead_run)}
    records = reporting.read_jsonl(lead_run / "samples.jsonl")
    for name, (baseline, expected) in figures.items():
        assert rows[name]["n"] == 100
        k = {r["generate"]["lead_k"] for r in records if r["dataset"] == name}
        assert k == {int(baseline.split("-")[1])}, name
        for metric, value in expected.items():
            assert round(rows[name][metric], 2) == pytest.approx(value, abs=1e-9), (name, metric)


def test_cnn_lead3_computed_independently(lead_run, summarization_dir):
    """CNN/DM lead-3 straight from rouge_score, with this test's own sentence split."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)

    def split(text):  # '.', '!' or '?' then whitespace (data README)
        out, start = [], 0
        for match in re.finditer(r"[.!?]\s+", text):
            out.append(text[start : match.start() + 1].strip())
            start = match.end()
        out.append(text[start:].strip())
        return [s for s in out if s]

    totals = dict.fromkeys(("rouge1", "rouge2", "rougeL", "rougeLsum"), 0.0)
    records = [json.loads(line) for line in open(summarization_dir / "cnn_dailymail.jsonl")]
    for rec in records:
        lead3 = split(rec["document"])[:3]
        plain = scorer.score(rec["summary"], " ".join(lead3))
        lsum = scorer.score("\n".join(split(rec["summary"])), "\n".join(lead3))
        for m in ("rouge1", "rouge2", "rougeL"):
            totals[m] += 100 * plain[m].fmeasure / len(records)
        totals["rougeLsum"] += 100 * lsum["rougeLsum"].fmeasure / len(records)
    row = next(r for r in results_rows(lead_run) if r["dataset"] == "cnn_dailymail")
    for metric, value in totals.items():
        assert row[metric] == pytest.approx(value, abs=1e-9), metric
    assert [round(totals[m], 2) for m in totals] == [40.30, 17.80, 26.01, 36.65]


def test_protocol_table_follows_the_reference_and_the_data_readme(summarization_dir):
    from evaluation.summarization import PROTOCOLS, cap_words, protocol_for

    # instructions: the data README's "instruction used by DSL-LLaDA" column
    seen = set()
    for line in (summarization_dir / "README.md").read_text().splitlines():
        match = re.match(r"\| `(\w+)\.jsonl` .*\| `(.+)\\n\\n\{document\}` \|$", line)
        if match:
            assert PROTOCOLS[match.group(1)].instruction == match.group(2)
            seen.add(match.group(1))
    assert seen == set(SETS)
    # ref §6: gen lengths, word caps
    assert {n: p.gen_length for n, p in PROTOCOLS.items()} == {
        "xsum": 128, "cnn_dailymail": 256, "pubmed": 256, "arxiv": 256, "billsum": 256, "aeslc": 64}
    assert {n: p.max_words for n, p in PROTOCOLS.items()} == {
        "xsum": 1500, "cnn_dailymail": 400, "pubmed": 1500, "arxiv": 1500, "billsum": 400, "aeslc": 300}
    cnn = PROTOCOLS["cnn_dailymail"]
    assert cap_words("a  b\nc", cnn.max_words, cnn.rejoin_short) == "a b c"  # first 400 words, single spaces
    long = " ".join(str(i) for i in range(450))
    assert cap_words(long, cnn.max_words, cnn.rejoin_short).split() == long.split()[:400]
    xsum = PROTOCOLS["xsum"]
    assert cap_words("line one.\n\nline two.", xsum.max_words, xsum.rejoin_short) == "line one.\n\nline two."
    assert protocol_for("cnn_dailymail_100") is cnn and protocol_for("EdinburghNLP/xsum") is xsum
    assert protocol_for("cnn_dm") is cnn and protocol_for("reddit") is None
    # a new cap (the 1000-sample build's 1500 words): documents within it stay unchanged
    from evaluation.summarization import _resolve_protocol

    capped = _resolve_protocol("cnn_dailymail", EvalSettings(output_dir="unused", methods=["lead-k"], max_words=1500))
    assert (capped.max_words, capped.rejoin_short) == (1500, False)
    assert cap_words("a  b\nc", capped.max_words, capped.rejoin_short) == "a  b\nc"


def test_rouge_protocol_details():
    assert rouge("a cat sat on the mat.", "") == dict.fromkeys(("rouge1", "rouge2", "rougeL", "rougeLsum"), 0.0)
    assert rouge("a cat sat on the mat.", "   \n ")["rouge1"] == 0.0
    s = rouge("The cats sat. A dog ran!", "The cat sat. A dog ran!")
    assert s["rouge1"] == pytest.approx(100.0)  # use_stemmer: cats -> cat
    # Lsum on sentence-split texts differs from L on the plain texts when the order of sentences differs
    s = rouge("A dog ran. The cat sat.", "The cat sat. A dog ran.")
    assert s["rougeLsum"] == pytest.approx(100.0) and s["rougeL"] < 100.0


def test_cross_check_with_evaluate_when_it_loads_offline(lead_run):
    from evaluation.summarization import _references, cross_check_evaluate

    config = json.loads((lead_run / "run.json").read_text())
    records = [r for r in reporting.read_jsonl(lead_run / "samples.jsonl") if r["dataset"] in ("xsum", "aeslc")]
    records.append(dict(records[0], output="", scores=dict.fromkeys(records[0]["scores"], 0.0)))
    check = cross_check_evaluate(records, _references(config))
    if check["status"] == "skipped":
        assert "does not load offline" in check["reason"]
        pytest.skip(check["reason"])
    assert check["status"] == "agree" and check["max_abs_diff"] <= 1e-9


class FakeEvaluateRouge:
    """Stands in for `evaluate.load("rouge")` where it cannot load offline: the keyword API of its
    `compute` (predictions, references, rouge_types, use_aggregator, use_stemmer, tokenizer; with
    use_aggregator=False a list of per-sample F1 per type, as evaluate's metrics/rouge/rouge.py),
    scored here with rouge_score; `stemmer` False ignores use_stemmer (a broken call)."""

    def __init__(self, stemmer=True):
        self.stemmer, self.calls = stemmer, []

    def compute(self, *, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False,
                tokenizer=None):
        from rouge_score import rouge_scorer

        self.calls.append(dict(rouge_types=rouge_types, use_aggregator=use_aggregator, use_stemmer=use_stemmer))
        assert not use_aggregator and tokenizer is None and len(predictions) == len(references)
        scorer = rouge_scorer.RougeScorer(rouge_types, use_stemmer=use_stemmer and self.stemmer)
        scores = [scorer.score(ref, pred) for ref, pred in zip(references, predictions)]
        return {t: [s[t].fmeasure for s in scores] for t in rouge_types}


def test_cross_check_calls_evaluate_as_its_api_takes(lead_run, monkeypatch):
    """The path used when evaluate's rouge loads offline: loaded from the local cache only
    (DownloadConfig(local_files_only=True)), per-sample F1 (use_aggregator=False) with the stemmer,
    R-Lsum on newline-joined sentences; it agrees with rouge_score and catches a disagreement."""
    import evaluate

    from evaluation.summarization import _references, cross_check_evaluate

    config = json.loads((lead_run / "run.json").read_text())
    records = [r for r in reporting.read_jsonl(lead_run / "samples.jsonl") if r["dataset"] in ("xsum", "cnn_dailymail")]
    records.append(dict(records[0], output="", scores=dict.fromkeys(records[0]["scores"], 0.0)))
    loads = []

    def fake_load(path, *args, **kwargs):
        loads.append((path, kwargs))
        return metric

    monkeypatch.setattr(evaluate, "load", fake_load)
    metric = FakeEvaluateRouge()
    check = cross_check_evaluate(records, _references(config))
    assert check == {"status": "agree", "max_abs_diff": check["max_abs_diff"], "samples": len(records)}
    assert check["max_abs_diff"] <= 1e-9
    (path, kwargs), = loads
    assert path == "rouge" and kwargs["download_config"].local_files_only is True
    assert metric.calls == [dict(rouge_types=["rouge1", "rouge2", "rougeL"], use_aggregator=False, use_stemmer=True),
                            dict(rouge_types=["rougeLsum"], use_aggregator=False, use_stemmer=True)]
    metric = FakeEvaluateRouge(stemmer=False)
    assert cross_check_evaluate(records, _references(config))["status"] == "disagree"


# ----------------------------------------------------------------------------- failure tags

REFERENCE = "The council approved the new budget on Monday after a long debate about school funding."
CLEAN = ("The council approved a new budget on Monday, ending a long debate over how much money local schools "
         "should receive next year")
TAGGED = {
    "empty": "",
    "premature_eos": "The council approved the budget.",
    "repetition": "the council met again " * 6,
    "degen_ending": CLEAN + " and then.,.,.,.,.",
    "degenerate": CLEAN + " quests request conquest questions",
}


def test_failure_tags_hand_made_outputs_hit_each_tag_and_no_other():
    assert failure_tags(CLEAN, REFERENCE) == []
    for tag, output in TAGGED.items():
        assert failure_tags(output, REFERENCE) == [tag], tag
    # thresholds: 15 words, 0.4 × reference words, 8+ words for repetition, > 3 markers, > 8 of '.,'
    long_reference = " ".join(["word"] * 100)
    assert failure_tags(CLEAN, long_reference) == ["premature_eos"]  # 19 words < 40
    assert "degenerate" not in failure_tags(CLEAN + " quest quest quest", REFERENCE)
    assert failure_tags(CLEAN + " .......", REFERENCE) == ["degen_ending"]
    assert failure_tags("x y z x y z x", REFERENCE) == ["premature_eos"]  # under 8 words: no repetition tag


# ----------------------------------------------------------------------------- methods


def test_methods_table_and_nfe_rules(word_model_dir):
    from modeling_dsl import DSLForDiffusionLM
    from modeling_dsl.generation_dsl import STRATEGIES

    config = DSLForDiffusionLM.from_pretrained(word_model_dir).generation_config
    strategies = list(STRATEGIES)
    assert snap_block(256, 128) == 128 and snap_block(256, 512) == 256 and snap_block(32, 100) == 25
    kw = generate_kwargs(parse_method("original_remask", strategies), 8, 256, config)
    assert {k: kw[k] for k in ("strategy", "steps", "block_length", "temperature", "cfg_scale", "remasking")} == {
        "strategy": "low_confidence", "steps": 8, "block_length": 256, "temperature": 0.0, "cfg_scale": 0.0,
        "remasking": "low_confidence"}
    assert kw["truncate_at_eos"] is False and "eos_token_id" not in kw  # every generated id, ref §6
    assert generate_kwargs(parse_method("sde", strategies), 8, 64, config)["steps"] == 7
    heun = parse_method("heun=sde:integrator=heun,snr_schedule=sensitive", strategies)
    assert heun.label == "heun" and heun.settings == {"integrator": "heun", "snr_schedule": "sensitive"}
    assert generate_kwargs(heun, 9, 64, config)["steps"] == 4
    assert parse_method("lead-3", strategies).lead_k == 3 and parse_method("lead-k", strategies).lead_k is None
    # a method's own settings beat the preset's derived ones
    assert generate_kwargs(parse_method("original_remask:block_length=64", strategies), 8, 256, config)[
        "block_length"] == 64
    with pytest.raises(ValueError, match="original_remask:block_length=64' at NFE 6, gen_length 256: steps"):
        generate_kwargs(parse_method("original_remask:block_length=64", strategies), 6, 256, config)
    # eosInf_b32 (ref §6): block 32 snapped to a divisor of G, the model's EOS id suppressed
    eos_inf = parse_method("original_remask_eosInf_b32", strategies)
    facts = ModelFacts(eos_token_id=7, token_embedding=True)
    kw = generate_kwargs(eos_inf, 8, 128, config, facts)
    assert {k: kw[k] for k in ("strategy", "steps", "block_length", "suppress_token_ids", "token_inputs")} == {
        "strategy": "low_confidence", "steps": 8, "block_length": 32, "suppress_token_ids": [7],
        "token_inputs": "backbone"}
    assert generate_kwargs(eos_inf, 20, 100, config, facts)["block_length"] == 25
    assert generate_kwargs(eos_inf, 8, 128, config, ModelFacts(eos_token_id=3))["token_inputs"] == "converter"
    with pytest.raises(ValueError, match="has no EOS id to suppress"):
        generate_kwargs(eos_inf, 8, 128, config)
    with pytest.raises(ValueError, match="steps = 6 must be a multiple of the number of blocks"):
        generate_kwargs(eos_inf, 6, 128, config, facts)
    # the DSL-LLaDA SDE (ref §5.5): S = NFE // 2 Heun steps; its budget leaves out the final decode
    sde_llada = parse_method("dsl_llada_sde", strategies)
    assert [generate_kwargs(sde_llada, n, 128, config)["steps"] for n in (4, 8, 9, 16)] == [2, 4, 4, 8]
    assert generate_kwargs(sde_llada, 8, 128, config)["strategy"] == "dsl_llada_sde"
    assert not sde_llada.spec.final_decode_counted and PRESETS["original_remask"].final_decode_counted
    with pytest.raises(ValueError, match="steps must be >= 2"):
        generate_kwargs(sde_llada, 3, 128, config)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        parse_method("nope", strategies)
    with pytest.raises(ValueError, match="'steps' cannot be a method setting"):
        parse_method("sde:steps=3", strategies)
    with pytest.raises(ValueError, match="unknown generate\\(\\) settings \\['bogus'\\]"):
        generate_kwargs(parse_method("sde:bogus=1", strategies), 8, 64, config)
    with pytest.raises(ValueError, match="NFE budget of 1 leaves no step"):
        generate_kwargs(parse_method("sde", strategies), 1, 64, config)


def test_a_preset_is_one_table_entry(word_model_dir, monkeypatch):
    """E.g. an SDE preset with Heun steps S = NFE // 2 and a noise level chosen by NFE."""
    from modeling_dsl import DSLForDiffusionLM
    from modeling_dsl.generation_dsl import STRATEGIES

    from evaluation.summarization import MethodSpec

    monkeypatch.setitem(PRESETS, "toy_sde", MethodSpec(
        "sde", {"integrator": "heun", "snr_schedule": "sensitive"},
        derived=lambda nfe, g, facts: {"noise_scale": 0.1 if nfe <= 8 else 0.05}, steps=lambda nfe, config: nfe // 2))
    config = DSLForDiffusionLM.from_pretrained(word_model_dir).generation_config
    method = parse_method("toy_sde", list(STRATEGIES))
    kw8, kw16 = (generate_kwargs(method, n, 64, config) for n in (8, 16))
    assert (kw8["steps"], kw8["noise_scale"], kw16["steps"], kw16["noise_scale"]) == (4, 0.1, 8, 0.05)
    assert kw8["integrator"] == "heun" and kw8["strategy"] == "sde"


# ----------------------------------------------------------------------------- prompts and chat templates

CHAT = ("{% for m in messages %}[BOS] [ USER ] {{ m['content'] }} [ END ]{% endfor %}"
        "{% if add_generation_prompt %} [ ASSISTANT ]{% endif %}")


def test_prompt_encoding_chat_template_and_cut():
    instruction, document = "Summarize the following text in one sentence:", "the council said on monday ."
    raw = PromptEncoder(word_tokenizer(), use_chat=False, budget=100)
    ids, cut = raw.encode(instruction, document)
    tok = word_tokenizer()
    assert not cut and ids == tok(f"{instruction}\n\n{document}")["input_ids"] and ids[0] == tok.bos_token_id
    chat_tok = word_tokenizer(CHAT)
    chat = PromptEncoder(chat_tok, use_chat=True, budget=100)
    ids, cut = chat.encode(instruction, document)
    rendered = chat_tok.apply_chat_template([{"role": "user", "content": f"{instruction}\n\n{document}"}],
                                            tokenize=False, add_generation_prompt=True)
    assert ids == chat_tok(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(chat_tok.bos_token_id) == 1  # the template's own BOS, no second one
    # over budget: the document's end goes, the instruction and the template's closing tokens stay
    short = PromptEncoder(chat_tok, use_chat=True, budget=len(ids) - 3)
    cut_ids, cut = short.encode(instruction, document)
    assert cut and len(cut_ids) == len(ids) - 3
    closing = len(chat_tok(" [ END ] [ ASSISTANT ]", add_special_tokens=False)["input_ids"])  # 6 tokens
    assert cut_ids[-closing:] == ids[-closing:] and cut_ids[:-closing] == ids[: len(ids) - closing - 3]


@pytest.mark.slow
def test_chat_template_end_to_end(summarization_dir, gpt2_model_dir, tmp_path):
    """The Instruct path (ref §6) on a tiny MDLM-scale model whose GPT-2 tokenizer gets a
    LLaDA-style chat template (the tiny LLaDA-format model: test_sweep_two_methods_two_nfe_tiny_llada)."""
    from transformers import AutoTokenizer

    from evaluation.summarization import prompt_hash

    model_dir = tmp_path / "chat_model"
    model_dir.mkdir()
    for f in gpt2_model_dir.iterdir():
        (model_dir / f.name).symlink_to(f)
    tokenizer = AutoTokenizer.from_pretrained(gpt2_model_dir)
    tokenizer.chat_template = ("<|endoftext|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
                               "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
                               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
                               "{% endif %}")
    (model_dir / "tokenizer_config.json").unlink()
    (model_dir / "tokenizer.json").unlink()
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "out"
    run(settings(out, data=[str(summarization_dir / "xsum.jsonl"), str(summarization_dir / "cnn_dailymail.jsonl")],
                 methods=["original_remask"], nfe=[2], num_samples=2, model=str(model_dir), batch_size=2))
    config = json.loads((out / "run.json").read_text())
    assert config["model"]["chat_template_used"] is True
    record = next(r for r in reporting.read_jsonl(out / "samples.jsonl") if r["dataset"] == "xsum"
                  and not r["prompt_cut"])
    with open(summarization_dir / "xsum.jsonl") as handle:
        document = [json.loads(line) for line in handle][record["index"]]["document"]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Summarize the following text in one sentence:\n\n" + document}],
        tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.eos_token_id and record["prompt_sha256"] == prompt_hash(ids)
    assert len(results_rows(out)) == 2


# ----------------------------------------------------------------------------- the sweep


@pytest.mark.slow
def test_sweep_two_methods_two_nfe_gpt2(summarization_dir, gpt2_model_dir, tmp_path):
    """CNN/DM and XSum, protocol gen lengths (256, 128), 2 methods × 2 NFE + lead-k."""
    out = tmp_path / "sweep"
    data = [str(summarization_dir / "cnn_dailymail.jsonl"), str(summarization_dir / "xsum.jsonl")]
    result = run(settings(out, data=data, methods=["original_remask", "sde", "lead-k"], nfe=[2, 4], num_samples=2,
                          model=str(gpt2_model_dir), batch_size=2))
    assert result["generated"] == 2 * (2 * 2 + 1) * 2 and result["generate_calls"] == 2 * 2 * 2
    for name in ("samples.jsonl", "run.json", "results.json", "results.md", "rouge1_vs_nfe.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "rouge1_vs_nfe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = reporting.read_jsonl(out / "samples.jsonl")
    for r in records:
        assert r["nfe_used"] == r["nfe"], r  # low_confidence: T = NFE; sde Euler: T + 1 = NFE
        assert r["seed"] == (None if r["method"] == "lead-k" else 42 + r["index"])
        if r["method"] != "lead-k":
            assert r["generate"]["gen_length"] == {"cnn_dailymail": 256, "xsum": 128}[r["dataset"]]
            assert 0 <= r["num_tokens"] <= r["generate"]["gen_length"]
            assert set(r["scores"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"} and isinstance(r["tags"], list)
    results = json.loads((out / "results.json").read_text())
    assert len(results["results"]) == 2 * (2 * 2 + 1)
    assert {(r["method"], r["nfe"]) for r in results["results"]} == {
        ("original_remask", 2), ("original_remask", 4), ("sde", 2), ("sde", 4), ("lead-k", 0)}
    assert all(r["nfe_used_mean"] == r["nfe"] for r in results["results"])
    model = results["model"]
    assert model["dtype"] == "float32" and model["device"] == "cpu" and model["revision"] is None
    assert results["environment"]["packages"]["torch"] and results["environment"]["packages"]["transformers"]
    assert results["settings"]["seed"] == 42 and results["settings"]["nfe"] == [2, 4]
    assert results["generate_kwargs"]["xsum|sde|4"]["steps"] == 3
    table = (out / "results.md").read_text()
    assert "| method | cnn_dailymail NFE 2 | cnn_dailymail NFE 4 | xsum NFE 2 | xsum NFE 4 |" in table


# ----------------------------------------------------------------------------- the tiny LLaDA-format model


@pytest.fixture(scope="module")
def llada_dir(tok_dir, tmp_path_factory):
    """A tiny checkpoint in the published LLaDA format (tests/llada_checkpoint.py) with LLaDA's
    special tokens and the Instruct chat template; context 512, so that CNN/DM's G = 256 fits."""
    from llada_checkpoint import llada_tokenizer, write_llada_checkpoint

    out = tmp_path_factory.mktemp("llada_tiny")
    write_llada_checkpoint(out, llada_tokenizer(tok_dir), max_sequence_length=512, head_std=1.0)
    return out


@pytest.mark.slow
def test_sweep_two_methods_two_nfe_tiny_llada(llada_dir, word_sets, tmp_path):
    """DSL-LLaDA SDE vs LLaDA's low-confidence remasking at NFE 4 and 8 on CNN/DM and XSum (the
    substitute sets) with the protocol gen lengths and chat-templated prompts, on a LLaDA-format
    folder loaded by from_llada."""
    import torch
    from transformers import AutoTokenizer

    from modeling_dsl.generation_dsl import encode_prompt

    from evaluation.summarization import PROTOCOLS, cap_words, decode_output, prompt_hash

    out = tmp_path / "sweep"
    result = run(settings(out, data=[str(p) for p in word_sets], methods=["dsl_llada_sde", "original_remask", "lead-k"],
                          nfe=[4, 8], num_samples=2, model=str(llada_dir), batch_size=2))
    assert result["generated"] == 2 * (2 * 2 + 1) * 2 and result["generate_calls"] == 2 * 2 * 2
    for name in ("samples.jsonl", "run.json", "results.json", "results.md", "rouge1_vs_nfe.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "rouge1_vs_nfe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    model = results["model"]
    assert (model["loader"], model["backbone_type"], model["chat_template_used"]) == ("from_llada", "llada", True)
    assert len(results["results"]) == 2 * (2 * 2 + 1)
    records = [r for r in reporting.read_jsonl(out / "samples.jsonl") if r["method"] != "lead-k"]
    assert len(records) == 2 * 2 * 2 * 2 and not any(r["prompt_cut"] for r in records)
    for r in records:
        gen_length = {"cnn_dailymail": 256, "xsum": 128}[r["dataset"]]
        kw = r["generate"]
        assert kw["gen_length"] == gen_length and r["seed"] == 42 + r["index"]
        if r["method"] == "dsl_llada_sde":  # S = NFE // 2 Heun steps: 2S evaluations + the final decode
            assert (kw["strategy"], kw["steps"]) == ("dsl_llada_sde", r["nfe"] // 2)
            assert r["nfe_used"] == 2 * (r["nfe"] // 2) + 1
        else:  # LLaDA's sampler on the published model's own inputs, one block (256 snapped to G)
            assert (kw["strategy"], kw["steps"], kw["block_length"], kw["token_inputs"]) == (
                "low_confidence", r["nfe"], gen_length, "backbone")
            assert r["nfe_used"] == r["nfe"]
    rows = {(r["dataset"], r["method"], r["nfe"]): r for r in results["results"]}
    assert rows[("xsum", "dsl_llada_sde", 8)]["nfe_used_mean"] == 9
    assert rows[("cnn_dailymail", "original_remask", 4)]["nfe_used_mean"] == 4
    table = (out / "results.md").read_text()
    assert "| method | cnn_dailymail NFE 4 | cnn_dailymail NFE 8 | xsum NFE 4 | xsum NFE 8 |" in table
    assert "| dsl_llada_sde |" in table and "| original_remask |" in table

    # Each record's prompt is generation_dsl.encode_prompt of the protocol text, and its output is
    # what generate() gives with the recorded arguments and seeds for the batch the run made (both
    # prompts in one call, by length, right-padded).
    from evaluation.summarization import load_model

    tokenizer = AutoTokenizer.from_pretrained(llada_dir, trust_remote_code=False)
    assert model["eos_ids_for_truncation"] == sorted([tokenizer.eos_token_id,
                                                      tokenizer.convert_tokens_to_ids("<|eot_id|>")])
    llada, _ = load_model(str(llada_dir), None, "float32", "cpu", seed=42)  # the converter drawn as the run did
    documents = {p.stem: [json.loads(line)["document"] for line in open(p)] for p in word_sets}
    prompts = {}
    for r in records:
        protocol = PROTOCOLS[r["dataset"]]
        text = f"{protocol.instruction}\n\n" + cap_words(documents[r["dataset"]][r["index"]], protocol.max_words,
                                                           protocol.rejoin_short)
        prompts[r["dataset"], r["index"]] = ids = encode_prompt(tokenizer, text)
        assert r["prompt_sha256"] == prompt_hash(ids) and ids[0] == tokenizer.bos_token_id
    for dataset in ("cnn_dailymail", "xsum"):
        for method in ("dsl_llada_sde", "original_remask"):
            batch = sorted((r for r in records if (r["dataset"], r["method"], r["nfe"]) == (dataset, method, 4)),
                           key=lambda r: (r["prompt_tokens"], r["index"]))
            prompt_rows = [prompts[dataset, r["index"]] for r in batch]
            longest = max(map(len, prompt_rows))
            ids = torch.tensor([row + [0] * (longest - len(row)) for row in prompt_rows])
            mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in prompt_rows])
            output = llada.generate(ids, attention_mask=mask, seed=[r["seed"] for r in batch], **batch[0]["generate"])
            for i, r in enumerate(batch):
                decoded, _ = decode_output(tokenizer, output[i, longest:].tolist(), True, [], False)
                assert decoded == r["output"], (dataset, method, r["index"])


def test_eos_inf_b32_suppresses_eos_and_keeps_eot(llada_dir):
    """original_remask_eosInf_b32 (ref §6): with a head that prefers EOS, then EoT, LLaDA's
    baseline writes EOS; the eosInf variant never does and writes EoT instead (EoT stays allowed)."""
    import torch
    from transformers import AutoTokenizer

    from modeling_dsl import DSLForDiffusionLM

    tokenizer = AutoTokenizer.from_pretrained(llada_dir, trust_remote_code=False)
    model = DSLForDiffusionLM.from_llada(str(llada_dir)).eval()
    eos, eot = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert model.config.eos_token_id == [eos, eot]
    facts = ModelFacts(eos_token_id=eos, token_embedding=True)
    strategies = generation_strategies()
    kw_plain = generate_kwargs(parse_method("original_remask", strategies), 8, 64, model.generation_config, facts)
    kw_inf = generate_kwargs(parse_method("original_remask_eosInf_b32", strategies), 8, 64, model.generation_config,
                             facts)
    assert (kw_plain["block_length"], kw_inf["block_length"], kw_inf["suppress_token_ids"]) == (64, 32, [eos])
    logits = torch.randn(len(tokenizer), generator=torch.Generator().manual_seed(0))
    logits[eos], logits[eot] = 20.0, 15.0
    model.backbone.logits = lambda hidden: logits.expand(*hidden.shape[:-1], -1)
    prompt = torch.tensor([tokenizer("The council met on Monday.")["input_ids"]])
    plain = model.generate(prompt, seed=0, **kw_plain)[0, prompt.shape[1]:]
    inf = model.generate(prompt, seed=0, **kw_inf)[0, prompt.shape[1]:]
    assert plain.tolist() == [eos] * 64
    assert inf.tolist() == [eot] * 64


def test_models_load_by_format_with_their_revision(llada_dir, tmp_path, monkeypatch):
    """A LLaDA-format folder goes through from_llada, a saved DSL checkpoint through from_pretrained,
    each given the revision and dtype; other formats are refused. A saved DSL-LLaDA checkpoint gives
    the outputs of the LLaDA folder it was converted from."""
    import torch
    from transformers import AutoTokenizer

    from modeling_dsl import DSLForDiffusionLM

    from evaluation.summarization import load_model

    saved = tmp_path / "dsl_llada"
    first, _ = load_model(str(llada_dir), None, "float32", "cpu", seed=42)
    again, _ = load_model(str(llada_dir), None, "float32", "cpu", seed=42)
    other_seed, _ = load_model(str(llada_dir), None, "float32", "cpu", seed=7)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    load_model(str(llada_dir), None, "float32", "cpu", seed=42)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was
    assert torch.equal(first.embed.weight, again.embed.weight) and torch.equal(
        first.converter.backbone_embedding.bias, again.converter.backbone_embedding.bias)
    assert not torch.equal(first.embed.weight, other_seed.embed.weight)
    first.save_pretrained(saved)
    AutoTokenizer.from_pretrained(llada_dir, trust_remote_code=False).save_pretrained(saved)
    calls = []
    real_llada, real_pretrained = DSLForDiffusionLM.from_llada.__func__, DSLForDiffusionLM.from_pretrained.__func__

    def spy(real, name):
        def wrapper(cls, path, *args, **kwargs):
            calls.append((name, str(path), kwargs.get("revision"), kwargs.get("torch_dtype", kwargs.get("dtype"))))
            return real(cls, path, *args, **kwargs)

        return classmethod(wrapper)

    monkeypatch.setattr(DSLForDiffusionLM, "from_llada", spy(real_llada, "from_llada"))
    monkeypatch.setattr(DSLForDiffusionLM, "from_pretrained", spy(real_pretrained, "from_pretrained"))
    model, loader = load_model(str(llada_dir), "v1.0", "bfloat16", "cpu")
    assert loader == "from_llada" and model.dtype == torch.bfloat16
    assert calls[-1] == ("from_llada", str(llada_dir), "v1.0", torch.bfloat16)
    model, loader = load_model(str(saved), "main", "float32", "cpu")
    assert loader == "from_pretrained" and model.config.backbone_type == "llada"
    assert calls[-1] == ("from_pretrained", str(saved), "main", torch.float32)
    monkeypatch.undo()

    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2'; expected a DSL checkpoint"):
        load_model(str(other), None, "float32", "cpu")

    data = synthetic_sets(tmp_path / "data", n=2)[1]
    common = dict(data=[str(data)], methods=["dsl_llada_sde", "original_remask"], nfe=[4], gen_length=16,
                  num_samples=2)
    run(settings(tmp_path / "a", model=str(llada_dir), **common))
    run(settings(tmp_path / "b", model=str(saved), **common))
    a, b = (sorted_records(tmp_path / d / "samples.jsonl") for d in ("a", "b"))
    assert json.loads((tmp_path / "b" / "run.json").read_text())["model"]["loader"] == "from_pretrained"
    assert [r["output"] for r in a] == [r["output"] for r in b] and [r["generate"] for r in a] == [
        r["generate"] for r in b]


# ----------------------------------------------------------------------------- resume, kill, shards


def cli(*args):
    return [sys.executable, str(SCRIPT), *map(str, args)]


@pytest.mark.slow
def test_sigkill_midway_then_resume(word_model_dir, tmp_path):
    data = synthetic_sets(tmp_path / "data", n=16, words=40, seed=1)[1]
    common = ["--data", data, "--methods", "original_remask", "--nfe", "4", "8", "--gen_length", "16",
              "--model", word_model_dir, "--batch_size", "1", "--no_progress", "--no_evaluate_check"]
    total = 16 * 2
    out = tmp_path / "killed"
    samples = out / "samples.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cli("run", "--output_dir", out, *common), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed: " + (tmp_path / "killed.log").read_text()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = samples.read_bytes()
    finished = before.count(b"\n")
    assert 3 <= finished < total
    with open(samples, "ab") as handle:  # what a kill in the middle of a write leaves
        handle.write(b'{"dataset": "xsum", "index": 3, "meth')
    rerun = subprocess.run(cli("run", "--output_dir", out, *common), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["finished_before"] == finished and summary["generated"] == total - finished
    assert "dropping a partially written last line" in rerun.stderr
    after = samples.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == total  # finished lines kept as they were

    straight = tmp_path / "straight"
    run(settings(straight, data=[str(data)], methods=["original_remask"], nfe=[4, 8], gen_length=16,
                 model=str(word_model_dir), batch_size=4))
    assert results_rows(out) == results_rows(straight)
    assert sorted_records(samples) == sorted_records(straight / "samples.jsonl")
    again = run(settings(straight, data=[str(data)], methods=["original_remask"], nfe=[4, 8], gen_length=16,
                         model=str(word_model_dir), batch_size=4))
    assert again["generated"] == 0 and again["finished_before"] == total


def test_two_shards_merged_equal_one_unsharded_run(word_model_dir, word_sets, tmp_path):
    common = dict(data=[str(p) for p in word_sets], methods=["original_remask", "sde", "lead-k"], nfe=[2, 4],
                  gen_length=8, num_samples=3, model=str(word_model_dir))
    run(settings(tmp_path / "one", batch_size=3, **common))
    sharded = tmp_path / "sharded"
    for index in (1, 0):
        result = run(settings(sharded, batch_size=2, num_shards=2, shard_index=index, **common))
        assert "results" not in result  # a shard writes no report
    merged = merge(str(sharded), check_evaluate=False)
    assert merged["shards"] == 2 and merged["samples"] == 2 * 3 * (2 * 2 + 1)
    assert results_rows(sharded) == results_rows(tmp_path / "one")
    assert sorted_records(sharded / "samples.jsonl") == sorted_records(tmp_path / "one" / "samples.jsonl")
    shard0 = reporting.read_jsonl(sharded / "samples.shard-0-of-2.jsonl")
    assert shard0 and all(r["index"] % 2 == 0 for r in shard0)


def test_shards_of_other_settings_do_not_merge(word_sets, tmp_path):
    run(settings(tmp_path, data=[str(word_sets[1])], methods=["lead-k"], num_shards=2, shard_index=0))
    with pytest.raises(ValueError, match=r"shard\(s\) \[1\] of 2 have not run"):
        merge(str(tmp_path), check_evaluate=False)
    run(settings(tmp_path, data=[str(word_sets[1])], methods=["lead-1"], num_shards=2, shard_index=1))
    with pytest.raises(ValueError, match="shard 1 ran with other settings than shard 0"):
        merge(str(tmp_path), check_evaluate=False)


def test_resume_refuses_results_of_other_settings(word_model_dir, word_sets, tmp_path):
    common = dict(data=[str(word_sets[1])], methods=["original_remask"], nfe=[4], gen_length=8,
                  model=str(word_model_dir), num_samples=2)
    run(settings(tmp_path, **common))
    with pytest.raises(ValueError, match=r"made with other settings \(\['seed'\] differ\)"):
        run(settings(tmp_path, seed=7, **common))


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("case", ["missing_column", "empty_file", "unknown_template", "nfe_zero", "gen_length",
                                  "missing_id_column", "bad_json", "blocks_and_steps"])
def test_bad_inputs_give_a_clear_error_and_write_nothing(case, word_model_dir, word_sets, tmp_path):
    data = tmp_path / "xsum.jsonl"
    data.write_text(word_sets[1].read_text())
    kw = dict(data=[str(data)], methods=["original_remask"], nfe=[4], model=str(word_model_dir))
    if case == "missing_column":
        data.write_text(json.dumps({"id": 1, "article": "x y", "summary": "x"}) + "\n")
        message = r"record 0 has no column\(s\) \['document'\]; its columns are \['article', 'id', 'summary'\]"
    elif case == "empty_file":
        data.write_text("\n")
        message = "the file holds no records"
    elif case == "unknown_template":
        kw["data"] = [str(tmp_path / "mystery.jsonl")]
        (tmp_path / "mystery.jsonl").write_text(data.read_text())
        message = r"no dataset template for 'mystery'; known: \['aeslc', 'arxiv', 'billsum', 'cnn_dailymail'"
    elif case == "nfe_zero":
        kw["nfe"] = [4, 0]
        message = "every NFE budget must be an integer >= 1"
    elif case == "gen_length":
        kw["gen_length"] = 128
        message = "gen_length 128 leaves no room for a prompt in the model's context of 128 tokens"
    elif case == "missing_id_column":
        kw["id_column"] = "key"
        message = r"has no column\(s\) \['key'\]"
    elif case == "bad_json":
        data.write_text(data.read_text() + "{not json\n")
        message = "line 7 is not valid JSON"
    else:  # eosInf_b32 at G = 64: 2 blocks of 32, and NFE 5 is no multiple of them
        kw.update(methods=["original_remask_eosInf_b32"], nfe=[8, 5], gen_length=64)
        message = "original_remask_eosInf_b32' at NFE 5, gen_length 64: steps: steps = 5 must be a multiple"
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        run(settings(out, **kw))
    assert not out.exists()


def test_unknown_template_through_the_cli_writes_nothing(tmp_path):
    data = tmp_path / "notes.jsonl"
    data.write_text(json.dumps({"document": "a b.", "summary": "a"}) + "\n")
    proc = subprocess.run(cli("run", "--data", data, "--methods", "lead-k", "--template", "reddit", "--output_dir",
                              tmp_path / "out"), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "error: unknown dataset template 'reddit'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_long_prompts_are_cut_with_one_warning(word_model_dir, tmp_path, caplog):
    data = synthetic_sets(tmp_path / "data", n=4, words=150, seed=2)[1]
    with data.open("a") as handle:
        handle.write(json.dumps({"id": "short", "document": "The council said.", "summary": "A plan."}) + "\n")
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="evaluation.summarization"):
        run(settings(out, data=[str(data)], methods=["original_remask"], nfe=[2], gen_length=28,
                     model=str(word_model_dir)))
    warnings = [r.message for r in caplog.records if "were cut" in r.message]
    assert warnings == ["prompts longer than the context minus gen_length were cut at the end of the document: "
                        "xsum 4 of 5"]
    records = reporting.read_jsonl(out / "samples.jsonl")
    assert [r["prompt_cut"] for r in sorted(records, key=lambda r: r["index"])] == [True] * 4 + [False]
    assert all(r["prompt_tokens"] == 100 for r in records if r["prompt_cut"])
    assert results_rows(out)[0]["prompts_cut"] == 4


def test_hugging_face_dataset_folder_with_own_columns(summarization_dir, tmp_path):
    """A local `datasets` folder with CNN/DM's own column names gives the same lead-3 as the jsonl."""
    import datasets

    rows = [json.loads(line) for line in open(summarization_dir / "cnn_dailymail.jsonl")][:10]
    hf = datasets.Dataset.from_list([{"article": r["document"], "highlights": r["summary"], "id": r["id"]}
                                     for r in rows])
    datasets.DatasetDict({"test": hf}).save_to_disk(str(tmp_path / "cnn_hf"))
    (tmp_path / "cnn_dailymail.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(settings(tmp_path / "a", hf_dataset=str(tmp_path / "cnn_hf"), template="cnn_dailymail",
                 document_column="article", summary_column="highlights", methods=["lead-k"]))
    run(settings(tmp_path / "b", data=[str(tmp_path / "cnn_dailymail.jsonl")], methods=["lead-k"]))
    assert results_rows(tmp_path / "a") == results_rows(tmp_path / "b")
    with pytest.raises(ValueError, match=r"has no column\(s\) \['document', 'summary'\]; its columns are \['article'"):
        run(settings(tmp_path / "c", hf_dataset=str(tmp_path / "cnn_hf"), template="xsum", methods=["lead-k"]))


def test_jsonl_reader_repairs_only_a_torn_last_line(tmp_path):
    path = tmp_path / "s.jsonl"
    with reporting.JsonlWriter(path) as writer:
        writer.write({"a": 1})
        writer.write({"a": 2})
    path.write_bytes(path.read_bytes() + b'{"a": 3')
    assert reporting.read_jsonl(path, repair=True) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    path.write_bytes(b'{"a": 1}\n{"a"\n{"a": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        reporting.read_jsonl(path)


# ----------------------------------------------------------------------------- README commands


def test_readme_protocol_commands_are_ci_sized_on_the_llada_fixture(tok_dir, tmp_path):
    """The README's protocol commands (LLaDA-8B-Instruct, DSL-LLaDA-Beta1) run in CI against
    `check_readme.py llada-fixture` stand-ins (published and released format), which load here."""
    sys.path.insert(0, str(REPO / "scripts"))
    import check_readme

    from evaluation.summarization import load_model

    blocks = check_readme.parse_readme((REPO / "README.md").read_text())
    for hub, methods in (("GSAI-ML/LLaDA-8B-Instruct", "original_remask original_remask_eosInf_b32"),
                         ("liddlefish/DSL-LLaDA-Beta1", "dsl_llada_sde")):
        (block,) = [b for b in blocks if f"--model {hub}" in b.code]
        assert f"--methods {methods} --nfe 8 16 32 64" in block.code and "merge" in block.code
        command = block.command()
        assert hub not in command and "check_readme.py llada-fixture readme_ci/" in command
        assert ("--released" in command) == hub.startswith("liddlefish")
    assert check_readme.fixture_main("llada-fixture", [str(tmp_path / "x"), str(tok_dir), "--bogus"]) == 2
    assert check_readme.fixture_main("llada-fixture", [str(tmp_path / "released"), str(tok_dir), "--released"]) == 0
    model, loader = load_model(str(tmp_path / "released"), None, "float32", "cpu")
    assert loader == "from_llada" and model.config.max_position_embeddings == 512
    assert float(model.converter.beta) == pytest.approx(0.99)  # the released converter, not a fresh one
