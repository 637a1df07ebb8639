"""DSLGenerationConfig and DSLForDiffusionLM.generate(): batching, EOS, streamers, config I/O, CLI."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import TINY, tiny_model
from modeling_dsl import DSLConfig, DSLForDiffusionLM, DSLGenerationConfig

REPO = Path(__file__).resolve().parents[1]
V = TINY["vocab_size"]
WEIGHT_STD = 0.15  # p_θ far from one-hot: draws vary


@pytest.fixture(scope="module")
def model():
    return tiny_model(weight_std=WEIGHT_STD)


pytestmark = pytest.mark.usefixtures("single_thread")


STRATEGY_KWARGS = {
    "sde": dict(steps=6, integrator="heun", snr_schedule="linear", snr_max=3.0, noise_scale=0.5, posterior_top_k=10),
    "mdlm": dict(steps=10, top_p=0.9),
    "remdm_cap": dict(strategy="remdm", steps=10, remdm_mode="cap", eta=0.05),
    "remdm_conf": dict(strategy="remdm", steps=10, remdm_mode="conf"),
    "remdm_loop": dict(strategy="remdm", steps=12, remdm_mode="loop", eta=0.05),
    "hybrid_lc": dict(strategy="hybrid", steps=8, switch_snr=2.0, switch_steps=3, temperature=1.0,
                      hybrid_threshold=0.5),
    "hybrid_remdm": dict(strategy="hybrid", steps=8, switch_snr=2.0, hybrid_finish="remdm", remdm_mode="rescale",
                         hybrid_threshold=0.5),
    "low_confidence": dict(steps=4, block_length=4, temperature=1.0, top_k=20),
    "low_confidence_cfg_random": dict(strategy="low_confidence", steps=8, block_length=2, temperature=0.7,
                                      cfg_scale=1.5, remasking="random"),
    "roar": dict(steps=4, temperature=0.8),
}


def kwargs_for(name):
    kw = dict(STRATEGY_KWARGS[name])
    kw.setdefault("strategy", name)
    return kw


@pytest.mark.parametrize("name", sorted(STRATEGY_KWARGS))
def test_batched_rows_equal_rows_generated_alone(model, name):
    prompts = [[5, 6, 7, 8, 9], [11], [30, 31], [20, 21, 22]]
    longest = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):  # left padding, as a tokenizer would give for generation
        ids[r, longest - len(p):] = torch.tensor(p)
        mask[r, longest - len(p):] = 1
    kw = dict(kwargs_for(name), gen_length=8, seed=100, output_diagnostics=True, return_dict_in_generate=True)
    out = model.generate(ids, mask, **kw)
    assert out.sequences.shape == (4, longest + 8)
    for r, p in enumerate(prompts):
        assert out.sequences[r, longest - len(p):longest].tolist() == p  # prompt untouched
        assert out.attention_mask[r].tolist() == [0] * (longest - len(p)) + [1] * (len(p) + 8)
        alone = model.generate(torch.tensor([p]), **dict(kw, seed=100 + r))
        assert torch.equal(alone.sequences[0, -8:], out.sequences[r, -8:]), (name, r)
        # The continuous trajectory too (the SDE's final argmax alone hides it): same entropies.
        torch.testing.assert_close(alone.diagnostics["H_t"][:, 0], out.diagnostics["H_t"][:, r], atol=1e-4, rtol=0,
                                   equal_nan=True)
    generated = out.sequences[:, longest:]
    assert ((generated >= 0) & (generated < V)).all()  # no mask ids left
    if name != "sde":  # the tiny model's SDE localises every position on one token
        assert generated.unique().numel() >= 5  # a non-degenerate test: the rows really sample


def test_seed_reproducibility_and_distinct_unconditional_rows(model):
    a = model.generate(strategy="mdlm", steps=8, gen_length=10, seed=7, num_return_sequences=3)
    b = model.generate(strategy="mdlm", steps=8, gen_length=10, seed=7, num_return_sequences=3)
    c = model.generate(strategy="mdlm", steps=8, gen_length=10, seed=8, num_return_sequences=3)
    assert a.shape == (3, 10) and torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    assert torch.equal(a[1], c[0])  # row r uses seed + r
    assert torch.equal(a[2], model.generate(strategy="mdlm", steps=8, gen_length=10, seed=9)[0])
    torch.manual_seed(0)
    d = model.generate(strategy="mdlm", steps=8, gen_length=10)
    torch.manual_seed(0)
    assert torch.equal(d, model.generate(strategy="mdlm", steps=8, gen_length=10))


def test_generate_restores_training_mode_and_runs_eval(model):
    model.train()
    try:
        a = model.generate(strategy="roar", steps=4, gen_length=4, seed=1)
        assert model.training
    finally:
        model.eval()
    assert torch.equal(a, model.generate(strategy="roar", steps=4, gen_length=4, seed=1))


def test_tokens_after_the_first_eos_are_replaced_by_pad(model):
    kw = dict(strategy="roar", steps=12, gen_length=12, seed=3, num_return_sequences=4)
    plain = model.generate(**kw)
    eos = int(plain[0, 4])
    out = model.generate(eos_token_id=eos, pad_token_id=V - 1, truncate_at_eos=True, **kw)
    for row_plain, row in zip(plain, out):
        hits = (row_plain == eos).nonzero()
        if hits.numel() == 0:
            assert torch.equal(row, row_plain)
            continue
        first = int(hits[0])
        assert torch.equal(row[: first + 1], row_plain[: first + 1])
        assert (row[first + 1:] == V - 1).all()


@pytest.mark.parametrize("strategy", ["low_confidence", "hybrid"])
def test_stop_at_eos_ends_block_decoding_early(model, strategy):
    kw = dict(strategy=strategy, steps=8, gen_length=16, block_length=4, seed=5)
    if strategy == "hybrid":  # SDE: 4 steps; the low_confidence finish: 4 steps over 4 blocks
        kw.update(switch_steps=4, switch_snr=2.0, hybrid_threshold=1.0)
    prompt = torch.tensor([[7]])
    full = model.generate(prompt, return_dict_in_generate=True, **kw)
    eos = int(full.sequences[0, 3])  # a token decoded in the first block
    first_eos = 1 + int((full.sequences[0, 1:] == eos).nonzero()[0])
    pad = 0 if eos != 0 else 1
    stopped = model.generate(prompt, return_dict_in_generate=True, eos_token_id=eos, pad_token_id=pad,
                             stop_at_eos=True, truncate_at_eos=True, **kw)
    block_nfe = 2 if strategy == "low_confidence" else 1
    assert stopped.nfe == full.nfe - 3 * block_nfe  # stopped after the first block
    assert torch.equal(stopped.sequences[0, : first_eos + 1], full.sequences[0, : first_eos + 1])
    assert (stopped.sequences[0, first_eos + 1:] == pad).all()


def test_unprompted_rows_ignore_an_eos_at_the_first_generated_position(model):
    """MDLM-style training rows start with BOS = EOS: an unconditional sample's first token is
    not an end of text. A prompted row's first generated EOS is."""
    kw = dict(strategy="roar", steps=10, gen_length=10, roar_order="left_to_right", top_k=1, seed=0)
    plain = model.generate(**kw)[0]
    kw["truncate_at_eos"] = True  # not the default any more
    eos = int(plain[0])
    later = [i for i in range(1, 10) if int(plain[i]) == eos]
    out = model.generate(eos_token_id=eos, pad_token_id=V - 1, **kw)[0]
    cut = later[0] + 1 if later else 10
    assert torch.equal(out[:cut], plain[:cut]) and (out[cut:] == V - 1).all()
    assert cut > 1
    # Prompted: the first generated token is the EOS and cuts the rest.
    prompt = torch.tensor([[3, 4]])
    first = int(model.generate(prompt, **kw)[0, 2])
    cut_out = model.generate(prompt, eos_token_id=first, pad_token_id=V - 1, **kw)[0]
    assert int(cut_out[2]) == first and (cut_out[3:] == V - 1).all()
    # No pad id: the tail is padded with the EOS id.
    no_pad = model.generate(eos_token_id=eos, **kw)[0]
    assert torch.equal(no_pad[:cut], plain[:cut]) and (no_pad[cut:] == eos).all()


