"""DSLTrainer, EMA and scripts/continue_pretrain.py: the loss and objectives, learning, EMA, PEFT, and
the script (arguments, training, SIGKILL and resume, DeepSpeed ZeRO).

Tiny models (hidden 64, 2 blocks) on the WikiText-103 excerpt shipped in trainers/demo_data/, with a
small byte-level BPE trained on it (conftest: `wikitext`, `tok_dir`). DeepSpeed and kill-and-resume
run in subprocesses (process-global state, SIGKILL).
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments

from conftest import paragraphs, tiny_model
from modeling_dsl import DSLConfig, DSLForDiffusionLM
from trainers import DSLTrainer, EMACallback, mdlm_masking, pack_dataset
from trainers.data import DSLDataCollator

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "continue_pretrain.py"
# Trainer-sized tiny models (64-token blocks); the script builds the same from --config_overrides.
SIZE = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, cond_dim=32, max_position_embeddings=128,
            noise_dim=16)
SIZE_OVERRIDES = ",".join(f"{k}={v}" for k, v in SIZE.items())
MODEL = dict(SIZE, dropout=0.1)  # DSLConfig's (MDLM's) dropout, as the script's models have


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="module")
def blocks(wikitext, tokenizer):
    """(train blocks, held-out blocks) of length 64."""
    train = pack_dataset(datasets.Dataset.from_dict({"text": paragraphs(wikitext[0])}), tokenizer, 64)
    held = pack_dataset(datasets.Dataset.from_dict({"text": paragraphs(wikitext[1])}), tokenizer, 64)
    return train, held


@pytest.fixture(scope="module")
def train_file(wikitext, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.txt"
    path.write_text(wikitext[0][:120_000], encoding="utf-8")
    return path


def targs(out, **kwargs):
    base = dict(output_dir=str(out), per_device_train_batch_size=8, learning_rate=3e-3, report_to="none",
                save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, logging_steps=1)
    base.update(kwargs)
    return TrainingArguments(**base)


def losses(trainer):
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(args, env=None, timeout=400, driver=None):
    """Run continue_pretrain.py (or a driver around its main) in a fresh interpreter."""
    command = [sys.executable, str(SCRIPT), *args] if driver is None else [sys.executable, "-c", driver, *args]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


REMOTE_DRIVER = """
import json
import numpy as np, torch
from transformers import AutoModel

folder, ids_file, snr_file, out_file = sys.argv[1:5]
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
module = type(model).__module__
if len(sys.argv) > 5:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, sys.argv[5])
model.eval()
ids, snr = torch.from_numpy(np.load(ids_file)), torch.from_numpy(np.load(snr_file))
with torch.no_grad():
    logits = model(input_ids=ids, snr=snr, generator=torch.Generator().manual_seed(0)).logits
