"""Issue 13: nothing silently wrong, nothing lost, every README command works as written.

One test per case of the issue: each failed (or passed silently) before the fix."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, TrainingArguments

from conftest import paragraphs, tiny_model
from modeling_dsl import DSLConfig, DSLForDiffusionLM

REPO = Path(__file__).resolve().parents[1]
SIZE = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, cond_dim=16, max_position_embeddings=64,
            noise_dim=8)
SIZE_OVERRIDES = ",".join(f"{k}={v}" for k, v in SIZE.items())


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_reliability", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cp():
    return load_script("continue_pretrain")


@pytest.fixture(scope="module")
def gen():
    return load_script("generate")


@pytest.fixture(scope="module")
def train_file(wikitext, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.txt"
    path.write_text("\n".join(paragraphs(wikitext[0])[:200]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def checkpoint(tok_dir, tmp_path_factory):
    """A saved tiny model (V = the 384-token BPE, 64 positions) with its tokenizer."""
    folder = tmp_path_factory.mktemp("ckpt")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tiny_model(vocab_size=len(tokenizer), weight_std=0.3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cp_args(cp, out, tok_dir, train_file, *extra):
    return cp.parse_args(["--tokenizer_name", str(tok_dir), "--train_file", str(train_file), "--block_size", "32",
                          "--output_dir", str(out), "--report_to", "none", *extra])


# ----------------------------------------------------------------------------- data loss


def test_continue_pretrain_refuses_a_non_empty_output_dir(cp, tok_dir, train_file, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"finished run")
    (out / "checkpoint-10").mkdir()
    model_args, _, training_args = cp_args(cp, out, tok_dir, train_file, "--config_overrides", SIZE_OVERRIDES)
    with pytest.raises(ValueError, match="--output_dir .* is not empty .*--overwrite_output_dir.*--resume_from_checkpoint"):
        cp.check_output_dir_arguments(model_args, training_args)
    assert (out / "model.safetensors").read_bytes() == b"finished run"
    # resuming from it is allowed and touches nothing
    model_args, _, training_args = cp_args(cp, out, tok_dir, train_file, "--config_overrides", SIZE_OVERRIDES,
                                           "--resume_from_checkpoint", "latest")
    cp.check_output_dir_arguments(model_args, training_args)
    assert (out / "checkpoint-10").is_dir()
    # --overwrite_output_dir replaces it: no old checkpoint stays beside the new model
    model_args, _, training_args = cp_args(cp, out, tok_dir, train_file, "--config_overrides", SIZE_OVERRIDES,
                                           "--overwrite_output_dir")
    cp.check_output_dir_arguments(model_args, training_args)
    assert not out.exists() or not os.listdir(out)
    # an empty or missing folder needs no flag
    model_args, _, training_args = cp_args(cp, tmp_path / "fresh", tok_dir, train_file, "--config_overrides", SIZE_OVERRIDES)
    cp.check_output_dir_arguments(model_args, training_args)


def test_generate_script_checks_every_output_path_before_loading(gen, checkpoint, tmp_path, capsys):
    for flag, value, expected in [
        ("--plot-diagnostics", tmp_path / "missing" / "traces.png", "does not exist"),
        ("--output", tmp_path / "missing" / "samples.jsonl", "does not exist"),
        ("--output", tmp_path, "is a folder"),
    ]:
        with pytest.raises(SystemExit):
            gen.parse_args([str(checkpoint), flag, str(value)])
        err = capsys.readouterr().err
        assert flag in err and expected in err, err
    args = gen.parse_args([str(checkpoint), "--plot-diagnostics", str(tmp_path / "t.png"), "--output",
                           str(tmp_path / "s.jsonl")])
    assert args.plot_diagnostics.endswith("t.png")


@pytest.fixture(scope="module")
def mdlm_folder(tok_dir, tmp_path_factory):
    """A tiny checkpoint in the published MDLM format whose V real tokens fit the 384-token BPE."""
    from test_core_mdlm_parity import TINY, write_mdlm_checkpoint

    folder = tmp_path_factory.mktemp("mdlm")
    write_mdlm_checkpoint(folder, cfg={**TINY, "vocab_size": len(AutoTokenizer.from_pretrained(tok_dir)) + 1})
    return folder


def test_convert_checkpoint_checks_first_and_never_leaves_a_half_written_folder(mdlm_folder, tok_dir, tmp_path,
                                                                                monkeypatch):
    convert = load_script("convert_checkpoint")
    out = tmp_path / "dsl"
    # a tokenizer that does not fit the model: refused with both numbers, nothing written
    from test_core_mdlm_parity import write_mdlm_checkpoint

    small = tmp_path / "mdlm_small"
    small.mkdir()
    write_mdlm_checkpoint(small)  # V = 40
    with pytest.raises(ValueError, match=r"has 384 tokens but the model's vocabulary has vocab_size=40"):
        convert.main(["--mdlm", str(small), "--tokenizer", str(tok_dir), "--output", str(out)])
    assert os.listdir(tmp_path) == sorted(os.listdir(tmp_path)) and not out.exists()
    # a missing tokenizer path: named as a missing local folder, before anything is written
    with pytest.raises(FileNotFoundError, match="--tokenizer: no such local folder"):
        convert.main(["--mdlm", str(mdlm_folder), "--tokenizer", str(tmp_path / "no_tok"), "--output", str(out)])
    assert not out.exists()
    # a failure while writing leaves neither the output nor the staging folder
    from transformers import PreTrainedTokenizerBase

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(PreTrainedTokenizerBase, "save_pretrained", broken_save)
        with pytest.raises(OSError, match="disk full"):
            convert.main(["--mdlm", str(mdlm_folder), "--tokenizer", str(tok_dir), "--output", str(out)])
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".partial-" in p]
    # the good case, then a second run into the now non-empty folder is refused unless --overwrite
    convert.main(["--mdlm", str(mdlm_folder), "--tokenizer", str(tok_dir), "--output", str(out)])
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="--output .* is not empty.*--overwrite"):
        convert.main(["--mdlm", str(mdlm_folder), "--output", str(out)])
    convert.main(["--mdlm", str(mdlm_folder), "--output", str(out), "--overwrite"])
    assert not (out / "tokenizer.json").exists()


def test_convert_checkpoint_refuses_a_tokenizer_whose_special_ids_do_not_fit(tok_dir):
    convert = load_script("convert_checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    config = DSLConfig(vocab_size=len(tokenizer), mask_token_id=len(tokenizer), **SIZE)
    convert.check_tokenizer(tokenizer, config, "tok")
    tokenizer.add_special_tokens({"mask_token": "<mask>"})  # id 384 = V: the size no longer fits
    with pytest.raises(ValueError, match="has 385 tokens but the model's vocabulary has vocab_size=384"):
        convert.check_tokenizer(tokenizer, config, "tok")
    config = DSLConfig(vocab_size=len(tokenizer), mask_token_id=3, **SIZE)
    with pytest.raises(ValueError, match="mask_token_id=384 but the model's mask_token_id is 3"):
        convert.check_tokenizer(tokenizer, config, "tok")


# ----------------------------------------------------------------------------- silently wrong


def test_unknown_config_fields_fail_with_the_closest_name_and_known_keys_keep_working(tmp_path):
    with pytest.raises(ValueError, match="unknown field 'hidden_sise'; did you mean 'hidden_size'"):
        DSLConfig(hidden_sise=64)
    with pytest.raises(ValueError, match="unknown field 'snr_maxx'; did you mean 'snr_max'"):
        DSLConfig.from_preset("paper", snr_maxx=10.0)
    # transformers' own keys are fine, and a saved config (with model_type, auto_map,
    # transformers_version, dtype, ...) loads back
    config = DSLConfig(eos_token_id=3, pad_token_id=0, output_hidden_states=True, torch_dtype="float32",
                       architectures=["DSLForDiffusionLM"], **SIZE)
    config.save_pretrained(tmp_path)
    again = DSLConfig.from_pretrained(tmp_path)
    assert again.eos_token_id == 3 and again.hidden_size == 32 and again.output_hidden_states
    junk = json.loads((tmp_path / "config.json").read_text())
    junk["hidden_sise"] = 64
    (tmp_path / "config.json").write_text(json.dumps(junk))
    with pytest.raises(ValueError, match="did you mean 'hidden_size'"):
        DSLConfig.from_pretrained(tmp_path)


def test_config_overrides_typo_is_refused_for_fresh_and_loaded_models(cp, checkpoint, tok_dir, train_file, tmp_path):
    model_args, data_args, _ = cp_args(cp, tmp_path / "o", tok_dir, train_file, "--config_overrides",
                                       SIZE_OVERRIDES + ",hidden_sise=64")
    with pytest.raises(ValueError, match="--config_overrides: .*'hidden_sise'; did you mean 'hidden_size'"):
        cp.check_arguments(model_args, data_args)
    model_args, data_args, _ = cp_args(cp, tmp_path / "o", tok_dir, train_file, "--model_name_or_path",
                                       str(checkpoint), "--config_overrides", "snr_maks=20")
    with pytest.raises(ValueError, match="'snr_maks'; did you mean 'snr_max'"):
        cp.check_arguments(model_args, data_args)


def test_generate_refuses_float_bool_ids_empty_mask_rows_and_zero_sequences():
    model = tiny_model()
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(0))
    kw = dict(steps=2, gen_length=4, seed=0)
    with pytest.raises(ValueError, match="input_ids must be an integer tensor.*float32"):
        model.generate(ids.float() + 0.7, **kw)
    with pytest.raises(ValueError, match="input_ids must be an integer tensor.*bool"):
        model.generate(ids > 5, **kw)
    mask = torch.ones_like(ids)
    mask[1] = 0
    with pytest.raises(ValueError, match=r"attention_mask: row\(s\) \[1\] attend to no token.*input_ids=None"):
        model.generate(ids, mask, **kw)
    with pytest.raises(ValueError, match="attention_mask must hold only 0"):
        model.generate(ids, mask * 2, **kw)
    with pytest.raises(ValueError, match="num_return_sequences must be an integer >= 1, got 0"):
        model.generate(num_return_sequences=0, **kw)
    with pytest.raises(ValueError, match="num_return_sequences must be an integer >= 1, got 0"):
        model.generate(ids, num_return_sequences=0, **kw)
    # the explicit empty prompt stays allowed, and so do 1-D ids with a 1-D mask
    assert model.generate(num_return_sequences=2, **kw).shape == (2, 4)
    assert model.generate(ids[0], torch.ones(5, dtype=torch.long), **kw).shape == (1, 9)


def test_nan_or_infinite_snrs_raise_naming_snr():
    model = tiny_model()
    ids = torch.randint(0, 50, (1, 8))
    for bad in (float("nan"), float("inf")):
        snr = torch.full((1, 8), 5.0)
        snr[0, 3] = bad
        with pytest.raises(ValueError, match="snr"):
            model(input_ids=ids, snr=snr)


def test_block_size_longer_than_the_positions_is_refused_at_start_up(cp, checkpoint, tok_dir, train_file, tmp_path):
    for source in (["--config_overrides", SIZE_OVERRIDES], ["--model_name_or_path", str(checkpoint)]):
        model_args, data_args, _ = cp.parse_args(["--tokenizer_name", str(tok_dir), "--train_file", str(train_file),
                                                  "--block_size", "128", "--output_dir", str(tmp_path / "o"),
                                                  *source])
        with pytest.raises(ValueError, match="--block_size 128 exceeds the model's max_position_embeddings 64"):
            cp.check_block_size_early(model_args, data_args)
    with pytest.raises(ValueError, match="--block_size 65"):
        cp.check_block_size(64, 65)


def test_mdlm_objective_is_recorded_and_sets_a_masked_generation_default(tmp_path):
    from trainers import DSLTrainer

    model = tiny_model()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    DSLTrainer(model=model, args=args, objective="mdlm").save_model(str(tmp_path / "out"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert config["training_objective"] == "mdlm" and generation["strategy"] == "mdlm"
    reloaded = DSLForDiffusionLM.from_pretrained(tmp_path / "out")
    assert reloaded.config.training_objective == "mdlm" and reloaded.generation_config.strategy == "mdlm"
    # a DSL run records "dsl" and keeps the generation default
    model = tiny_model()
    DSLTrainer(model=model, args=args, objective="dsl")
    assert model.config.training_objective == "dsl" and model.generation_config.strategy == "sde"
    with pytest.raises(ValueError, match="training_objective"):
        DSLConfig(training_objective="ar")


# ----------------------------------------------------------------------------- friction


def test_generate_script_has_no_prompt_and_no_spurious_warnings(checkpoint, tmp_path):
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "generate.py"), str(checkpoint), "--steps", "2",
                           "--gen-length", "4", "--prompt", "The album"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for noise in ("mask_token_id", "instantiate a model of type", "trust_remote_code", "custom code"):
        assert noise not in proc.stderr, proc.stderr


def test_missing_local_paths_are_reported_as_such(gen, cp, tok_dir, train_file, tmp_path, capsys):
    with pytest.raises(SystemExit):
        gen.parse_args(["./no_such_dir/model"])
    assert "checkpoint: no such local folder: './no_such_dir/model'" in capsys.readouterr().err
    model_args, data_args, _ = cp_args(cp, tmp_path / "o", tok_dir, train_file, "--model_name_or_path",
                                       str(tmp_path / "nothing" / "here"))
    with pytest.raises(FileNotFoundError, match="--model_name_or_path: no such local folder"):
        cp.check_arguments(model_args, data_args)
    from scripts.cli_checks import check_source, looks_like_hub_id

    assert looks_like_hub_id("kuleshov-group/mdlm-owt") and not looks_like_hub_id("./a/b")
    check_source("kuleshov-group/mdlm-owt", "--mdlm")  # left to the Hub


def test_empty_train_file_is_named(cp, tok_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    model_args, data_args, _ = cp_args(cp, tmp_path / "o", tok_dir, empty, "--config_overrides", SIZE_OVERRIDES)
    with pytest.raises(ValueError, match=r"--train_file '.*empty.txt' is empty"):
        cp.check_arguments(model_args, data_args)


def test_corrupted_weights_and_bad_generation_config_are_named(checkpoint, tmp_path):
    import shutil

    bad = tmp_path / "weights"
    shutil.copytree(checkpoint, bad)
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(OSError, match=r"model.safetensors: not a valid safetensors file"):
        DSLForDiffusionLM.from_pretrained(bad)
    for text, why in [('{"strategy": "sde", "steps": ', "not a valid JSON"), ('{"strategy": "sdee"}', "strategy must be")]:
        folder = tmp_path / f"gc{len(text)}"
        shutil.copytree(checkpoint, folder)
        (folder / "generation_config.json").write_text(text)
        with pytest.raises(ValueError, match=rf"generation_config.json: invalid generation config: .*{why}"):
            DSLForDiffusionLM.from_pretrained(folder)
    # no file at all still means the defaults
    folder = tmp_path / "no_gc"
    shutil.copytree(checkpoint, folder)
    (folder / "generation_config.json").unlink()
    assert DSLForDiffusionLM.from_pretrained(folder).generation_config.strategy == "sde"


def test_diagnostics_plot_plain_ticks_visible_one_step_markers_and_hybrid_switch(gen, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    model = tiny_model(weight_std=0.5)
    res = model.generate(strategy="hybrid", steps=8, gen_length=8, seed=0, return_dict_in_generate=True,
                         output_diagnostics=True)
    traces = {k: v.clone() for k, v in res.diagnostics.items()}
    traces["u_t"] = 0.99998 + torch.linspace(0, 1e-6, traces["u_t"].shape[0])[:, None]
    gen.plot_diagnostics([traces], str(tmp_path / "hybrid.png"), switch_step=2)
    fig = figures.pop()
    fig.canvas.draw()
    assert all(ax.yaxis.get_offset_text().get_text() == "" for ax in fig.axes)
    switch_lines = [line for line in fig.axes[0].lines if list(line.get_xdata()) == [2.5, 2.5]]
    assert switch_lines, "the hybrid's switch point is marked"
    one = model.generate(strategy="mdlm", steps=1, gen_length=8, seed=0, return_dict_in_generate=True,
                         output_diagnostics=True)
    gen.plot_diagnostics([one.diagnostics], str(tmp_path / "one.png"))
    fig = figures.pop()
    drawn = fig.axes[0].lines[0]
    assert len(drawn.get_xdata()) == 1 and drawn.get_marker() not in (None, "None", "") and drawn.get_markersize() > 0
    r_panel = fig.axes[3]  # mdlm records no remask ratio: the panel says so instead of staying empty
    assert any("not recorded" in t.get_text() for t in r_panel.texts)
    # the script computes the switch step from the run's settings
    args = gen.parse_args([str(tmp_path), "--strategy", "hybrid", "--steps", "8"])
    assert gen.hybrid_switch_step(model, args) == 2
    args = gen.parse_args([str(tmp_path), "--strategy", "mdlm"])
    assert gen.hybrid_switch_step(model, args) is None


def test_lora_output_has_a_real_card_and_missing_peft_is_named(checkpoint, tmp_path, monkeypatch, gen, capsys):
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from trainers import DSLTrainer

    model = DSLForDiffusionLM.from_pretrained(checkpoint)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=model.lora_target_modules,
                                                  modules_to_save=["converter"], task_type=None))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    DSLTrainer(model=peft_model, args=args).save_model(str(tmp_path / "adapter"))
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "[More Information Needed]" not in card
    assert "pip install peft" in card and "PeftModel.from_pretrained" in card and "`converter`" in card
    monkeypatch.setitem(sys.modules, "peft", None)  # a machine without peft
    with pytest.raises(ImportError, match="PEFT LoRA adapter .* needs the `peft` package: pip install peft"):
        DSLForDiffusionLM.from_pretrained(tmp_path / "adapter")
    with pytest.raises(SystemExit):
        gen.parse_args([str(tmp_path / "adapter")])
    assert "needs the `peft` package" in capsys.readouterr().err


def test_activation_checkpointing_and_its_old_name_are_both_accepted(cp, tok_dir, train_file, tmp_path):
    for flag in ("--activation_checkpointing", "--gradient_checkpointing"):
        _, _, training_args = cp_args(cp, tmp_path / "o", tok_dir, train_file, "--config_overrides", SIZE_OVERRIDES,
                                      flag, "true")
        assert getattr(training_args, "activation_checkpointing", None) or training_args.gradient_checkpointing
    readme = (REPO / "README.md").read_text()
    assert "--activation_checkpointing" in readme and "--gradient_checkpointing` still works" in readme


def test_activation_checkpointing_flag_turns_checkpointing_on_in_the_trainer(tmp_path):
    import datasets

    from trainers.dsl_trainer import DSLTrainer

    data = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3, 4, 5, 6, 7, 8]] * 4})
    for on in (True, False):
        model = tiny_model()
        args = TrainingArguments(output_dir=str(tmp_path / str(on)), max_steps=1, per_device_train_batch_size=2,
                                 use_cpu=True, report_to="none", activation_checkpointing=on, save_strategy="no")
        DSLTrainer(model=model, args=args, train_dataset=data).train()
        assert model.is_activation_checkpointing is on


# ----------------------------------------------------------------------------- README commands


def test_readme_blocks_parse_markers_apply_and_launches_name_the_process_count():
    sys.path.insert(0, str(REPO / "scripts"))
    import check_readme

    blocks = check_readme.parse_readme((REPO / "README.md").read_text())
    assert len(blocks) >= 5
    commands = [b.command() for b in blocks]  # every ci-sized replacement matches its block
    assert commands[0].startswith("python3 -m venv .venv") and "pip install -e" in commands[0]
    assert "pytest tests" in commands[1] and not blocks[1].replacements  # the test command runs as written
    for block in blocks:
        if "accelerate launch" in block.code:
            assert block.code.count("accelerate launch") == block.code.count("--num_processes")
    for name in ("accelerate_zero2.yaml", "accelerate_zero3.yaml"):
        text = (REPO / "trainers" / "configs" / name).read_text()
        assert not any(line.startswith("num_processes:") for line in text.splitlines())
    readme = (REPO / "README.md").read_text()
    assert "**GPU-only flags:** `--bf16`" in readme
    assert "`--ema_decay`\nneeds ZeRO-2 or no DeepSpeed" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/check_readme.py" in ci


def test_readme_check_fails_on_a_failing_block_and_on_a_stale_marker(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    import check_readme

    good = tmp_path / "good.md"
    good.write_text("text\n\n<!-- ci-sized\n--steps 1000 => --steps 1\n-->\n```bash\ntest \"--steps 1\" = \"--steps 1000\"\n```\n")
    assert check_readme.main(["--readme", str(good)]) == 0
    bad = tmp_path / "bad.md"
    bad.write_text("```bash\ntrue\n```\n\n```bash\necho running; exit 3\n```\n\n```bash\necho never\n```\n")
    assert check_readme.main(["--readme", str(bad)]) == 1
    out = capsys.readouterr()
    assert "FAILED: README.md block 2" in out.err and "never" not in out.out.replace("echo never", "")
    pytest5 = tmp_path / "pytest5.md"
    pytest5.write_text("```bash\necho pytest; exit 5\n```\n")
    assert check_readme.main(["--readme", str(pytest5)]) == 1
    assert "pytest collected no tests" in capsys.readouterr().err
    stale = tmp_path / "stale.md"
    stale.write_text("<!-- ci-sized\n--max_steps 100000 => --max_steps 2\n-->\n```bash\necho --max_steps 5\n```\n")
    with pytest.raises(ValueError, match="replaces '--max_steps 100000', which the block does not contain"):
        check_readme.main(["--readme", str(stale)])
