"""Likelihood estimators (paper Eq. 3–4, App. A): exact on a toy with the Bayes denoiser, finite and
seeded on a tiny trained model, corpus figures consistent, CLI checks."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import REPO, paragraphs, tiny_model
from evaluation.likelihood import (
    LikelihoodOptions, default_estimators, evaluate_likelihood, pack_documents, ratio_and_errors, read_documents,
)
from modeling_dsl.noise_dsl import gauss_legendre, mdlm_elbo, path_integral_nll, quadrature_rule, roar_nll

# ----------------------------------------------------------------------------- the toy: exact −log P(x)
# Sequences of L = 3 tokens, each one of K = 3 random unit vectors in d = 4, five sequences with known
# probabilities. Given z (any per-token SNRs), log p(z | x) = Σ_i z_i·x_i + const (‖x_i‖ = 1), so the
# Bayes posterior over the support is softmax_s(log p_s + Σ_i z_i·x_i(s)): the optimal denoiser is
# x̂_i(z) = Σ_s P(s | z) x_i(s) and the optimal decoder P(x | z) = P(s = x | z). Eq. 4 is then an
# identity for every path and every γ_top, so the Monte-Carlo mean must equal −log p_s.

SEQS = torch.tensor([[0, 1, 2], [0, 1, 1], [2, 0, 1], [1, 1, 0], [0, 2, 2]])
PROBS = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05], dtype=torch.float64)
COPIES = 1000  # Monte-Carlo copies of each sequence


def toy_embeddings():
    e = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return e / e.norm(dim=-1, keepdim=True)


def toy_oracle():
    """(x (B, L, d) fp32, sequence index per row, denoiser, log P(x | z))."""
    vectors = toy_embeddings()[SEQS]  # (S, L, d)
    index = torch.arange(len(SEQS)).repeat_interleave(COPIES)

    def posterior(z):
        return torch.softmax(PROBS.log() + torch.einsum("bld,sld->bs", z.double(), vectors), dim=-1)

    def denoiser(z):
        return (posterior(z) @ vectors.flatten(1)).view(z.shape)

    def log_likelihood(z):
        return posterior(z).gather(1, index[:, None]).squeeze(1).log()

    return vectors[index].float(), index, denoiser, log_likelihood


def exact_conditional_nll(index):
    """token_nll(visible) = −log P(x_i | x_visible) under the toy distribution, for every i."""
    true = SEQS[index]

    def token_nll(visible):
        agree = SEQS[None] == true[:, None]  # (B, S, L)
        consistent = (agree | ~visible[:, None]).all(-1)  # sequences matching the visible tokens
        mass = PROBS[None] * consistent
        return -((mass[:, :, None] * agree).sum(1) / mass.sum(1, keepdim=True)).log()

    return token_nll


def per_sequence_z(estimates):
    """(z-scores of the mean against −log p_s, standard errors) per toy sequence."""
    est = estimates.view(len(SEQS), COPIES)
    mean, se = est.mean(1), est.std(1) / math.sqrt(COPIES)
    return ((mean + PROBS.log()) / se), se


@pytest.mark.parametrize("path", ["joint", "left_to_right"])
@pytest.mark.parametrize("snr_top", [4.0, 40.0])
def test_path_integral_equals_exact_nll_with_the_bayes_denoiser(path, snr_top, single_thread):
    x, _, denoiser, log_likelihood = toy_oracle()
    valid = torch.ones(x.shape[:2], dtype=torch.bool)
    out = path_integral_nll(x, valid, denoiser, log_likelihood, snr_top, path=path, num_nodes=16,
                            generator=torch.Generator().manual_seed(1))
    z, se = per_sequence_z(out["nll"][0])
    assert (z.abs() < 3).all(), (path, snr_top, z, se)
    assert (se < 0.05).all()  # sharp enough that a missing term shows
    reconstruction = out["reconstruction"][0].view(len(SEQS), COPIES).mean(1)
    if snr_top == 4.0:  # at a low top the decoder term carries a real share of −log p
        z_without, _ = per_sequence_z(out["diffusion"][0])
        assert (z_without.abs() > 5).any() and (reconstruction > 0.05).any()
    else:  # γ_top → ∞: the decoder term vanishes and the integral alone is −log p
        assert (reconstruction < 0.15).all()


def test_roar_and_mdlm_estimates_equal_exact_nll_with_exact_conditionals():
    _, index, _, _ = toy_oracle()
    valid = torch.ones(len(index), 3, dtype=torch.bool)
    token_nll = exact_conditional_nll(index)
    for estimate in (roar_nll(token_nll, valid, 1, torch.Generator().manual_seed(2)),
                     mdlm_elbo(token_nll, valid, 1, torch.Generator().manual_seed(3), eps=1e-3)):
        z, _ = per_sequence_z(estimate[0])
        assert (z.abs() < 3).all(), z


def test_quadrature_rules():
    nodes, weights = gauss_legendre(8)
    for degree in range(16):  # exact up to degree 2n − 1
        exact = (1 - (-1) ** (degree + 1)) / (degree + 1)
        assert float((weights * nodes ** degree).sum()) == pytest.approx(exact, abs=1e-12)
    # an MMSE-like integrand: decays over decades of SNR; log1p Gauss–Legendre is accurate with 24 nodes,
    # the authors' linear trapezoid grid is not
    exact = 3.0 * (1.0 - math.exp(-100.0 / 3.0)) + 0.5 * 0.2 * (1.0 - math.exp(-100.0 * 5.0))
    f = lambda g: torch.exp(-g / 3.0) + 0.5 * torch.exp(-5.0 * g)
    snr, w = quadrature_rule(100.0, 24)
    assert float((w * f(snr)).sum()) == pytest.approx(exact, rel=1e-5)
    snr, w = quadrature_rule(100.0, 24, rule="trapezoid", transform="linear")
    assert abs(float((w * f(snr)).sum()) - exact) > 1e-2
    with pytest.raises(ValueError, match="quadrature must be one of"):
        quadrature_rule(10.0, 8, rule="simpson")
    with pytest.raises(ValueError, match="snr_top must be finite"):
        quadrature_rule(float("inf"), 8)


# ----------------------------------------------------------------------------- a tiny trained model


@pytest.fixture(scope="module")
def trained(tok_dir, wikitext, tmp_path_factory):
    """A tiny model (V = the test tokenizer's 384) trained 30 steps on DSL SNRs, saved with its tokenizer,
    and the held-out documents."""
    from transformers import AutoTokenizer

    from modeling_dsl.noise_dsl import SNRSampler

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    model = tiny_model(seed=0, vocab_size=len(tokenizer), max_position_embeddings=32)
    rows = pack_documents(paragraphs(wikitext[0])[:200], tokenizer, 32)
    data = torch.tensor([r for r in rows if len(r) == 32])
    sampler, g = SNRSampler.from_config(model.config), torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is many times faster on a shared 2-core machine
    for step in range(30):
        ids = data[torch.randint(len(data), (8,), generator=g)]
        loss = model(input_ids=ids, snr=sampler.sample(*ids.shape, generator=g), labels=ids, generator=g).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    model.eval()
    folder = tmp_path_factory.mktemp("lik_model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    held_out = [p[:400] for p in paragraphs(wikitext[1])][:4]
    return model, tokenizer, folder, held_out


def small_options(**kw):
    fields = dict(estimators=("dsl", "roar", "mdlm"), num_nodes=6, repeats=2, seed=0)
    fields.update(kw)
    return LikelihoodOptions(**fields)


def test_bounds_on_a_trained_model_are_finite_seeded_and_consistent(trained, single_thread):
    model, tokenizer, _, docs = trained
    rows = pack_documents(docs, tokenizer, 32)
    n_chars = sum(len(d) for d in docs)
    first = evaluate_likelihood(model, rows, n_chars, small_options(), batch_size=8, show_progress=False)
    again = evaluate_likelihood(model, rows, n_chars, small_options(), batch_size=8, show_progress=False)
    other = evaluate_likelihood(model, rows, n_chars, small_options(seed=1), batch_size=8, show_progress=False)
    assert first == again
    # tokens and characters counted on the data itself: BOS/EOS wrap + one EOS per document
    n_tokens = sum(len(ids) for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]) + len(docs) \
        + 2 * len(rows)
    for name, r in first.items():
        assert r["tokens"] == n_tokens and r["chars"] == n_chars
        assert math.isfinite(r["nats_per_token"]) and r["nats_per_token"] > 0
        if name != "dsl":  # the discrete estimates of a trained model beat the uniform ln V
            assert r["nats_per_token"] < math.log(384)
        assert r["nats_per_token_se"] > 0 and r["nats_per_token_mc_se"] > 0
        assert r["bits_per_char"] == pytest.approx(r["nats_per_token"] * n_tokens / n_chars / math.log(2), rel=1e-12)
        assert r["perplexity"] == pytest.approx(math.exp(r["nats_per_token"]))
        assert other[name]["nats_per_token"] != r["nats_per_token"]
    dsl = first["dsl"]
    assert dsl["diffusion_nats_per_token"] + dsl["reconstruction_nats_per_token"] == pytest.approx(dsl["nats_per_token"])
    # ROAR and MDLM's ELBO estimate the same any-order quantity (module docstring of noise_dsl)
    roar, mdlm = first["roar"], first["mdlm"]
    gap = abs(roar["nats_per_token"] - mdlm["nats_per_token"])
    assert gap < 4 * math.hypot(roar["nats_per_token_se"], mdlm["nats_per_token_se"]), (roar, mdlm)


def test_ratio_standard_errors_by_hand():
    est = torch.tensor([[2.0, 6.0, 3.0], [4.0, 8.0, 3.0]], dtype=torch.float64)  # (R = 2, N = 3)
    tokens = torch.tensor([2.0, 4.0, 2.0], dtype=torch.float64)
    ratio, se, mc_se = ratio_and_errors(est, tokens)
    assert ratio == pytest.approx((3 + 7 + 3) / 8)
    residual = torch.tensor([3 - ratio * 2, 7 - ratio * 4, 3 - ratio * 2])
    assert se == pytest.approx(math.sqrt(float((residual ** 2).sum()) / 6) / (8 / 3))
    assert mc_se == pytest.approx(math.sqrt((2.0 + 2.0 + 0.0) / 2) / 8)


def test_documents_and_packing(tmp_path, trained):
    _, tokenizer, _, _ = trained
    text = tmp_path / "d.txt"
    text.write_text("first paragraph\nstill first\n\nsecond one\n\n\n", encoding="utf-8")
    assert read_documents(str(text)) == ["first paragraph\nstill first", "second one"]
    assert read_documents(str(text), sample_by="line") == ["first paragraph", "still first", "second one"]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"body": "a b"}\n{"body": "c"}\n', encoding="utf-8")
    assert read_documents(str(jsonl), text_column="body") == ["a b", "c"]
    with pytest.raises(ValueError, match="no column 'text'"):
        read_documents(str(jsonl))
    docs = ["hello world " * 5, "the album was released"]
    rows = pack_documents(docs, tokenizer, 8)
    stream = [t for ids in tokenizer(docs, add_special_tokens=False)["input_ids"] for t in ids + [tokenizer.eos_token_id]]
    assert all(len(r) <= 8 for r in rows) and len(rows[-1]) < 8  # the tail row is kept
    assert [t for r in rows for t in r[1:-1]] == stream  # nothing lost
    plain = pack_documents(docs, tokenizer, 8, wrap=False)
    assert [t for r in plain for t in r] == [t for t in stream if t != tokenizer.eos_token_id]
    assert all(len(r) == 8 for r in plain[:-1])


def test_default_estimators_follow_the_training_objective(trained):
    model = trained[0]
    assert default_estimators(model.config) == ("dsl", "roar")
    config = model.config.__class__.from_dict({**model.config.to_dict(), "training_objective": "mdlm"})
    assert default_estimators(config) == ("mdlm", "roar")


# ----------------------------------------------------------------------------- the CLI


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "eval_likelihood.py"), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_cli_help_errors_and_a_run(trained, tmp_path):
    _, _, folder, docs = trained
    data = tmp_path / "held_out.txt"
    data.write_text("\n\n".join(docs[:3]), encoding="utf-8")
    help_ = run_cli("--help")
    assert help_.returncode == 0 and "--estimators" in help_.stdout and "--path" in help_.stdout
    missing_model = run_cli("--model", tmp_path / "no_model", "--data", data, "--output_dir", tmp_path / "o1")
    assert missing_model.returncode == 2 and "no_model" in missing_model.stderr and "error:" in missing_model.stderr
    missing_data = run_cli("--model", folder, "--data", tmp_path / "nothing.txt", "--output_dir", tmp_path / "o2")
    assert missing_data.returncode == 2 and "--data: no such file" in missing_data.stderr
    out = tmp_path / "lik"
    ok = run_cli("--model", folder, "--data", data, "--output_dir", out, "--num_nodes", "2", "--repeats", "2",
                 "--max_documents", "1", "--no_progress")
    assert ok.returncode == 0, ok.stderr[-3000:]
    report = json.loads((out / "likelihood.json").read_text())
    assert set(report["results"]) == {"dsl", "roar"} and report["environment"]["packages"]["torch"]
    assert "| dsl |" in (out / "likelihood.md").read_text()
    # the model card reads this file's rows with their estimator and data set
    from model_cards.render import collect_eval_results

    rows = [r for r in collect_eval_results(extra={"likelihood": out / "likelihood.json"}) if r["metric"] == "nll"]
    assert sorted(r["setting"] for r in rows) == ["estimator=dsl", "estimator=roar"]
    assert {r["dataset"] for r in rows} == {"held_out.txt"}
    assert {r["value"] for r in rows} == {report["results"][e]["nats_per_token"] for e in ("dsl", "roar")}


def test_cli_argument_checks(trained, tmp_path, capsys):
    from scripts.eval_likelihood import main

    _, _, folder, _ = trained
    data = tmp_path / "d.txt"
    data.write_text("some text\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["--model", str(folder), "--data", str(data), "--output_dir", str(out), "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(folder), "--data", str(data), "--output_dir", str(out), "--path", "zigzag"])
    assert exit_.value.code == 2 and "invalid choice: 'zigzag'" in capsys.readouterr().err
    out.mkdir()
    (out / "likelihood.json").write_text("{}")
    assert main(["--model", str(folder), "--data", str(data), "--output_dir", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