np.save(out_file, logits.numpy())
print(json.dumps({"module": module}))
"""


def remote_logits(run_without_package, tmp_path, folder, ids, snr, adapter=None):
    """Logits of `folder` loaded through AutoModel(trust_remote_code=True) in a process where the
    package cannot be imported (optionally with a PEFT adapter on top); noise seed 0."""
    import numpy as np

    np.save(tmp_path / "ids.npy", ids.numpy())
    np.save(tmp_path / "snr.npy", snr.numpy())
    args = [folder, tmp_path / "ids.npy", tmp_path / "snr.npy", tmp_path / "logits.npy"]
    report = run_without_package(REMOTE_DRIVER, *args, *([adapter] if adapter else []))
    assert report["module"].startswith("transformers_modules")
    return torch.from_numpy(np.load(tmp_path / "logits.npy"))


def script_args(out, tok_dir, train_file, *extra):
    return ["--tokenizer_name", str(tok_dir), "--train_file", str(train_file), "--block_size", "64",
            "--output_dir", str(out), "--per_device_train_batch_size", "8", "--logging_steps", "1",
            "--report_to", "none", "--learning_rate", "2e-3", "--eval_max_batches", "1",
            "--disable_tqdm", "true", *extra]


# ----------------------------------------------------------------------------- loss / objective units


def test_trainer_uses_the_config_sampler_roar_fraction_and_lognormal_moments(tokenizer, blocks, tmp_path):
    """The sampler DSLTrainer calls reproduces the config's mixture (both presets)."""
    V = len(tokenizer)
    for preset in ("paper", "authors_code"):
        config = DSLConfig.from_preset(preset, vocab_size=V, mask_token_id=V, **SIZE)
        model = DSLForDiffusionLM(config)
        trainer = DSLTrainer(model=model, args=targs(tmp_path), train_dataset=blocks[0])
        g = torch.Generator().manual_seed(0)
        snr, roar = trainer.snr_sampler.sample(4000, 64, generator=g, return_roar_mask=True)
        if preset == "paper":
            assert abs(roar.float().mean().item() - config.roar_prob) < 0.005
        else:  # per sequence: whole rows are ROAR
            assert (roar == roar[:, :1]).all()
            assert abs(roar[:, 0].float().mean().item() - config.roar_prob) < 0.03
        # independent LogNormal draws: every non-ROAR token (paper) or one per non-ROAR row (authors)
        log_snr = (snr[~roar] if preset == "paper" else snr[~roar[:, 0], 0]).log()
        n, sigma = log_snr.numel(), config.lognormal_sigma
        assert abs(log_snr.mean().item() - config.lognormal_mu) < 4 * sigma / math.sqrt(n)
        assert abs(log_snr.std().item() - sigma) < 4 * sigma / math.sqrt(2 * n)

        # compute_loss draws its SNRs from exactly this sampler
        calls = []
        original = trainer.snr_sampler.sample

        def spy(*args, **kwargs):
            out = original(*args, **kwargs)
            calls.append(out)
            return out

        trainer.snr_sampler.sample = spy
        batch = DSLDataCollator(0)([blocks[0][i] for i in range(4)])
        seen = []
        orig_forward = model.forward

        def recording_forward(*args, **kwargs):
            seen.append(kwargs["snr"].clone())
            return orig_forward(*args, **kwargs)

        model.forward = recording_forward
        trainer.compute_loss(model, batch)
        assert len(calls) == 1 and calls[0].shape == (4, 64) and torch.equal(seen[0], calls[0])


def test_dsl_loss_equals_model_loss_and_prompt_tokens_stay_clean(tokenizer, blocks, tmp_path):
    V = len(tokenizer)
    model = tiny_model(vocab_size=V, **MODEL)
    model.eval()  # no dropout: compare two forwards exactly
    trainer = DSLTrainer(model=model, args=targs(tmp_path), train_dataset=blocks[0])
    batch = DSLDataCollator(0)([blocks[0][i] for i in range(4)])
    batch["attention_mask"][1, 50:] = 0  # padding
    batch["prompt_mask"] = torch.zeros_like(batch["input_ids"])
    batch["prompt_mask"][:, :10] = 1  # prompt
    g = torch.Generator().manual_seed(3)
    snr, weights, n_targets, clean = trainer.corrupt_batch(batch, g)
    assert (snr[:, :10] == model.config.snr_max).all()
    assert torch.equal(clean, batch["prompt_mask"].bool())  # prompt tokens are fed noise-free
    assert (snr[1, 50:] == 0).all() and (weights[1, 50:] == 0).all() and (weights[:, :10] == 0).all()
    assert n_targets == 4 * 54 - 14
    # the trainer's loss is the model's own token CE over the same targets with the same noise
    trainer._eval_batch = 0
    with torch.no_grad():
        ours = trainer.compute_loss(model, batch)  # eval mode: the generator of eval batch 0
        trainer._eval_batch = 0
        g_eval = trainer.noise_generator(torch.device("cpu"), training=False)
        snr_eval, _, _, clean_eval = trainer.corrupt_batch(batch, g_eval)
        labels = batch["input_ids"].masked_fill(batch["prompt_mask"].bool(), -100)
        z, _ = model.noisy_embeds_from_ids(batch["input_ids"], snr_eval, generator=g_eval, clean_mask=clean_eval)
        x = model.embed(batch["input_ids"])
        torch.testing.assert_close(z[:, :10], model.config.snr_max * x[:, :10])  # no noise on the prompt
        assert (z[:, 10:] - snr_eval[:, 10:, None] * x[:, 10:]).abs().amax() > 0.1  # noise elsewhere
        trainer._eval_batch = 0
        g_eval = trainer.noise_generator(torch.device("cpu"), training=False)
        trainer.corrupt_batch(batch, g_eval)  # the same draws as compute_loss before its forward
        ref = model(input_ids=batch["input_ids"], snr=snr_eval, attention_mask=batch["attention_mask"],
                    labels=labels, generator=g_eval, clean_mask=clean_eval).loss
    assert (snr_eval[:, :10] == model.config.snr_max).all()
    assert torch.allclose(ours, ref, atol=1e-5), (ours, ref)
    with pytest.raises(ValueError, match="objective"):
        DSLTrainer(model=model, args=targs(tmp_path), objective="ar")


