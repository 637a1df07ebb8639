"""Issue 16: the `dsl` model type for lm-evaluation-harness (evaluation/lm_eval_dsl.py, scripts/lm_eval_dsl.py).

Everything runs offline on a tiny model saved with a small tokenizer; the tasks are YAML files over
a local JSONL written by the tests (../shared/reference/lm_eval.md §3).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_model

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from evaluation.lm_eval_dsl import DSLEvalHarness, cut_at_stop, mc_mask_loglikelihood  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROWS = [
    {"question": "The album was released in", "answer": " 1990", "choices": [" 1990", " the", " album"], "label": 0},
    {"question": "In 1990 the", "answer": " band", "choices": [" band", " of", " and"], "label": 1},
    {"question": "He was", "answer": " born", "choices": [" born", " a", " the"], "label": 2},
]


@pytest.fixture(scope="module")
def model_dir(tok_dir, tmp_path_factory):
    """A tiny DSL model (V = the tokenizer's 384 tokens, 64 positions) saved with its tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    folder = tmp_path_factory.mktemp("lm_eval_model")
    tiny_model(weight_std=0.3, vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Three task YAMLs (generation, multiple choice, rolling) over one local JSONL."""
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "gen.yaml").write_text(
        "task: dsl_tiny_gen\n" + common + 'output_type: generate_until\ndoc_to_text: "{{question}}"\n'
        'doc_to_target: "{{answer}}"\ngeneration_kwargs:\n  until: ["e"]\n  max_gen_toks: 8\n'
        "metric_list:\n  - metric: exact_match\n")
    (folder / "mc.yaml").write_text(
        "task: dsl_tiny_mc\n" + common + 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n')
    (folder / "roll.yaml").write_text(
        "task: dsl_tiny_rolling\n" + common + 'output_type: loglikelihood_rolling\ndoc_to_text: ""\n'
        'doc_to_target: "{{question}}{{answer}}"\nmetric_list:\n  - metric: word_perplexity\n')
    return folder


def clean_logits(model, ids, masked):
    """Logits written out: masked positions z = 0, the others z = visible_snr·E[t] (noise-free)."""
    E = model.noise_embeddings()
    z = model.config.effective_visible_snr * E[ids.clamp(max=E.shape[0] - 1)]
    z = z.masked_fill(masked.unsqueeze(-1), 0.0)
    with torch.no_grad():
        return model(noisy_embeds=z).logits


def test_mc_mask_estimator_matches_the_exact_expectation_and_its_standard_error(single_thread):
    """L = 2: X = −2·CE(r_i | other visible) for l = 1 (prob ½, i uniform), −(CE_1 + CE_2) with both
    masked for l = 2 (prob ½). The estimate lies within 4 standard errors of E[X], and its stated
    standard error matches √(Var X / n) computed from the exact distribution."""
    model = tiny_model(weight_std=0.5)
    context, target = [3, 7, 11], [20, 31]
    ids = torch.tensor([context + target])

    def ce(masked_positions, position):
        masked = torch.zeros_like(ids, dtype=torch.bool)
        masked[0, masked_positions] = True
        logp = torch.log_softmax(clean_logits(model, ids, masked)[0, position].double(), -1)
        return -float(logp[ids[0, position]])

    values = torch.tensor([-2 * ce([3], 3), -2 * ce([4], 4), -(ce([3, 4], 3) + ce([3, 4], 4))], dtype=torch.float64)
    probs = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    mean = float((probs * values).sum())
    var = float((probs * (values - mean) ** 2).sum())
    n = 4000
    estimate, stderr = mc_mask_loglikelihood(model, context, target, n, 1000, torch.Generator().manual_seed(0))
    exact_se = math.sqrt(var / n)
    assert abs(estimate - mean) < 4 * exact_se, (estimate, mean, exact_se)
    assert abs(stderr - exact_se) < 0.1 * exact_se
    again = mc_mask_loglikelihood(model, context, target, n, 1000, torch.Generator().manual_seed(0))
    assert again == (estimate, stderr)  # seeded


def test_one_token_continuation_is_exact(single_thread):
    """L = 1: every sample masks the one token, so the estimate is log p exactly, with zero spread."""
    model = tiny_model(weight_std=0.5)
    ids = torch.tensor([[3, 7, 11, 20]])
    masked = torch.tensor([[False, False, False, True]])
    exact = float(torch.log_softmax(clean_logits(model, ids, masked)[0, 3].double(), -1)[20])
    estimate, stderr = mc_mask_loglikelihood(model, [3, 7, 11], [20], 5, 5, torch.Generator().manual_seed(1))
    assert estimate == pytest.approx(exact, abs=1e-5) and stderr == pytest.approx(0.0, abs=1e-6)


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop("abc\n\nQ: next", ["Q:", "\n\n"]) == "abc"
    assert cut_at_stop("no stop here", ["\n"]) == "no stop here"
    assert cut_at_stop("x", []) == "x"


def gen_requests(until):
    kwargs = {"until": until, "max_gen_toks": 8}
    return [Instance("generate_until", {}, (r["question"], dict(kwargs)), i) for i, r in enumerate(ROWS)]


def test_generate_until_is_generate_cut_at_the_stop_and_batch_invariant(model_dir, single_thread):
    lm = DSLEvalHarness(pretrained=str(model_dir), device="cpu", strategy="mdlm", steps=4, batch_size=3)
    fulls = []
    for i, row in enumerate(ROWS):  # each prompt alone through generate(), seed = 1234 + request index
        ids = torch.tensor([lm.tokenizer(row["question"], add_special_tokens=False)["input_ids"]])
        seq = lm.model.generate(ids, strategy="mdlm", steps=4, gen_length=8, seed=1234 + i)[0, ids.shape[1]:].tolist()
        end = next((k for k, t in enumerate(seq) if t in lm.eos_ids), len(seq))
        fulls.append(lm.tokenizer.decode(seq[:end], skip_special_tokens=True))
    longest = max(fulls, key=len)
    stop = longest[len(longest) // 2]  # a string that occurs inside a generated text: the cut is exercised
    out = lm.generate_until(gen_requests([stop, "\n\n"]), disable_tqdm=True)
    assert out == [full.split(stop)[0] for full in fulls] and out != fulls
    lm.batch_size = 1
    assert lm.generate_until(gen_requests([stop, "\n\n"]), disable_tqdm=True) == out


def test_bad_model_args_are_named(model_dir):
    with pytest.raises(ValueError, match="unknown argument.*stepz"):
        DSLEvalHarness(pretrained=str(model_dir), device="cpu", stepz=4)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        DSLEvalHarness(pretrained=str(model_dir), device="cpu", likelihood="exact")
    with pytest.raises(ValueError, match="mc_num must be a positive integer"):
        DSLEvalHarness(pretrained=str(model_dir), device="cpu", mc_num=0)
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        DSLEvalHarness(pretrained=str(model_dir / "missing"), device="cpu")


def test_simple_evaluate_runs_a_generation_and_a_loglikelihood_task_offline(model_dir, task_dir, single_thread):
    from lm_eval.tasks import TaskManager

    lm = DSLEvalHarness(pretrained=str(model_dir), device="cpu", strategy="mdlm", steps=4, mc_num=4, batch_size=4)
    result = lm_eval.simple_evaluate(model=lm, tasks=["dsl_tiny_gen", "dsl_tiny_mc", "dsl_tiny_rolling"],
                                     task_manager=TaskManager(include_path=str(task_dir)), bootstrap_iters=0)
    scores = result["results"]
    assert 0.0 <= scores["dsl_tiny_gen"]["exact_match,none"] <= 1.0
    assert 0.0 <= scores["dsl_tiny_mc"]["acc,none"] <= 1.0
    assert math.isfinite(scores["dsl_tiny_rolling"]["word_perplexity,none"])
    generated = [s["filtered_resps"][0] for s in result["samples"]["dsl_tiny_gen"]]
    assert len(generated) == 3 and not any("e" in g for g in generated)  # cut at the task's `until`
    sample = result["samples"]["dsl_tiny_mc"][0]
    context, choice = sample["arguments"][0]
    ll = float(sample["resps"][0][0][0])
    again = lm.loglikelihood([Instance("loglikelihood", {}, (context, choice), 0)], disable_tqdm=True)
    assert again[0] == (ll, False)  # seeded by the request's tokens: same value outside the harness
    assert ll < 0 and len(lm.last_standard_errors) == 1 and lm.last_standard_errors[0] > 0


def test_runner_checks_the_model_folder_before_lm_eval_starts(tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    from scripts import lm_eval_dsl as runner

    code = runner.main(["--model", "dsl", "--model_args", f"pretrained={tmp_path / 'nope'}", "--tasks", "x"])
    assert code == 2 and "no such local folder" in capsys.readouterr().err
    assert runner.main(["--model", "dsl", "--model_args", "steps=4", "--tasks", "x"]) == 2
    assert "needs pretrained=" in capsys.readouterr().err


@pytest.mark.slow
def test_lm_eval_command_line_runs_the_dsl_model_offline(model_dir, task_dir, tmp_path):
    """The README's command: lm-eval's own CLI through the runner, offline, JSON results written."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    cmd = [sys.executable, str(REPO / "scripts" / "lm_eval_dsl.py"), "--model", "dsl", "--model_args",
           f"pretrained={model_dir},strategy=mdlm,steps=4,mc_num=4", "--tasks", "dsl_tiny_gen,dsl_tiny_mc",
           "--include_path", str(task_dir), "--batch_size", "4", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert set(results["results"]) == {"dsl_tiny_gen", "dsl_tiny_mc"}
    assert "dsl (" in proc.stdout and "standard error of log p" in proc.stderr


def test_demo_tasks_load_offline_and_the_runner_has_help(capsys):
    """The README's tasks (evaluation/lm_eval_tasks): found by lm-eval's TaskManager, built from the
    shipped WikiText excerpt, each choice list holding the true next word at `label`."""
    from lm_eval.tasks import TaskManager

    folder = REPO / "evaluation" / "lm_eval_tasks"
    manager = TaskManager(include_path=str(folder))
    assert {"dsl_demo_next_word", "dsl_demo_choice", "dsl_demo_wikitext"} <= set(manager.all_tasks)
    sys.path.insert(0, str(folder))
    import utils as demo_tasks

    rows = demo_tasks.load()["test"]
    assert len(rows) >= 16
    for row in rows:
        words = row["text"].split()
        assert row["prompt"] == " ".join(words[:8]) and row["answer"] == " " + words[8]
        assert row["choices"][row["label"]] == row["answer"] and len(set(row["choices"])) == len(row["choices"])
    assert len({row["label"] for row in rows}) > 1  # the answer is not always first
    sys.path.insert(0, str(REPO))
    from scripts import lm_eval_dsl as runner

    with pytest.raises(SystemExit) as exit_info:
        runner.main(["--help"])
    assert exit_info.value.code == 0 and "registers `dsl`" in capsys.readouterr().out


def test_is_greedy_compares_with_greedy_decoding(model_dir, single_thread):
    """check_greedy=True: for one continuation token, greedy means the model's argmax given the context."""
    lm = DSLEvalHarness(pretrained=str(model_dir), device="cpu", check_greedy=True, mc_num=2)
    context = lm.tok_encode("The album was released in")
    ids = torch.tensor([context + [0]])
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked[0, -1] = True
    best = int(clean_logits(lm.model, ids, masked)[0, -1].argmax())
    assert lm._is_greedy(context, [best]) and not lm._is_greedy(context, [(best + 1) % 384])