NFE_CASES = [
    # T integration steps + the final decode (Euler), 2T + 1 (Heun)
    (dict(strategy="sde", steps=6), 7),
    (dict(strategy="sde", steps=6, integrator="heun"), 13),
    # hybrid: c·S SDE evaluations + 1 draft decode + (T − c·S) finish steps = T + 1
    (dict(strategy="hybrid", steps=8, switch_steps=3, switch_snr=2.0), 9),
    (dict(strategy="hybrid", steps=8, switch_steps=2, switch_snr=2.0, integrator="heun"), 9),
    (dict(strategy="hybrid", steps=8, switch_snr=2.0), 9),  # default S = steps // 4
    (dict(strategy="low_confidence", steps=4), 4),
    (dict(strategy="low_confidence", steps=4, cfg_scale=1.0), 8),
    (dict(strategy="roar", steps=4), 4),
]


@pytest.mark.parametrize("kwargs,nfe", NFE_CASES)
def test_nfe_follows_the_documented_step_budget(model, kwargs, nfe):
    out = model.generate(torch.tensor([[1, 2]]), gen_length=8, seed=0, return_dict_in_generate=True, **kwargs)
    assert out.nfe == nfe


def test_remdm_nfe_is_at_most_steps_plus_one(model):
    for kw in (dict(strategy="remdm", steps=20), dict(strategy="hybrid", hybrid_finish="remdm", steps=8,
                                                       switch_snr=2.0)):
        out = model.generate(gen_length=8, seed=0, return_dict_in_generate=True, **kw)
        limit = kw["steps"] + (1 if kw["strategy"] == "remdm" else 2)
        assert 1 <= out.nfe <= limit