def test_padding_ids_outside_the_vocabulary_are_ignored_and_bad_targets_refused(tokenizer, blocks, tmp_path):
    V = len(tokenizer)
    model = tiny_model(vocab_size=V, **MODEL).eval()
    trainer = DSLTrainer(model=model, args=targs(tmp_path), train_dataset=blocks[0])
    batch = DSLDataCollator(0)([blocks[0][i] for i in range(2)])
    batch["attention_mask"][1, 40:] = 0
    with torch.no_grad():
        trainer._eval_batch = 0
        reference = trainer.compute_loss(model, batch)
        batch["input_ids"][1, 40:] = V  # e.g. MDLM's [PAD] = 50257 = V
        trainer._eval_batch = 0
        assert torch.equal(trainer.compute_loss(model, batch), reference)
        batch["input_ids"][0, 5] = V  # a target outside the vocabulary
        trainer._eval_batch = 0
        with pytest.raises(ValueError, match="outside the model's vocabulary"):
            trainer.compute_loss(model, batch)


def test_mdlm_objective_masks_with_loglinear_schedule_and_1_over_t_weights(tokenizer, blocks, tmp_path):
    g = torch.Generator().manual_seed(0)
    t, masked = mdlm_masking(2000, 64, g, eps=1e-3)
    # stratified t: exactly one draw in each 1/B interval (before the eps affine map)
    u = (t - 1e-3) / (1 - 1e-3)
    assert torch.equal(torch.floor(u * 2000).long().sort().values, torch.arange(2000))
    frac = masked.float().mean(1)
    assert abs((frac - (1 - 1e-3) * t).mean().item()) < 0.005
    # row by row (a constant or 1 − t mask rate would fail): binomial sd ≤ 0.0625 for L = 64
    assert (frac - (1 - 1e-3) * t).abs().max().item() < 0.3
    slope = torch.linalg.lstsq(torch.stack([t, torch.ones_like(t)], 1), frac[:, None]).solution[0].item()
    assert abs(slope - (1 - 1e-3)) < 0.03
    model = tiny_model(vocab_size=len(tokenizer), **MODEL)
    trainer = DSLTrainer(model=model, args=targs(tmp_path), train_dataset=blocks[0], objective="mdlm")
    batch = DSLDataCollator(0)([blocks[0][i] for i in range(8)])
    snr, weights, n_targets, clean = trainer.corrupt_batch(batch, torch.Generator().manual_seed(1))
    hidden = snr == 0
    assert torch.equal(clean, ~hidden)  # MDLM's visible tokens are one-hot inputs: fed noise-free
    assert set(snr.unique().tolist()) <= {0.0, model.config.snr_max}
    assert ((weights > 0) == hidden).all() and n_targets == 8 * 64
    # per row the weight is 1/t with t recomputed from the same generator
    t_ref, masked_ref = mdlm_masking(8, 64, torch.Generator().manual_seed(1), eps=1e-3)
    assert torch.equal(masked_ref, hidden)
    assert torch.allclose(weights[hidden], (1 / t_ref[:, None]).expand(8, 64)[hidden])


# ----------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_dsl_loss_really_learns_masked_tokens_below_unigram_entropy(tokenizer, blocks, tmp_path):
    """500 steps of Algorithm 1; probe: 15 % of held-out positions at γ = 0, the rest at γ_max."""
    train, held = blocks
    V = len(tokenizer)
    model = tiny_model(vocab_size=V, **MODEL)
    args = targs(tmp_path, max_steps=500, per_device_train_batch_size=32, lr_scheduler_type="constant_with_warmup",
                 warmup_steps=20, logging_steps=50)
    trainer = DSLTrainer(model=model, args=args, train_dataset=train)

    ids = torch.tensor(held["input_ids"])
    counts = torch.bincount(ids.flatten(), minlength=V).double()
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = -(p * p.log()).sum().item()

    def probe():
        g = torch.Generator().manual_seed(1)
        hidden = torch.rand(ids.shape, generator=g) < 0.15
        snr = torch.where(hidden, 0.0, model.config.snr_max)
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=ids, snr=snr, generator=g).logits
        return torch.nn.functional.cross_entropy(logits[hidden], ids[hidden]).item()

    before = probe()
    trainer.train()
    after = probe()
    print(f"\nmasked-token CE on held-out WikiText (15% at γ=0, rest at γ_max={model.config.snr_max:g}): "
          f"{before:.3f} nats before, {after:.3f} nats after 500 steps; unigram entropy {unigram_entropy:.3f} nats")
    assert after < unigram_entropy - 0.5
    assert losses(trainer)[-1] < losses(trainer)[0] - 1.0


