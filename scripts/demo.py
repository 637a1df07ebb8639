#!/usr/bin/env python
"""DSL in a few minutes on a CPU: train, save, reload as remote code, generate, plot.

    pip install -e .          # once, from the repository root
    python scripts/demo.py    # writes ./demo_output

Steps:
1. read the WikiText-103 excerpt shipped in `trainers/demo_data/` (CC BY-SA 3.0, ~0.6 MB) and
   hold out its last articles;
2. train a small byte-level BPE tokenizer on it (`--vocab_size`, default 1024);
3. pack the text into blocks with MDLM's BOS/EOS wrapping and train a small DSL model with
   `DSLTrainer` (Algorithm 1: per-token ROAR/LogNormal SNRs, token cross-entropy), evaluating CE
   and accuracy at fixed SNRs on held-out blocks;
4. save it, reload it with `AutoModel.from_pretrained(..., trust_remote_code=True)` — the code
   travels with the weights;
5. generate with several strategies (`model.generate(strategy=...)`), print the samples;
6. save the training curves and the SNR calibration figure as PNGs.

The model is tiny and trains for minutes, so expect locally plausible word pieces and short
phrases, not fluent text; the figures show what was learned. Use `scripts/continue_pretrain.py`
for real training runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain clone without installing

import torch  # noqa: E402

DEMO_DATA = Path(__file__).resolve().parents[1] / "trainers" / "demo_data" / "wikitext103_excerpt.txt"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default="demo_output", help="where the model, samples and figures go")
    parser.add_argument("--data", default=None, help="plain-text file, articles separated by blank lines "
                                                     "(default: the shipped WikiText-103 excerpt)")
    parser.add_argument("--held_out_articles", type=int, default=2, help="last articles kept for evaluation")
    parser.add_argument("--vocab_size", type=int, default=1024, help="BPE vocabulary size")
    parser.add_argument("--block_size", type=int, default=64, help="training row length (BOS + text + EOS)")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=3)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--noise_dim", type=int, default=32, help="dimension of the spherical token embeddings")
    parser.add_argument("--snr_preset", default="paper", choices=["paper", "authors_code"])
    parser.add_argument("--max_steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--strategies", default="sde,mdlm,hybrid", help="comma-separated generate() strategies")
    parser.add_argument("--gen_steps", type=int, default=64, help="sampling steps per strategy")
    parser.add_argument("--num_samples", type=int, default=2, help="samples per strategy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("vocab_size", "block_size", "max_steps", "batch_size", "gen_steps", "num_samples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.block_size < 8:
        raise ValueError(f"--block_size must be >= 8, got {args.block_size}")
    return args


def load_articles(path: Path, held_out: int):
    text = path.read_text(encoding="utf-8")
    articles = [a.strip() for a in text.split("\n\n") if a.strip()]
    if len(articles) <= held_out:
        raise ValueError(f"--data must hold more than --held_out_articles={held_out} articles, got {len(articles)}")
    return articles[:-held_out], articles[-held_out:]


def plot_training_curves(log_history, path: Path) -> None:
    """Training CE overall and per SNR bucket against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [log for log in log_history if "loss" in log]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([log["step"] for log in train], [log["loss"] for log in train], color="black", lw=2, label="loss (all)")
    keys = sorted({k for log in train for k in log if k.startswith("loss_snr_")},
                  key=lambda k: float(k.split("_")[2].split("-")[0]))
    for key in keys:
        points = [(log["step"], log[key]) for log in train if key in log]
        ax.plot(*zip(*points), lw=1.2, label="γ ∈ [" + key[len("loss_snr_"):].replace("-", ", ") + ")")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("token cross-entropy (nats)")
    ax.set_title("DSL training loss by per-token SNR bucket")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_snr_calibration(log_history, path: Path) -> None:
    """Held-out CE and accuracy with every token at a fixed SNR, at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [log for log in log_history if "eval_loss" in log]
    if not evals:
        return
    fig, (ax_ce, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    cmap = plt.get_cmap("viridis")
    for i, log in enumerate(evals):
        snrs = sorted(float(k[len("eval_ce_snr_"):]) for k in log if k.startswith("eval_ce_snr_"))
        color = cmap(i / max(len(evals) - 1, 1))
        label = f"step {log['step']}"
        ax_ce.plot(snrs, [log[f"eval_ce_snr_{s:g}"] for s in snrs], "o-", color=color, label=label)
        ax_acc.plot(snrs, [log[f"eval_acc_snr_{s:g}"] for s in snrs], "o-", color=color, label=label)
    for ax, ylabel in ((ax_ce, "cross-entropy (nats)"), (ax_acc, "token accuracy")):
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("SNR γ of every held-out token")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.suptitle("p_θ(token | z) on held-out blocks at fixed SNR")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def generate_samples(model, tokenizer, strategies, args, prompt_ids):
    """{strategy: [texts]} for unconditional (BOS only) and prompted generation."""
    bos = tokenizer.bos_token_id
    results = {}
    for strategy in strategies:
        texts = []
        start = time.time()
        unconditional = torch.full((args.num_samples, 1), bos, dtype=torch.long)
        out = model.generate(input_ids=unconditional, strategy=strategy, steps=args.gen_steps,
                             gen_length=args.block_size - 2, seed=args.seed)
        texts += [tokenizer.decode(row[1:], skip_special_tokens=True) for row in out]
        prompt = torch.tensor([prompt_ids])
        out = model.generate(input_ids=prompt, strategy=strategy, steps=args.gen_steps,
                             gen_length=args.block_size - 2 - len(prompt_ids), seed=args.seed)
        texts.append(tokenizer.decode(prompt_ids, skip_special_tokens=True) + " ⟶ "
                     + tokenizer.decode(out[0, len(prompt_ids):], skip_special_tokens=True))
        results[strategy] = {"samples": texts, "seconds": round(time.time() - start, 2)}
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.time()
    import datasets
    from transformers import AutoModel, TrainingArguments
    from transformers.utils import logging as hf_logging

    from modeling_dsl import DSLConfig, DSLForDiffusionLM
    from trainers import DSLTrainer, pack_dataset, train_bpe_tokenizer

    hf_logging.set_verbosity_warning()
    datasets.disable_progress_bars()
    torch.manual_seed(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 1-2. data and tokenizer
    train_articles, held_articles = load_articles(Path(args.data) if args.data else DEMO_DATA, args.held_out_articles)
    train_lines = [line for a in train_articles for line in a.split("\n") if line.strip()]
    held_lines = [line for a in held_articles for line in a.split("\n") if line.strip()]
    tokenizer = train_bpe_tokenizer(train_lines, vocab_size=args.vocab_size)
    train_ds = pack_dataset(datasets.Dataset.from_dict({"text": train_lines}), tokenizer, args.block_size)
    eval_ds = pack_dataset(datasets.Dataset.from_dict({"text": held_lines}), tokenizer, args.block_size, max_blocks=64)
    V = len(tokenizer)
    print(f"[demo] tokenizer: {V} tokens; {len(train_ds)} training blocks and {len(eval_ds)} held-out blocks "
          f"of {args.block_size} tokens ({time.time() - start:.0f}s)")

    # 3. model and training
    config = DSLConfig.from_preset(
        args.snr_preset, vocab_size=V, mask_token_id=V, hidden_size=args.hidden_size,
        num_attention_heads=args.num_heads, num_hidden_layers=args.num_layers, cond_dim=64,
        max_position_embeddings=args.block_size, noise_dim=args.noise_dim, dropout=0.0,
    )
    model = DSLForDiffusionLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[demo] model: {n_params / 1e6:.2f}M parameters, SNR preset {args.snr_preset!r} "
          f"(γ_max = {config.snr_max:g}); training {args.max_steps} steps of {args.batch_size} blocks")
    training_args = TrainingArguments(
        output_dir=str(out / "run"), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, learning_rate=args.learning_rate,
        lr_scheduler_type="constant_with_warmup", warmup_steps=min(50, args.max_steps // 10),
        max_grad_norm=1.0, logging_steps=max(1, args.max_steps // 40), eval_strategy="steps",
        eval_steps=max(1, args.max_steps // 4), save_strategy="no", report_to="none", seed=args.seed,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
    )
    trainer = DSLTrainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer)
    train_start = time.time()
    trainer.train()
    train_seconds = time.time() - train_start
    final_eval = [log for log in trainer.state.log_history if "eval_loss" in log][-1]
    print(f"[demo] trained in {train_seconds:.0f}s; held-out CE at γ = 0 / 5 / 20 / 100: "
          + " / ".join(f"{final_eval[f'eval_ce_snr_{g}']:.2f}" for g in (0, 5, 20, 100))
          + " nats; accuracy " + " / ".join(f"{final_eval[f'eval_acc_snr_{g}']:.2f}" for g in (0, 5, 20, 100)))

    # 4. save and reload as remote code
    model_dir = out / "model"
    trainer.save_model(str(model_dir))
    reloaded = AutoModel.from_pretrained(str(model_dir), trust_remote_code=True).eval()
    source = ("the code saved beside the weights" if type(reloaded).__module__.startswith("transformers_modules")
              else "the installed modeling_dsl package (registered with AutoModel); the folder also carries "
                   "the code for machines without it")
    print(f"[demo] saved to {model_dir} and reloaded with AutoModel.from_pretrained(trust_remote_code=True), "
          f"class {type(reloaded).__name__} from {source}")

    # 5. generate
    prompt_ids = [tokenizer.bos_token_id] + tokenizer(held_articles[0].split("\n")[1][:60],
                                                      add_special_tokens=False)["input_ids"][:12]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    samples = generate_samples(reloaded, tokenizer, strategies, args, prompt_ids)
    lines = []
    for strategy, result in samples.items():
        lines.append(f"=== strategy={strategy} ({args.gen_steps} steps, {result['seconds']}s) ===")
        lines += [f"[{i}] {text}" for i, text in enumerate(result["samples"])]
    print("\n".join(lines))
    (out / "samples.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    # 6. figures
    plot_training_curves(trainer.state.log_history, out / "training_curves.png")
    plot_snr_calibration(trainer.state.log_history, out / "snr_calibration.png")
    summary = {
        "parameters": n_params, "vocab_size": V, "train_blocks": len(train_ds), "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - start, 1), "final_eval": final_eval,
        "samples": {k: v["samples"] for k, v in samples.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"[demo] figures: {out / 'training_curves.png'}, {out / 'snr_calibration.png'}; "
          f"total {time.time() - start:.0f}s")
    return summary


if __name__ == "__main__":
    main()
