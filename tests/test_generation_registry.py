"""The strategy and field tables of generation_dsl: CLI flags, per-strategy defaults, EOS handling,
model-side decoding fields, validation and unused-argument warnings (issue 12)."""

import importlib.util
import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model
from transformers import GenerationConfig

from modeling_dsl import DSLGenerationConfig
from modeling_dsl import generation_dsl as gd
from modeling_dsl.sampling_dsl import SamplerOutput

REPO = Path(__file__).resolve().parents[1]
V = 50
FILL = 7  # what the stub samplers write at generated positions


def load_cli():
    spec = importlib.util.spec_from_file_location("generate_cli", REPO / "scripts" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def spied(monkeypatch):
    """Replace every strategy's sampler by a stub that records its keywords and writes FILL (or
    `spied.tokens`) at the generated positions, and record Denoiser.from_model's arguments."""
    record = SimpleNamespace(calls={}, denoiser=[], tokens=None)

    def make_stub(name):
        def stub(denoiser, tokens, mask, **kwargs):
            record.calls[name] = kwargs
            out = tokens.clone()
            out[mask] = FILL if record.tokens is None else record.tokens[0].repeat(tokens.shape[0])
            return SamplerOutput(out, {}, 1, changed=torch.zeros_like(mask))

        return stub

    for name, row in list(gd.STRATEGIES.items()):
        monkeypatch.setitem(gd.STRATEGIES, name, replace(row, sampler=make_stub(name)))
    monkeypatch.setattr(gd.Denoiser, "from_model",
                        lambda model, mask=None, **kw: record.denoiser.append(kw) or "denoiser")
    return record


# ----------------------------------------------------------------------------- CLI (Seams)


def example_value(name):
    """A value of field `name` other than its default, valid with gen_length=4, steps=8."""
    f = gd.FIELDS[name]
    if f.choices:
        return [c for c in f.choices if c != f.default][0]
    if f.type is bool:
        return not f.default
    return 2 if f.type is int else 0.5


def test_every_generation_field_has_a_cli_flag_that_reaches_generate(capsys):
    cli = load_cli()
    # Every field DSLGenerationConfig adds to GenerationConfig, and the HF draw fields, are in the table.
    added = set(DSLGenerationConfig().to_dict()) - set(GenerationConfig().to_dict())
    assert added | {"temperature", "top_p", "top_k"} <= set(gd.FIELDS)
    flagged = [n for n in gd.FIELDS if n not in cli.SCRIPT_FIELDS]
    assert set(cli.SCRIPT_FIELDS) == {"seed", "output_diagnostics"}  # --seed and --plot-diagnostics
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    help_text = capsys.readouterr().out
    argv = ["ckpt"]
    for name in flagged:
        flag, value = cli.field_flag(name), example_value(name)
        assert flag in help_text, flag
        single = [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
        assert cli.overrides(cli.parse_args(["ckpt"] + single)) == {name: value}, name
        argv += single
    assert cli.overrides(cli.parse_args(["ckpt"])) == {}  # unset flags keep the checkpoint's values
    assert cli.overrides(cli.parse_args(["ckpt", "--top-p", "none"])) == {"top_p": None}

    calls = []

    class StubModel:
        generation_config = DSLGenerationConfig()
        config = SimpleNamespace(eos_token_id=None)

        def generate(self, **kwargs):
            calls.append(kwargs)
            seqs = torch.tensor([[1, 2, 3]] * kwargs["num_return_sequences"])
            return SimpleNamespace(sequences=seqs, attention_mask=torch.ones_like(seqs), nfe=1, diagnostics=None)

    tokenizer = SimpleNamespace(eos_token_id=0, decode=lambda ids, skip_special_tokens: "text")
    cli.generate_texts(StubModel(), tokenizer, cli.parse_args(argv + ["--seed", "4", "--num-samples", "2"]), [None])
    (kwargs,) = calls
    for name in flagged:
        assert kwargs[name] == example_value(name), name
    assert kwargs["seed"] == [4, 5] and kwargs["eos_token_id"] == 0


def test_a_new_table_row_drives_validation_dispatch_warnings_and_cli(model, monkeypatch, caplog):
    """Adding a sampler is one row (plus the field's choices, which follow the table at import)."""
    seen = {}

    def greedy(denoiser, tokens, mask, **kwargs):
        seen.update(kwargs)
        return SamplerOutput(tokens.masked_fill(mask, FILL), {}, 1)

    row = gd.Strategy(greedy, kwargs={"steps": "steps", "top_k": "top_k"}, defaults={"top_k": 1})
    monkeypatch.setitem(gd.STRATEGIES, "greedy", row)
    monkeypatch.setitem(gd.FIELDS, "strategy", replace(gd.FIELDS["strategy"], choices=tuple(gd.STRATEGIES)))
    monkeypatch.setattr(gd.Denoiser, "from_model", lambda model, mask=None, **kw: "denoiser")
    with caplog.at_level(logging.WARNING):
        out = model.generate(strategy="greedy", steps=3, gen_length=4, temperature=0.5, seed=0)
    assert out.tolist() == [[FILL] * 4]
    assert seen["steps"] == 3 and seen["top_k"] == 1 and "temperature" not in seen
    assert "temperature=0.5 is ignored by strategy='greedy'" in caplog.text
    assert "greedy" in load_cli().parse_args(["ckpt", "--strategy", "greedy"]).strategy


# ----------------------------------------------------------------------------- point 2: ReMDM defaults


def test_masked_samplers_default_to_loop_mode_and_nucleus_0_9(model, spied):
    assert DSLGenerationConfig().remdm_mode == "loop"
    kw = dict(gen_length=4, steps=8, seed=0)
    for strategy in ("mdlm", "remdm", "low_confidence", "roar"):
        model.generate(strategy=strategy, **kw)
    assert spied.calls["remdm"]["mode"] == "loop" and spied.calls["remdm"]["eta"] is None  # η_cap(T)
    assert spied.calls["remdm"]["top_p"] == 0.9 and spied.calls["mdlm"]["top_p"] == 0.9
    assert spied.calls["low_confidence"]["top_p"] is None and spied.calls["roar"]["top_p"] is None
    assert spied.calls["low_confidence"]["temperature"] == 0.0 and spied.calls["remdm"]["temperature"] == 1.0
    # hybrid: the finish's defaults.
    model.generate(strategy="hybrid", hybrid_finish="remdm", **kw)
    finish = spied.calls["hybrid"]["finish_kwargs"]
    assert finish["top_p"] == 0.9 and finish["mode"] == "loop" and "steps" not in finish
    model.generate(strategy="hybrid", **kw)
    assert spied.calls["hybrid"]["finish_kwargs"]["top_p"] is None
    # Explicit values win; top_p = 1.0 switches the nucleus off; the official modes stay selectable.
    model.generate(strategy="remdm", top_p=1.0, remdm_mode="cap", eta=0.008, **kw)
    assert (spied.calls["remdm"]["top_p"], spied.calls["remdm"]["mode"], spied.calls["remdm"]["eta"]) == (
        1.0, "cap", 0.008)
    model.generate(strategy="roar", top_p=0.5, **kw)
    assert spied.calls["roar"]["top_p"] == 0.5


# ----------------------------------------------------------------------------- point 4: EOS


def test_no_truncation_after_eos_unless_asked(model, spied):
    eos, pad = 3, V - 1
    spied.tokens = torch.tensor([[5, eos, 6, eos, 8]])
    kw = dict(strategy="mdlm", gen_length=5, steps=4, seed=0, eos_token_id=eos, pad_token_id=pad)
    assert DSLGenerationConfig().truncate_at_eos is False
    prompt = torch.tensor([[1, 2]])
    assert model.generate(prompt, **kw)[0, 2:].tolist() == [5, eos, 6, eos, 8]
    assert model.generate(prompt, truncate_at_eos=True, **kw)[0, 2:].tolist() == [5, eos, pad, pad, pad]
    # Never-decoded positions (a sampler that stopped early leaves the mask id) get the pad id.
    spied.tokens = torch.tensor([[5, eos, 6, V, V]])
    assert model.generate(prompt, **kw)[0, 2:].tolist() == [5, eos, 6, pad, pad]


def test_cli_keeps_text_after_eos_and_decodes_special_tokens_on_request(model, spied, capsys):
    cli = load_cli()
    eos = 3
    spied.tokens = torch.tensor([[5, eos, 6, 8]])
    decoded = []

    def decode(ids, skip_special_tokens):
        decoded.append(skip_special_tokens)
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i == eos))

    tokenizer = SimpleNamespace(eos_token_id=eos, decode=decode)
    base = ["ckpt", "--strategy", "mdlm", "--steps", "4", "--gen-length", "4"]
    records, _ = cli.generate_texts(model, tokenizer, cli.parse_args(base), [None])
    assert records[0]["text"] == "5 6 8" and decoded == [True]  # nothing cut; special tokens dropped
    records, _ = cli.generate_texts(model, tokenizer, cli.parse_args(base + ["--no-skip-special-tokens"]), [None])
    assert records[0]["text"] == "5 3 6 8" and decoded[-1] is False
    records, _ = cli.generate_texts(model, tokenizer, cli.parse_args(base + ["--truncate-at-eos"]), [None])
    assert records[0]["text"] == "5"  # cut after the EOS; the tail is padding with the EOS id
    with pytest.raises(SystemExit):
        cli.parse_args(base + ["--keep-after-eos"])