def test_warns_about_explicit_arguments_the_strategy_ignores(model, caplog):
    kw = dict(gen_length=4, steps=2, seed=0)
    with caplog.at_level("WARNING"):
        model.generate(strategy="sde", temperature=0.5, block_length=2, **kw)
    text = caplog.text
    assert "temperature" in text and "block_length" in text and "'sde'" in text
    caplog.clear()
    with caplog.at_level("WARNING"):
        model.generate(strategy="mdlm", stop_at_eos=True, **kw)
    assert "stop_at_eos" in caplog.text and "'mdlm'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        # Used fields, default values, and fields carried by a saved config: no warning.
        model.generate(strategy="low_confidence", block_length=2, stop_at_eos=True, cfg_scale=0.5, **kw)
        model.generate(strategy="sde", cfg_scale=0.0, remdm_mode="loop", **kw)
        saved = DSLGenerationConfig(strategy="low_confidence", block_length=2, temperature=0.7, cfg_scale=1.0)
        model.generate(generation_config=saved, strategy="sde", **kw)
        model.generate(strategy="remdm", remdm_mode="loop", t_on=0.6, **kw)
    assert "ignored" not in caplog.text
    with caplog.at_level("WARNING"):
        model.generate(strategy="remdm", remdm_mode="cap", t_on=0.6, **kw)
    assert "t_on" in caplog.text


def test_validate_checks_only_what_the_strategy_uses():
    DSLGenerationConfig(strategy="sde", gen_length=10, block_length=4)
    DSLGenerationConfig(strategy="remdm", remdm_mode="cap", t_on=0.1, t_off=0.2)
    DSLGenerationConfig(strategy="low_confidence", t_on=0.1, t_off=0.2)
    DSLGenerationConfig(strategy="hybrid", hybrid_finish="remdm", gen_length=10, block_length=4)
    DSLGenerationConfig(strategy="hybrid", steps=8, switch_steps=2, gen_length=8, block_length=4)