def test_gradient_checkpointing_gives_the_same_losses(tokenizer, blocks, tmp_path):
    runs = []
    for gc in (False, True):
        # dropout 0.1 on: the recompute must replay the same RNG
        model = tiny_model(vocab_size=len(tokenizer), **MODEL)
        trainer = DSLTrainer(model=model, args=targs(tmp_path / str(gc), max_steps=4, gradient_checkpointing=gc),
                             train_dataset=blocks[0])
        trainer.train()
        assert model.is_gradient_checkpointing == gc
        runs.append((losses(trainer), model.state_dict()))
    assert len(runs[0][0]) == 4
    assert torch.allclose(torch.tensor(runs[0][0]), torch.tensor(runs[1][0]), rtol=0, atol=1e-6)
    for key, value in runs[0][1].items():
        assert torch.allclose(value, runs[1][1][key], atol=1e-6), key


def test_buckets_and_fixed_snr_evaluation_are_logged(tokenizer, blocks, tmp_path):
    model = tiny_model(vocab_size=len(tokenizer), **MODEL)
    args = targs(tmp_path, max_steps=6, logging_steps=3, eval_strategy="steps", eval_steps=6,
                 per_device_eval_batch_size=8)
    trainer = DSLTrainer(model=model, args=args, train_dataset=blocks[0], eval_dataset=blocks[1].select(range(16)))
    trainer.train()
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert all(set(trainer.bucket_names()) & set(log) for log in train_logs)
    eval_log = next(log for log in trainer.state.log_history if "eval_loss" in log)
    for gamma in (0, 1, 5, 10, 20, 50, 100):
        assert 0 <= eval_log[f"eval_acc_snr_{gamma}"] <= 1 and eval_log[f"eval_ce_snr_{gamma}"] > 0
    # near-clean tokens are recognised far better than masked ones, even after 6 steps
    assert eval_log["eval_acc_snr_100"] > eval_log["eval_acc_snr_0"] + 0.3
    # evaluation noise is reproducible: evaluating twice gives the same numbers
    a, b = trainer.evaluate(), trainer.evaluate()
    assert a["eval_loss"] == b["eval_loss"] and a["eval_ce_snr_5"] == b["eval_ce_snr_5"]


# ----------------------------------------------------------------------------- EMA


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))

    def forward(self, x, labels=None):
        return {"loss": ((x * self.w).sum(-1) - labels).pow(2).mean()}


class Recorder(TrainerCallback):
    def __init__(self):
        self.weights = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.weights:
            self.weights.append(model.w.detach().clone())

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights.append(model.w.detach().clone())


def toy_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    y = x @ torch.tensor([0.5, 0.25])
    return [{"x": x[i], "labels": y[i]} for i in range(64)]


def toy_args(out, **kwargs):
    return TrainingArguments(str(out), per_device_train_batch_size=4, learning_rate=0.05, max_steps=9,
                             report_to="none", use_cpu=True, disable_tqdm=True, seed=0, save_strategy="steps",
                             save_steps=3, lr_scheduler_type="constant", **kwargs)