# ----------------------------------------------------------------------------- points 5, 6, 11: validation


BAD_FIELDS = [
    (dict(visible_snr=0.0), "visible_snr"),
    (dict(visible_snr=-5.0), "visible_snr"),
    (dict(beta=0.0), "beta"),
    (dict(beta=-1.0), "beta"),
    (dict(beta_scale=0.0), "beta_scale"),
    (dict(beta_scale=-2.0), "beta_scale"),
    (dict(beta=2.0, beta_scale=2.0), "beta and beta_scale"),
    (dict(diagnostics_positions="some"), "diagnostics_positions"),
    (dict(truncate_at_eos="yes"), "truncate_at_eos"),
    (dict(strategy="remdm", t_on=0.05), "t_off"),  # loop (t_off < t_on) is the default mode now
    (dict(suppress_token_ids=-1), "suppress_token_ids"),
    (dict(suppress_token_ids=[3, -1]), "suppress_token_ids"),
    (dict(suppress_token_ids=[]), "suppress_token_ids"),
    (dict(suppress_token_ids=[True]), "suppress_token_ids"),
    (dict(suppress_token_ids="7"), "suppress_token_ids"),
    (dict(compile="yes"), "compile"),
    (dict(compile=1), "compile"),
]


@pytest.mark.parametrize("kwargs,name", BAD_FIELDS)
def test_new_fields_are_validated(model, kwargs, name):
    with pytest.raises(ValueError, match=name):
        DSLGenerationConfig(**kwargs)
    with pytest.raises(ValueError, match=name):
        model.generate(gen_length=2, steps=2, **kwargs)