def test_sampling_options_reach_the_samplers(model):
    prompt = torch.tensor([[5, 6, 7]])
    gen = lambda **kw: model.generate(prompt, gen_length=8, **kw)[0, 3:]  # noqa: E731
    lc = dict(strategy="low_confidence", steps=8)
    # top_p → 0 keeps only the top token: sampling at T = 1 becomes the greedy (T = 0) decode.
    assert torch.equal(gen(**lc, temperature=1.0, top_p=1e-6, seed=1), gen(**lc, temperature=0.0, seed=2))
    assert not torch.equal(gen(**lc, temperature=1.0, seed=1), gen(**lc, temperature=0.0, seed=1))
    roar = dict(strategy="roar", steps=8)
    assert torch.equal(gen(**roar, top_p=1e-6, seed=3), gen(**roar, top_k=1, seed=3))
    assert not torch.equal(gen(**roar, seed=3), gen(**roar, top_k=1, seed=3))
    # temperature: changes sampled decodes, not greedy low_confidence across seeds, not the SDE.
    assert not torch.equal(gen(strategy="mdlm", steps=8, temperature=0.3, seed=4),
                           gen(strategy="mdlm", steps=8, temperature=1.0, seed=4))
    assert torch.equal(gen(**lc, temperature=0.0, seed=5), gen(**lc, temperature=0.0, seed=6))
    # cfg_scale changes the prompted low_confidence decode: its distributions (the tiny model
    # barely attends to the prompt, so the entropies show it before the tokens do) and, at a
    # large scale, the tokens.
    lc_out = lambda **kw: model.generate(prompt, gen_length=8, **lc, temperature=1.0, seed=0,  # noqa: E731
                                         return_dict_in_generate=True, output_diagnostics=True, **kw)
    plain, guided = lc_out(), lc_out(cfg_scale=3.0)
    assert not torch.equal(plain.diagnostics["H_t"], guided.diagnostics["H_t"])  # bitwise equal if unwired
    assert not torch.equal(plain.sequences, lc_out(cfg_scale=50.0).sequences)
    # SDE: compare entropy traces (the tiny model's final argmax hides the trajectory).
    sde = dict(strategy="sde", steps=6, snr_max=3.0, return_dict_in_generate=True, output_diagnostics=True)
    trace = lambda **kw: model.generate(prompt, gen_length=8, **sde, **kw).diagnostics["H_t"]  # noqa: E731
    torch.testing.assert_close(trace(noise_scale=0.0, seed=1), trace(noise_scale=0.0, seed=2))
    assert not torch.allclose(trace(seed=1), trace(seed=2))
    assert not torch.allclose(trace(seed=1), trace(seed=1, posterior_top_k=1))
    torch.testing.assert_close(trace(seed=1, temperature=0.1), trace(seed=1))
    # remdm_mode and eta: remask ratios are 0 for η = 0 and positive otherwise; conf ignores η.
    remdm = dict(strategy="remdm", steps=16, return_dict_in_generate=True, output_diagnostics=True, seed=0)
    r_t = lambda **kw: model.generate(prompt, gen_length=8, **remdm, **kw).diagnostics["r_t"]  # noqa: E731
    assert torch.nan_to_num(r_t(remdm_mode="cap", eta=0.0)).max() == 0
    assert torch.nan_to_num(r_t(remdm_mode="rescale", eta=0.0)).max() == 0
    assert torch.nan_to_num(r_t(remdm_mode="rescale", eta=0.5)).max() > 0
    assert torch.nan_to_num(r_t(remdm_mode="conf", eta=0.0)).max() > 0


def test_hybrid_low_confidence_finish_gets_block_length_cfg_and_eos(model, monkeypatch):
    from modeling_dsl import sampling_dsl

    seen = {}
    original = sampling_dsl.low_confidence

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(sampling_dsl, "low_confidence", spy)
    model.generate(strategy="hybrid", steps=8, switch_steps=2, switch_snr=2.0, gen_length=8, block_length=4,
                   cfg_scale=1.5, temperature=0.5, eos_token_id=3, stop_at_eos=True, seed=0)
    assert (seen["block_length"], seen["cfg_scale"], seen["temperature"], seen["stop_at_eos"]) == (4, 1.5, 0.5, True)
    assert seen["eos_token_id"] == [3] and seen["steps"] == 6


class RecordingStreamer:
    def __init__(self, drafts=True):
        self.puts, self.drafts, self.ended = [], [], 0
        if not drafts:
            self.put_draft = None

    def put(self, value):
        self.puts.append(value.tolist())

    def put_draft(self, value):
        self.drafts.append(value.tolist())

    def end(self):
        self.ended += 1


def test_streamer_gets_prompt_final_tokens_in_order_drafts_and_end(model):
    prompt = torch.tensor([[3, 4, 5]])
    streamer = RecordingStreamer()
    out = model.generate(prompt, streamer=streamer, strategy="low_confidence", steps=6, gen_length=6,
                         block_length=2, seed=0)
    assert streamer.puts[0] == [3, 4, 5]
    assert sum(streamer.puts[1:], []) == out[0, 3:].tolist()
    assert len(streamer.puts) > 2  # block-wise decoding streams before the end
    assert len(streamer.drafts) == 6 and streamer.ended == 1
    assert streamer.drafts[-1] == out[0, 3:].tolist()

    kw = dict(strategy="remdm", steps=5, gen_length=6, seed=0)
    eos = int(model.generate(prompt, **kw)[0, 4])
    streamer = RecordingStreamer(drafts=False)
    out = model.generate(prompt, streamer=streamer, eos_token_id=eos, truncate_at_eos=True, **kw)
    streamed = sum(streamer.puts[1:], [])
    assert streamed[-1] == eos and eos not in streamed[:-1]
    assert streamed == out[0, 3: 3 + len(streamed)].tolist()
    with pytest.raises(ValueError, match="streamer"):
        model.generate(torch.tensor([[1], [2]]), streamer=RecordingStreamer(), strategy="mdlm", steps=2, gen_length=2)


