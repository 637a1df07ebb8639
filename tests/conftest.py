"""Shared pytest settings and fixtures: the `slow` marker, WikiText text and a small tokenizer,
a sandbox without the package, and the one factory of tiny models."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Shipped with the package (trainers/demo_data/README.md): the first 40 articles of WikiText-103's
# training split, detokenised with `trainers.data.detokenize_wikitext`, one blank line between articles.
WIKITEXT_EXCERPT = REPO / "trainers" / "demo_data" / "wikitext103_excerpt.txt"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores (CI still runs it)")


# ----------------------------------------------------------------------------- WikiText and a tokenizer


def paragraphs(text):
    """The lines of `text` longer than 50 characters (WikiText's paragraphs, no headings)."""
    return [p for p in text.split("\n") if len(p) > 50]


@pytest.fixture(scope="session")
def wikitext():
    """(train text, held-out text) from the shipped WikiText-103 excerpt: every article but the last
    two, and the first 60 000 characters of those two (never trained on)."""
    text = WIKITEXT_EXCERPT.read_text(encoding="utf-8")
    articles = [a for a in text.split("\n\n") if a.strip()]
    return "\n\n".join(articles[:-2]), "\n\n".join(articles[-2:])[:60_000]


@pytest.fixture(scope="session")
def tok_dir(wikitext, tmp_path_factory):
    """A folder holding a 384-token byte-level BPE trained on the excerpt's training paragraphs
    (`trainers.train_bpe_tokenizer`, as scripts/demo.py builds its tokenizer); `<|endoftext|>` is
    its BOS, EOS and padding token, as in GPT-2."""
    from trainers import train_bpe_tokenizer

    path = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(paragraphs(wikitext[0]), vocab_size=384).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- processes and threads


BLOCK_PACKAGE = '''
import importlib.abc, sys

class _BlockPackage(importlib.abc.MetaPathFinder):  # a user's machine without this package
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_dsl", "trainers"):
            raise ImportError("blocked: " + name)

sys.meta_path.insert(0, _BlockPackage())
'''


@pytest.fixture
def run_without_package(tmp_path):
    """Run Python `code` (with `sys.argv[1:] = args`) in a fresh interpreter that cannot import
    `modeling_dsl` or `trainers`, with its own transformers modules cache; return the JSON object
    its last stdout line prints."""
    import json
    import os
    import subprocess
    import sys

    def run(code: str, *args, timeout: int = 300) -> dict:
        script = tmp_path / "without_package.py"
        script.write_text(BLOCK_PACKAGE + code)
        env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": ""}
        proc = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture
def single_thread():
    """Run a test on one torch thread: sampler loops are thousands of tiny ops, and two threads on
    two cores only add contention."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- tiny models
# The one factory of tiny models for every test file (`from conftest import tiny_config, tiny_model`).
TINY = dict(vocab_size=50, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, cond_dim=16,
            max_position_embeddings=64, noise_dim=8, dropout=0.0)


def tiny_config(**overrides):
    """A tiny `DSLConfig` (V = 50, D = 32, 2 layers, d = 8); the mask id follows `vocab_size`
    (the converter's extra slot) unless given."""
    from modeling_dsl import DSLConfig

    fields = dict(TINY)
    fields.update(overrides)
    fields.setdefault("mask_token_id", fields["vocab_size"])
    return DSLConfig(**fields)


def tiny_model(seed=0, weight_std=None, **overrides):
    """A tiny `DSLForDiffusionLM` in eval mode, built under `torch.manual_seed(seed)`.

    `weight_std=None` keeps the model's own init (MDLM starts adaLN and the head at zero, so every
    logit is equal); a float re-draws every parameter but the converter's β and logit bias as
    N(0, std²) (norm weights 1 + N(0, std²)), so p_θ is far from uniform and far from one-hot.
    """
    import torch

    from modeling_dsl import DSLForDiffusionLM

    torch.manual_seed(seed)
    model = DSLForDiffusionLM(tiny_config(**overrides))
    if weight_std is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in ("converter.beta", "converter.logit_bias"):
                    continue
                p.copy_(torch.randn_like(p) * weight_std + (1.0 if "norm" in name else 0.0))
    return model.eval()
