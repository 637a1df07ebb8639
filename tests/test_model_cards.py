"""Issue 16: model cards (model_cards/), rendered from a checkpoint folder and written on every save."""

import json
import logging

import pytest
from huggingface_hub import ModelCard
from transformers import TrainingArguments

from conftest import tiny_model
from model_cards import collect_eval_results, render_model_card

SUMMARY_RECORDS = [  # two samples of one sweep cell, as evaluation/summarization.py records them
    {"dataset": "xsum", "method": m, "nfe": nfe, "index": i, "nfe_used": nfe, "words": 20, "num_tokens": 30,
     "tags": [], "scores": {"rouge1": r1 + i, "rouge2": 2.0, "rougeL": 10.0, "rougeLsum": 11.0}}
    for m, nfe, r1 in (("sde", 8, 12.0), ("lead-k", 0, 16.0)) for i in range(2)
]


def write_eval_files(folder):
    from evaluation.summarization import aggregate

    summary = {"protocol": "dsl_llada", "methods": [{"label": "sde", "kind": "generate"},
                                                    {"label": "lead-k", "kind": "lead"}],
               "results": aggregate(SUMMARY_RECORDS), "environment": {"python": "3"}}
    (folder / "eval_summarization.json").write_text(json.dumps(summary))
    likelihood = {"dataset": "wikitext103", "results": [
        {"estimator": "dsl_bound", "nats_per_token": {"value": 3.25, "stderr": 0.01}, "bits_per_char": 1.4,
         "bits_per_char_stderr": 0.005},
        {"estimator": "mdlm_elbo", "nats_per_token": 3.5, "nats_per_token_se": 0.02}]}
    (folder / "eval_likelihood.json").write_text(json.dumps(likelihood))
    unconditional = {"results": {"sde": {"strategy": "sde", "steps": 128, "dataset": "openwebtext", "mauve": 0.81,
                                         "gen_ppl": 50.5, "entropy": 5.6}}}
    (folder / "eval_unconditional.json").write_text(json.dumps(unconditional))