def test_ema_equals_closed_form_running_average_and_resume_restores_it(tmp_path):
    decay = 0.8
    ema, rec = EMACallback(decay=decay), Recorder()
    trainer = Trainer(model=Toy(), args=toy_args(tmp_path / "full"), train_dataset=toy_data(), callbacks=[ema, rec])
    trainer.train()
    w = torch.stack(rec.weights)  # w_0 (initial) … w_N
    n = len(w) - 1
    assert n == 9
    closed = decay ** n * w[0] + sum((1 - decay) * decay ** (n - k) * w[k] for k in range(1, n + 1))
    assert torch.allclose(ema.shadow["w"], closed, atol=1e-6)
    assert not torch.allclose(ema.shadow["w"], w[-1], atol=1e-3)  # a real average, not the last weights
    saved = load_file(str(tmp_path / "full" / "checkpoint-3" / "ema.safetensors"))["w"]
    closed3 = decay ** 3 * w[0] + sum((1 - decay) * decay ** (3 - k) * w[k] for k in range(1, 4))
    assert torch.allclose(saved, closed3, atol=1e-6)

    # resume a second run from checkpoint-6: the EMA continues from the saved shadow
    out = tmp_path / "resumed"
    import shutil

    shutil.copytree(tmp_path / "full" / "checkpoint-6", out / "checkpoint-6")
    ema2 = EMACallback(decay=decay)
    trainer2 = Trainer(model=Toy(), args=toy_args(out), train_dataset=toy_data(), callbacks=[ema2])
    trainer2.train(resume_from_checkpoint=True)
    assert torch.allclose(ema2.shadow["w"], ema.shadow["w"], atol=1e-6)
    with pytest.raises(ValueError, match="decay"):
        EMACallback(decay=1.0)


def test_evaluation_uses_ema_weights_and_restores_the_model(tokenizer, blocks, tmp_path):
    model = tiny_model(vocab_size=len(tokenizer), **MODEL)
    args = targs(tmp_path, max_steps=5, per_device_eval_batch_size=8)
    trainer = DSLTrainer(model=model, args=args, train_dataset=blocks[0], eval_dataset=blocks[1].select(range(8)),
                         ema_decay=0.5, eval_snrs=(0, 50))
    trainer.train()
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with_ema = trainer.evaluate()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in live.items())  # swapped back
    trainer.ema_callback.use_for_eval = False
    without = trainer.evaluate()
    assert with_ema["eval_loss"] != without["eval_loss"]
    # evaluating the EMA weights loaded into a copy of the model gives the EMA numbers
    with trainer.ema_callback.swapped_in(model):
        reference = trainer.evaluate()
    assert reference["eval_loss"] == with_ema["eval_loss"]


# ----------------------------------------------------------------------------- PEFT


def test_lora_trains_only_adapter_and_converter_and_reloads_on_remote_code_base(tokenizer, blocks, tmp_path, run_without_package):
    from peft import LoraConfig, get_peft_model

    V = len(tokenizer)
    base = tiny_model(vocab_size=V, **SIZE)  # dropout 0
    # A fresh model has MDLM's zero-initialised adaLN gates and output layer, so no gradient reaches
    # the backbone while they are frozen; give it the non-zero weights of a pretrained model.
    with torch.no_grad():
        for module in base.modules():
            if getattr(module, "zero_init", False):
                module.weight.normal_(0.0, 0.05)
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["attn_qkv", "attn_out"],
                                            modules_to_save=["converter"], task_type=None))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = DSLTrainer(model=model, args=targs(tmp_path / "run", max_steps=5), train_dataset=blocks[0])
    trainer.train()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all("lora_" in k or "modules_to_save" in k for k in changed), sorted(changed)
    assert any("lora_B" in k for k in changed) and any("modules_to_save" in k and "backbone_embedding" in k
                                                       for k in changed)
    model.save_pretrained(tmp_path / "adapter")

    model.eval()
    ids = torch.tensor(blocks[1]["input_ids"][:2])
    snr = torch.full(ids.shape, 5.0)
    with torch.no_grad():
        trained = model(input_ids=ids, snr=snr, generator=torch.Generator().manual_seed(0)).logits
    reloaded = remote_logits(run_without_package, tmp_path, tmp_path / "base", ids, snr,
                             adapter=tmp_path / "adapter")
    assert torch.allclose(trained, reloaded, atol=1e-5)
    plain_base = remote_logits(run_without_package, tmp_path, tmp_path / "base", ids, snr)
    assert not torch.allclose(trained, plain_base, atol=1e-3)  # the adapter really changes the model


# ----------------------------------------------------------------------------- the script


def test_script_help_and_argument_errors(tok_dir, train_file, tmp_path):
    result = run_script(["--help"], timeout=120)
    assert result.returncode == 0 and "--snr_preset" in result.stdout and "--use_lora" in result.stdout
    bad = run_script(script_args(tmp_path, tok_dir, train_file, "--config_overrides", SIZE_OVERRIDES,
                                 "--objective", "ar", "--max_steps", "1"), timeout=120)
    assert bad.returncode != 0 and "--objective" in bad.stderr


