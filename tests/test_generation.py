"""DSLGenerationConfig and DSLForDiffusionLM.generate(): batching, EOS, streamers, config I/O, CLI."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from modeling_dsl import DSLConfig, DSLForDiffusionLM, DSLGenerationConfig

REPO = Path(__file__).resolve().parents[1]
V = 50


def tiny_model(seed=0, vocab=V, **kw):
    """A tiny model with every weight random (MDLM's init starts adaLN and the head at zero)."""
    torch.manual_seed(seed)
    base = dict(vocab_size=vocab, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, cond_dim=16,
                max_position_embeddings=64, noise_dim=8, mask_token_id=vocab, dropout=0.0)
    base.update(kw)
    model = DSLForDiffusionLM(DSLConfig(**base))
    with torch.no_grad():
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.15)  # p_θ far from one-hot: draws vary
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
    out = model.generate(eos_token_id=eos, pad_token_id=V - 1, **kw)
    for row_plain, row in zip(plain, out):
        hits = (row_plain == eos).nonzero()
        if hits.numel() == 0:
            assert torch.equal(row, row_plain)
            continue
        first = int(hits[0])
        assert torch.equal(row[: first + 1], row_plain[: first + 1])
        assert (row[first + 1:] == V - 1).all()


def test_stop_at_eos_ends_block_decoding_early(model):
    kw = dict(strategy="low_confidence", steps=8, gen_length=16, block_length=4, seed=5)
    full = model.generate(return_dict_in_generate=True, **kw)
    eos = int(full.sequences[0, 2])  # a token decoded in the first block
    first_eos = int((full.sequences[0] == eos).nonzero()[0])
    stopped = model.generate(return_dict_in_generate=True, eos_token_id=eos, pad_token_id=0, stop_at_eos=True, **kw)
    assert stopped.nfe == 2 < full.nfe == 8  # stopped after the first block (2 steps)
    assert torch.equal(stopped.sequences[0, : first_eos + 1], full.sequences[0, : first_eos + 1])
    assert (stopped.sequences[0, first_eos + 1:] == 0).all()


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
    out = model.generate(prompt, streamer=streamer, eos_token_id=eos, **kw)
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
    assert out.diagnostics is not None and out.nfe >= 1
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
    (dict(gen_length=10, block_length=4), "block_length"),
    (dict(strategy="low_confidence", gen_length=8, block_length=2, steps=6), "steps"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(temperature=-1.0), "temperature"),
    (dict(strategy="mdlm", temperature=0.0), "temperature"),
    (dict(remdm_mode="loopy"), "remdm_mode"),
    (dict(eta=1.5), "eta"),
    (dict(t_on=0.1, t_off=0.2), "t_off"),
    (dict(alpha_on=1.0), "alpha_on"),
    (dict(integrator="rk4"), "integrator"),
    (dict(snr_schedule="cosine"), "snr_schedule"),
    (dict(snr_min=0.0), "snr_min"),
    (dict(snr_min=5.0, snr_max=2.0), "snr_max"),
    (dict(noise_scale=-0.1), "noise_scale"),
    (dict(strategy="hybrid", steps=4, switch_steps=4), "switch_steps"),
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
    import importlib.abc, json, sys
    import torch

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_dsl", "trainers"):
                raise ImportError("blocked: " + name)

    sys.meta_path.insert(0, Block())
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


def test_generation_config_round_trips_through_remote_code(tmp_path):
    model = tiny_model(seed=1)
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
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, str(script), str(folder)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
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
    for flag in ("--strategy", "--steps", "--prompt", "--prompts-file", "--num-samples", "--plot-diagnostics"):
        assert flag in proc.stdout


def test_cli_generates_text_and_plots_diagnostics(tmp_path, shared_dir):
    tokenizer_dir = shared_dir / "tokenizers" / "gpt2"
    if not tokenizer_dir.is_dir():
        pytest.skip("GPT-2 tokenizer not in ../shared")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model(vocab=len(tokenizer), max_position_embeddings=32)
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