def metrics_of(card):
    return {(r.task_type, r.dataset_name, r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}


def test_card_holds_config_training_metrics_and_usage(tmp_path):
    model = tiny_model()
    model.generation_config.strategy = "remdm"
    model.save_pretrained(tmp_path)
    training = {"objective": "dsl", "global_step": 7, "world_size": 2, "converter_lr_multiplier": 25.0,
                "training_arguments": {"learning_rate": 3e-4, "max_steps": 7, "per_device_train_batch_size": 8}}
    (tmp_path / "training_args.json").write_text(json.dumps(training))
    write_eval_files(tmp_path)
    card = render_model_card(tmp_path, repo_id="me/tiny-dsl", base_model="kuleshov-group/mdlm-owt")
    text = card.content
    config = json.loads((tmp_path / "config.json").read_text())
    assert json.dumps(config, indent=2, sort_keys=True) in text  # the whole config
    assert f"| parameters | {model.num_parameters() / 1e6:.2f}M |" in text
    assert "| noise_dim | 8 |" in text and "| backbone_type | mdlm_dit |" in text
    assert "| learning_rate | 0.0003 |" in text and "| converter_lr_multiplier | 25 |" in text
    assert 'AutoModel.from_pretrained("me/tiny-dsl", trust_remote_code=True)' in text
    assert 'strategy="remdm"' in text
    metrics = metrics_of(card)
    assert metrics[("summarization", "xsum", "rouge1", "sde, NFE 8")] == pytest.approx(12.5)  # mean of 12 and 13
    assert not any("lead" in str(key[3]) for key in metrics)  # the extractive baseline is not this model's
    assert metrics[("text-generation", "wikitext103", "nll", "estimator=dsl_bound")] == 3.25
    assert metrics[("text-generation", "wikitext103", "bpc", "estimator=dsl_bound")] == 1.4
    assert metrics[("text-generation", "wikitext103", "nll", "estimator=mdlm_elbo")] == 3.5
    assert metrics[("text-generation", "openwebtext", "mauve", "strategy=sde, steps=128")] == 0.81
    assert len(metrics) == 4 + 3 + 3
    assert "| likelihood | wikitext103 | estimator=dsl_bound | NLL (nats/token) | 3.25 | 0.01 |" in text
    assert "| likelihood | wikitext103 | estimator=mdlm_elbo | NLL (nats/token) | 3.5 | 0.02 |" in text
    reparsed = ModelCard(text)  # the YAML header round-trips: model-index, tags, base model
    assert len(reparsed.data.eval_results) == 10 and reparsed.data.base_model == "kuleshov-group/mdlm-owt"
    assert "dsl-diffusion" in reparsed.data.tags and reparsed.data.library_name == "transformers"


def test_missing_or_broken_eval_files_are_tolerated(tmp_path, caplog):
    tiny_model().save_pretrained(tmp_path)
    card = render_model_card(tmp_path)
    assert card.data.eval_results is None and "No evaluation results were found" in card.content
    assert "No training run is recorded" in card.content
    (tmp_path / "eval_likelihood.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert collect_eval_results(tmp_path) == []
    assert "eval_likelihood.json" in caplog.text
    with pytest.raises(FileNotFoundError, match="evaluation results file"):
        collect_eval_results(tmp_path, {"likelihood": tmp_path / "nope.json"})
    with pytest.raises(FileNotFoundError, match="no config.json"):
        render_model_card(tmp_path / "empty")


def test_llada_checkpoints_get_the_llada_template(tmp_path):
    tiny_model(backbone_type="llada", intermediate_size=48).save_pretrained(tmp_path)
    text = render_model_card(tmp_path).content
    assert "LLaDA-8B transformer backbone" in text and "apply_chat_template" in text
    assert "trust_remote_code=True" in text and "| backbone_type | llada |" in text


def test_trainer_save_writes_training_args_and_the_card(tmp_path):
    from trainers import DSLTrainer

    args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, learning_rate=1e-4,
                             max_steps=3)
    DSLTrainer(model=tiny_model(), args=args, objective="mdlm").save_model(str(tmp_path / "out"))
    training = json.loads((tmp_path / "out" / "training_args.json").read_text())
    assert training["objective"] == "mdlm" and training["training_arguments"]["learning_rate"] == 1e-4
    card = (tmp_path / "out" / "README.md").read_text()
    assert "objective `mdlm`" in card and "| learning_rate | 0.0001 |" in card and "trust_remote_code=True" in card


def test_converted_checkpoint_gets_a_card(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scripts import convert_checkpoint
    from test_core_mdlm_parity import write_mdlm_checkpoint

    (tmp_path / "mdlm").mkdir()
    write_mdlm_checkpoint(tmp_path / "mdlm")
    convert_checkpoint.main(["--mdlm", str(tmp_path / "mdlm"), "--output", str(tmp_path / "dsl")])
    card = ModelCard.load(tmp_path / "dsl" / "README.md")
    assert "| backbone_type | mdlm_dit |" in card.content and "trust_remote_code=True" in card.content
    assert card.data.base_model is None  # a local source is not Hub metadata


def test_usage_snippet_of_the_card_runs(tok_dir, tmp_path, capsys, single_thread):
    """The card's Python block, as written for this folder, loads the model as remote code and generates."""
    import re

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    model = tiny_model(vocab_size=len(tokenizer))
    model.generation_config.steps = 4  # the card shows the saved default
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text = render_model_card(tmp_path, repo_id=str(tmp_path)).content
    (snippet,) = re.findall(r"## Usage.*?```python\n(.*?)```", text, flags=re.S)
    assert "trust_remote_code=True" in snippet and "steps=4, gen_length=64" in snippet  # within the 64-token context
    exec(compile(snippet, "card-usage", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("[") and printed.count("'") >= 8  # four decoded samples