def load_script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("continue_pretrain_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while the file runs
    spec.loader.exec_module(module)
    return module


def test_script_argument_rules_and_default_lora_targets(tok_dir, train_file, tmp_path):
    cp = load_script_module()
    base = script_args(tmp_path / "out", tok_dir, train_file)

    def check(*extra):
        model_args, data_args, _ = cp.parse_args([*base, *extra])
        cp.check_arguments(model_args, data_args)
        return model_args

    with pytest.raises(ValueError, match="--use_lora needs --model_name_or_path"):
        check("--mdlm_checkpoint", str(tmp_path), "--use_lora")
    with pytest.raises(ValueError, match="--lora_target_modules is only used with --use_lora"):
        check("--config_overrides", SIZE_OVERRIDES, "--lora_target_modules", "attn_qkv")
    with pytest.raises(ValueError, match="only one of --train_file and --dataset_name"):
        check("--config_overrides", SIZE_OVERRIDES, "--dataset_name", "wikitext")
    # a loaded checkpoint takes training-time overrides only
    folder = tmp_path / "ckpt"
    tiny_model(vocab_size=50, **MODEL).save_pretrained(folder)
    args = check("--model_name_or_path", str(folder), "--config_overrides", "hidden_size=32")
    with pytest.raises(ValueError, match="training-time fields"):
        cp.build_model(args, tokenizer=list(range(50)))
    args = check("--model_name_or_path", str(folder), "--config_overrides", "snr_max=80.0,dropout=0.0")
    assert cp.build_model(args, tokenizer=list(range(50))).config.snr_max == 80.0
    # the default LoRA targets are the blocks' linears, not the constant σ-embedder's MLP
    args = check("--model_name_or_path", str(folder), "--use_lora")
    peft_model = cp.apply_training_mode(tiny_model(vocab_size=50, **MODEL), args)
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    assert wrapped and all(".blocks." in n for n in wrapped), wrapped
    assert len(wrapped) == 4 * SIZE["num_hidden_layers"]


@pytest.mark.slow
def test_script_trains_dsl_and_mdlm_objectives_and_output_loads_as_remote_code(tok_dir, train_file, tmp_path, run_without_package):
    outputs = {}
    for objective in ("dsl", "mdlm"):
        out = tmp_path / objective
        result = run_script(script_args(out, tok_dir, train_file, "--config_overrides", SIZE_OVERRIDES,
                                        "--objective", objective, "--max_steps", "12", "--snr_preset", "paper",
                                        "--eval_strategy", "steps", "--eval_steps", "12"))
        assert result.returncode == 0, result.stderr[-3000:]
        state = json.loads((out / "trainer_state.json").read_text())
        logs = [log for log in state["log_history"] if "loss" in log]
        assert len(logs) == 12 and all(math.isfinite(log["loss"]) for log in logs)
        buckets = {k for log in logs for k in log if k.startswith("loss_snr_")}
        outputs[objective] = buckets
        assert any("eval_ce_snr_5" in log for log in state["log_history"])
        ids = torch.randint(0, 384, (2, 16), generator=torch.Generator().manual_seed(0))
        snr = torch.full(ids.shape, 20.0)
        local = DSLForDiffusionLM.from_pretrained(out).eval()
        with torch.no_grad():
            expected = local(input_ids=ids, snr=snr, generator=torch.Generator().manual_seed(0)).logits
        assert torch.allclose(remote_logits(run_without_package, tmp_path, out, ids, snr), expected, atol=1e-5)
    # MDLM scores masked tokens only (γ = 0); DSL scores tokens at every SNR
    assert outputs["mdlm"] == {"loss_snr_0-1"}
    assert {"loss_snr_0-1", "loss_snr_5-20", "loss_snr_50-inf"} <= outputs["dsl"]


KILL_DRIVER = """
import importlib.util, os, signal, sys
from transformers import TrainerCallback
spec = importlib.util.spec_from_file_location("continue_pretrain", "scripts/continue_pretrain.py")
module = importlib.util.module_from_spec(spec)
sys.modules["continue_pretrain"] = module  # dataclasses look their module up
spec.loader.exec_module(module)

class KillAfterCheckpoint(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 6:  # checkpoint-6 is fully written (model, optimizer, RNG, EMA)
            os.kill(os.getpid(), signal.SIGKILL)

module.main(sys.argv[1:], callbacks=[KillAfterCheckpoint()])
"""


@pytest.mark.slow
def test_sigkill_and_resume_reproduces_the_uninterrupted_losses(tok_dir, train_file, tmp_path):
    common = ["--config_overrides", SIZE_OVERRIDES, "--max_steps", "10", "--save_steps", "3",
              "--ema_decay", "0.9", "--seed", "7"]
    full = run_script(script_args(tmp_path / "full", tok_dir, train_file, *common))
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run_script(script_args(tmp_path / "killed", tok_dir, train_file, *common), driver=KILL_DRIVER)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / "killed" / "checkpoint-6" / "ema.safetensors").exists()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = run_script(script_args(tmp_path / "killed", tok_dir, train_file, *common,
                                     "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def step_losses(folder):
        state = json.loads((folder / "trainer_state.json").read_text())
        return {log["step"]: log["loss"] for log in state["log_history"] if "loss" in log}

    a, b = step_losses(tmp_path / "full"), step_losses(tmp_path / "killed")
    assert sorted(a) == list(range(1, 11)) and sorted(b) == list(range(1, 11))
    for step in range(7, 11):  # the steps the resumed process ran
        assert a[step] == pytest.approx(b[step], abs=1e-6), (step, a[step], b[step])
    wa, wb = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(
        str(tmp_path / "killed" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    ea, eb = load_file(str(tmp_path / "full" / "ema" / "model.safetensors")), load_file(
        str(tmp_path / "killed" / "ema" / "model.safetensors"))
    assert all(torch.allclose(ea[k], eb[k], atol=1e-6) for k in ea)
    assert not all(torch.allclose(ea[k], wa[k], atol=1e-4) for k in ea)  # the EMA is not the live model


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_single_process_cpu_trains_and_reloads(stage, tokenizer, tok_dir, train_file, tmp_path, run_without_package):
    pytest.importorskip("deepspeed")
    init = tmp_path / "init"
    model = tiny_model(vocab_size=len(tokenizer), **MODEL)
    model.save_pretrained(init)
    tokenizer.save_pretrained(init)
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu"}
    out = tmp_path / "out"
    result = run_script(script_args(out, tok_dir, train_file, "--model_name_or_path", str(init), "--max_steps", "6",
                                    "--save_steps", "6", "--deepspeed",
                                    str(REPO / "trainers" / "configs" / f"zero{stage}.json"),
                                    "--do_eval", "true",
                                    *(["--gradient_checkpointing", "true"] if stage == 3 else [])), env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "DeepSpeed" in result.stderr + result.stdout
    assert (out / "checkpoint-6" / "global_step6").is_dir()  # a DeepSpeed checkpoint, not a plain one
    evaluation = json.loads((out / "eval_results.json").read_text())  # evaluation under ZeRO works too
    assert math.isfinite(evaluation["eval_loss"]) and 0 <= evaluation["eval_acc_snr_100"] <= 1
    trained = DSLForDiffusionLM.from_pretrained(out)
    initial = model.state_dict()
    changed = [k for k, v in trained.state_dict().items() if not torch.allclose(v, initial[k])]
    assert "backbone.blocks.0.attn_qkv.weight" in changed and "converter.backbone_embedding.weight" in changed
    for key, value in trained.state_dict().items():
        assert value.shape == initial[key].shape and torch.isfinite(value).all(), key
    # the reloaded weights are the trained ones: lower loss than the initial model on the same noise
    ids = torch.tensor(pack_dataset(datasets.Dataset.from_dict({"text": [train_file.read_text()[:20000]]}),
                                    tokenizer, 64)["input_ids"][:8])
    snr = torch.full(ids.shape, 10.0)
    trained.eval()
    model.eval()
    with torch.no_grad():
        lt = trained(input_ids=ids, snr=snr, labels=ids, generator=torch.Generator().manual_seed(0)).loss
        li = model(input_ids=ids, snr=snr, labels=ids, generator=torch.Generator().manual_seed(0)).loss
    assert lt < li - 0.05, (lt, li)
    # and the folder loads as remote code, without the package, to the same model
    with torch.no_grad():
        expected = trained(input_ids=ids, snr=snr, generator=torch.Generator().manual_seed(0)).logits
    assert torch.allclose(remote_logits(run_without_package, tmp_path, out, ids, snr), expected, atol=1e-5)