def test_visible_snr_beta_and_diagnostics_positions_reach_the_denoiser_and_every_sampler(model, spied):
    kw = dict(gen_length=4, steps=8, seed=0)
    model.generate(strategy="mdlm", **kw)
    assert spied.denoiser[-1] == dict(visible_snr=None, beta=None, beta_scale=1.0, compile=False)
    model.generate(strategy="sde", visible_snr=80.0, beta_scale=2.0, compile=True, **kw)
    assert spied.denoiser[-1] == dict(visible_snr=80.0, beta=None, beta_scale=2.0, compile=True)
    model.generate(strategy="correct", input_ids=torch.tensor([[1, 2, 3]]), beta=1.5, visible_snr=40.0, steps=2)
    assert spied.denoiser[-1] == dict(visible_snr=40.0, beta=1.5, beta_scale=1.0, compile=False)
    for strategy in gd.STRATEGIES:
        ids = torch.tensor([[1, 2, 3]]) if strategy == "correct" else None
        model.generate(ids, strategy=strategy, diagnostics_positions="all", **kw)
        assert spied.calls[strategy]["diagnostics_positions"] == "all", strategy
    model.generate(strategy="roar", **kw)
    assert spied.calls["roar"]["diagnostics_positions"] == "evaluated"


# ----------------------------------------------------------------------------- warnings