def test_diagnostics_and_progress_bar(model):
    kw = dict(strategy="remdm", remdm_mode="rescale", eta=0.3, steps=12, gen_length=8, seed=2)
    out = model.generate(torch.tensor([[1, 2]]), return_dict_in_generate=True, output_diagnostics=True, **kw)
    d = out.diagnostics
    assert d["u_t"].shape == (12, 1) and d["rewrites"].shape == out.sequences.shape
    assert (d["rewrites"][:, :2] == 0).all()
    assert out.nfe <= 12 + 1  # ReMDM: at most one evaluation per step + the final greedy decode
    with_bar = model.generate(torch.tensor([[1, 2]]), progress_bar=True, **kw)
    assert torch.equal(with_bar, out.sequences)
    assert model.generate(torch.tensor([[1, 2]]), return_dict_in_generate=True, **kw).diagnostics is None


def test_correct_strategy_returns_changed_positions(model):
    ids = torch.tensor([[4, 8, 15, 16, 23, 42], [1, 1, 2, 3, 5, 8]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    out = model.generate(ids, mask, strategy="correct", steps=2, correct_snr=3.0, return_dict_in_generate=True)
    assert out.sequences.shape == ids.shape
    assert torch.equal(out.changed, (out.sequences != ids))
    assert torch.equal(out.sequences[1, :2], ids[1, :2]) and not out.changed[1, :2].any()
    assert out.changed.any()  # the random tiny model disagrees with these tokens


# ----------------------------------------------------------------------------- config


def test_generation_config_defaults_validation_and_file_round_trip(tmp_path):
    config = DSLGenerationConfig(strategy="remdm", steps=256, remdm_mode="loop", eta=0.02, top_p=0.9, seed=[1, 2])
    assert config.t_on == 0.55 and config.t_off == 0.05 and config.alpha_on == 0.9
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["strategy"] == "remdm" and saved["remdm_mode"] == "loop" and saved["seed"] == [1, 2]
    loaded = DSLGenerationConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, DSLGenerationConfig)
    for key in ("strategy", "steps", "remdm_mode", "eta", "top_p", "seed", "integrator", "hybrid_threshold"):
        assert getattr(loaded, key) == getattr(config, key), key
    with pytest.raises(NotImplementedError):
        DSLGenerationConfig.from_model_config(DSLConfig())
    assert isinstance(tiny_model().generation_config, DSLGenerationConfig)


BAD_ARGUMENTS = [
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(strategy="beam_search"), "strategy"),
    (dict(strategy="low_confidence", gen_length=10, block_length=4), "block_length"),
    (dict(strategy="hybrid", gen_length=10, block_length=4), "block_length"),
    (dict(strategy="low_confidence", gen_length=8, block_length=2, steps=6), "steps"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(temperature=-1.0), "temperature"),
    (dict(strategy="mdlm", temperature=0.0), "temperature"),
    (dict(remdm_mode="loopy"), "remdm_mode"),
    (dict(eta=1.5), "eta"),
    (dict(strategy="remdm", remdm_mode="loop", t_on=0.1, t_off=0.2), "t_off"),
    (dict(strategy="hybrid", hybrid_finish="remdm", remdm_mode="loop", t_on=0.1, t_off=0.2), "t_off"),
    (dict(alpha_on=1.0), "alpha_on"),
    (dict(integrator="rk4"), "integrator"),
    (dict(snr_schedule="cosine"), "snr_schedule"),
    (dict(snr_min=0.0), "snr_min"),
    (dict(snr_min=5.0, snr_max=2.0), "snr_max"),
    (dict(noise_scale=-0.1), "noise_scale"),
    (dict(strategy="hybrid", steps=4, switch_steps=4), "switch_steps"),
    (dict(strategy="hybrid", integrator="heun", steps=4, switch_steps=2), "switch_steps"),
    (dict(strategy="hybrid", steps=8, switch_steps=3, gen_length=8, block_length=4), "steps"),
    (dict(seed=-3), "seed"),
    (dict(roar_tokens_per_step=0), "roar_tokens_per_step"),
    (dict(hybrid_finish="sde"), "hybrid_finish"),
    (dict(remasking="entropy"), "remasking"),
]


