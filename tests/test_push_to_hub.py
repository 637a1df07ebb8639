"""Issue 16: scripts/push_to_hub.py and model.push_to_hub, offline against a local Hub upload API
(tests/hub_server.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_model
from hub_server import HubServer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts import push_to_hub  # noqa: E402

CODE_FILES = {p.name for p in (REPO / "modeling_dsl").glob("*.py") if p.name != "__init__.py"}


@pytest.fixture(scope="module")
def checkpoint(tok_dir, tmp_path_factory):
    """A saved tiny model with its tokenizer, training record and a likelihood result, plus what a
    trainer leaves beside them that must not be pushed."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("ckpt")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "training_args.json").write_text(json.dumps({"objective": "dsl", "global_step": 5,
                                                           "training_arguments": {"learning_rate": 3e-4}}))
    (folder / "eval_likelihood.json").write_text(json.dumps({"dataset": "wikitext103", "nats_per_token": 4.5,
                                                             "nats_per_token_stderr": 0.03}))
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "README.md").write_text("old card")
    (folder / "checkpoint-5").mkdir()
    return folder


def expected_files(folder):
    tokenizer = {n for n in os.listdir(folder) if n.startswith(("tokenizer", "special_tokens", "chat_template"))}
    return ({"config.json", "generation_config.json", "model.safetensors", "README.md", "training_args.json",
             "eval_likelihood.json"} | CODE_FILES | tokenizer)


def test_push_uploads_exactly_the_checkpoint_files_and_the_card(checkpoint, capsys):
    with HubServer() as hub:
        code = push_to_hub.main([str(checkpoint), "--repo_id", "me/tiny-dsl", "--token", "hf_test", "--endpoint",
                                 hub.url, "--private", "--revision", "dev", "--commit-message", "first push"])
        assert code == 0, capsys.readouterr().err
    assert hub.repos["me/tiny-dsl"]["private"] is True and "dev" in hub.repos["me/tiny-dsl"]["branches"]
    (commit,) = hub.commits
    assert commit["revision"] == "dev" and commit["summary"] == "first push" and not commit["create_pr"]
    assert set(commit["files"]) == expected_files(checkpoint)
    assert commit["files"]["model.safetensors"] == (checkpoint / "model.safetensors").read_bytes()
    assert CODE_FILES >= {"modeling_dsl.py", "configuration_dsl.py", "generation_dsl.py"}
    card = commit["files"]["README.md"].decode()
    config = json.loads((checkpoint / "config.json").read_text())
    assert json.dumps(config, indent=2, sort_keys=True) in card  # the config
    assert "type: nll" in card and "value: 4.5" in card  # the metric, as model-index
    assert 'AutoModel.from_pretrained("me/tiny-dsl", trust_remote_code=True)' in card
    out = capsys.readouterr().out
    assert "not pushed (not part of a checkpoint): checkpoint-5/, training_args.bin" in out
    assert "commit: " + hub.url in out


def test_create_pr_opens_a_pull_request(checkpoint, capsys):
    with HubServer() as hub:
        assert push_to_hub.main([str(checkpoint), "--repo_id", "me/tiny-dsl", "--token", "hf_test", "--endpoint",
                                 hub.url, "--create-pr"]) == 0
    assert hub.commits[0]["create_pr"] and hub.commits[0]["revision"] == "main"
    assert f"pull request: {hub.url}/me/tiny-dsl/discussions/1" in capsys.readouterr().out


def test_refused_repository_and_bad_arguments_give_clear_errors(checkpoint, tmp_path, capsys):
    with HubServer() as hub:
        code = push_to_hub.main([str(checkpoint), "--repo_id", "forbidden/tiny", "--token", "hf_test",
                                 "--endpoint", hub.url])
    assert code == 1 and not hub.commits
    err = capsys.readouterr().err
    assert "the Hub refused the push to 'forbidden/tiny'" in err and "403" in err
    assert push_to_hub.main([str(checkpoint), "--repo_id", "not a repo id", "--token", "x"]) == 2
    assert "not a repo id" in capsys.readouterr().err
    assert push_to_hub.main([str(tmp_path / "missing"), "--repo_id", "me/x", "--token", "x"]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    bare = tmp_path / "bare"  # weights and config, but no remote code and no tokenizer
    tiny_model().save_pretrained(bare)
    for f in bare.glob("*.py"):
        f.unlink()
    assert push_to_hub.main([str(bare), "--repo_id", "me/x", "--token", "x"]) == 2
    assert "lacks the remote-code files" in capsys.readouterr().err
    tiny_model().save_pretrained(bare)
    assert push_to_hub.main([str(bare), "--repo_id", "me/x", "--token", "x"]) == 2
    assert "pass --tokenizer" in capsys.readouterr().err
    assert push_to_hub.main([str(checkpoint), "--repo_id", "me/x", "--token", "x", "--eval_results", "bleu=x.json"]) == 2
    assert "KIND one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        push_to_hub.main([str(checkpoint)])  # no --repo_id
    assert exit_info.value.code == 2 and "--repo_id" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        push_to_hub.main(["--help"])
    assert exit_info.value.code == 0 and "--create-pr" in capsys.readouterr().out


def clean_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def test_missing_token_is_named_before_anything_is_sent(checkpoint, tmp_path):
    with HubServer() as hub:
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "push_to_hub.py"), str(checkpoint), "--repo_id",
                               "me/tiny-dsl", "--endpoint", hub.url], cwd=REPO, env=clean_env(tmp_path),
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no Hugging Face token: pass --token" in proc.stderr
    assert hub.log == []


PUSH = """
import sys
from modeling_dsl import DSLForDiffusionLM
model = DSLForDiffusionLM.from_pretrained(sys.argv[1])
print(model.push_to_hub("me/pushed", commit_message="via transformers"))
"""


def test_model_push_to_hub_uploads_weights_configs_and_remote_code(checkpoint, tmp_path):
    """transformers' `model.push_to_hub`, pointed at the local API by HF_ENDPOINT (read at import)."""
    with HubServer() as hub:
        proc = subprocess.run([sys.executable, "-c", PUSH, str(checkpoint)], cwd=REPO, capture_output=True, text=True,
                              env=clean_env(tmp_path, HF_ENDPOINT=hub.url, HF_TOKEN="hf_test"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (commit,) = hub.commits
    assert commit["repo"] == "me/pushed" and commit["summary"] == "via transformers"
    assert set(commit["files"]) == {"config.json", "generation_config.json", "model.safetensors", "README.md"} | CODE_FILES