def test_unused_argument_warnings_follow_the_table(model, spied, caplog):
    kw = dict(gen_length=4, steps=8, seed=0)
    for strategy in gd.STRATEGIES:
        ids = torch.tensor([[1, 2, 3]]) if strategy == "correct" else None
        base = dict(kw, strategy=strategy) if strategy != "correct" else dict(strategy=strategy, steps=8)
        used = DSLGenerationConfig(strategy=strategy).used_fields()
        for name in gd.FIELDS:
            if name in base or name == "seed" or name == "token_inputs":  # "backbone" needs a LLaDA (test_llada)
                continue
            value = example_value(name)
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                model.generate(ids, **base, **{name: value})
            warned = f"{name}={value!r} is ignored" in caplog.text
            assert warned == (name not in used), (strategy, name)
    # The model-side fields are read by every strategy; "read by" names the readers.
    assert {"visible_snr", "beta", "beta_scale", "diagnostics_positions"} <= DSLGenerationConfig(
        strategy="correct").used_fields()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model.generate(strategy="mdlm", stop_at_eos=True, **kw)
    assert "read by: low_confidence, hybrid" in caplog.text or "read by: hybrid, low_confidence" in caplog.text


# ----------------------------------------------------------------------------- suppressed token ids


def test_suppress_token_ids_act_in_every_strategy_as_a_minus_inf_logit(monkeypatch):
    """generate(suppress_token_ids=[t]) equals generating with an LM head whose column t is −inf, for
    every strategy (the SDE's posterior mean and final decode included), and never outputs t."""
    model = tiny_model(weight_std=0.3)
    prompt = torch.tensor([[1, 2, 3]])
    head = model.logits_from_hidden
    for strategy in gd.STRATEGIES:
        if strategy == "correct":  # t: the token it writes into a text; then a text of t only
            kw = dict(strategy=strategy, steps=2)
            t = int(model.generate(torch.full((1, 8), 4), **kw).flatten().mode().values)
            text = torch.full((1, 8), t)
        else:
            text, kw = prompt, dict(strategy=strategy, steps=4, gen_length=8, seed=0)
        free = model.generate(text, **kw)[:, -8:]
        t = int(free.flatten().mode().values)
        suppressed = model.generate(text, suppress_token_ids=[t], **kw)[:, -8:]
        monkeypatch.setattr(model, "logits_from_hidden",
                            lambda h, t=t: head(h).index_fill(-1, torch.tensor([t]), -float("inf")))
        reference = model.generate(text, **kw)[:, -8:]
        monkeypatch.undo()
        assert (free == t).any(), strategy
        assert not (suppressed == t).any(), strategy
        assert torch.equal(suppressed, reference), strategy
    with pytest.raises(ValueError, match=r"suppress_token_ids must be token ids in \[0, vocab_size=50\)"):
        model.generate(prompt, gen_length=2, steps=2, suppress_token_ids=[3, 50])
    assert "suppress_token_ids" in DSLGenerationConfig(strategy="correct").used_fields()
    cli = load_cli()
    assert cli.overrides(cli.parse_args(["ckpt", "--suppress-token-ids", "5,7"])) == {"suppress_token_ids": [5, 7]}