@pytest.mark.parametrize("kwargs,name", BAD_ARGUMENTS)
def test_bad_arguments_raise_value_errors_naming_the_argument(model, kwargs, name):
    with pytest.raises(ValueError, match=name):
        DSLGenerationConfig(**kwargs)
    with pytest.raises(ValueError, match=name):
        model.generate(**kwargs)


def test_bad_generate_inputs_raise_value_errors(model):
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(torch.zeros(1, 60, dtype=torch.long), gen_length=8, steps=2, strategy="mdlm")
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(torch.zeros(1, 70, dtype=torch.long), strategy="correct")
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(torch.tensor([[V + 3]]), gen_length=2, steps=2, strategy="mdlm")
    with pytest.raises(ValueError, match="unknown generate"):
        model.generate(gen_length=2, steps=2, strategy="mdlm", not_an_option=1)
    with pytest.raises(ValueError, match="seed"):
        model.generate(torch.tensor([[1], [2]]), gen_length=2, steps=2, strategy="mdlm", seed=[1, 2, 3])
    with pytest.raises(ValueError, match="switch_snr"):
        model.generate(gen_length=2, steps=4, strategy="hybrid", switch_snr=0.005)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json
    import torch
    from transformers import AutoModel

    folder = sys.argv[1]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    config = model.generation_config
    out = model.generate(torch.tensor([[3, 4, 5]]))
    try:
        import modeling_dsl  # noqa: F401
        importable = True
    except ImportError:
        importable = False
    print(json.dumps({
        "class": type(config).__name__, "module": type(model).__module__, "strategy": config.strategy,
        "remdm_mode": config.remdm_mode, "steps": config.steps, "gen_length": config.gen_length,
        "seed": config.seed, "tokens": out.tolist(), "package_importable": importable,
    }))
    """
)


def test_generation_config_round_trips_through_remote_code(tmp_path, run_without_package):
    model = tiny_model(seed=1, weight_std=WEIGHT_STD)
    model.generation_config = DSLGenerationConfig(strategy="remdm", remdm_mode="loop", eta=0.05, steps=9,
                                                  gen_length=6, seed=11, top_p=0.9)
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    assert {"generation_dsl.py", "sampling_dsl.py", "generation_config.json"} <= set(os.listdir(folder))
    reloaded = DSLForDiffusionLM.from_pretrained(folder).eval()
    assert reloaded.generation_config.strategy == "remdm" and reloaded.generation_config.steps == 9
    expected = reloaded.generate(torch.tensor([[3, 4, 5]]), strategy="remdm", remdm_mode="loop", eta=0.05,
                                 steps=9, gen_length=6, seed=11, top_p=0.9)
    other = reloaded.generate(torch.tensor([[3, 4, 5]]), strategy="mdlm", steps=9, gen_length=6, seed=11)
    report = run_without_package(REMOTE_SCRIPT, folder)
    assert report["class"] == "DSLGenerationConfig" and "transformers_modules" in report["module"]
    assert not report["package_importable"]
    assert (report["strategy"], report["remdm_mode"], report["steps"], report["gen_length"], report["seed"]) == (
        "remdm", "loop", 9, 6, 11)
    assert report["tokens"] == expected.tolist()
    assert len(report["tokens"][0]) == 3 + 6
    assert report["tokens"] != other.tolist()  # the saved strategy, not the default, was used


# ----------------------------------------------------------------------------- CLI


def test_cli_help():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "generate.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for flag in ("--strategy", "--steps", "--prompt", "--prompts-file", "--num-samples", "--plot-diagnostics",
                 "--cfg-scale", "--switch-steps", "--stop-at-eos", "--truncate-at-eos"):
        assert flag in proc.stdout


def test_cli_generates_text_and_plots_diagnostics(tmp_path, tok_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tokenizer.pad_token = None  # like GPT-2's: the CLI pads with the EOS token
    model = tiny_model(weight_std=WEIGHT_STD, vocab_size=len(tokenizer), max_position_embeddings=32)
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello world\nThe cat\n")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "scripts" / "generate.py"), str(folder), "--strategy", "low_confidence",
           "--steps", "4", "--gen-length", "8", "--block-length", "4", "--prompts-file", str(prompts),
           "--num-samples", "2", "--plot-diagnostics", str(tmp_path / "diag.png"), "--output",
           str(tmp_path / "out.jsonl"), "--device", "cpu", "--batch-size", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["Hello world", "Hello world", "The cat", "The cat"]
    assert all(isinstance(r["text"], str) and r["text"] for r in records)
    png = (tmp_path / "diag.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
