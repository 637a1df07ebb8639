"""Shared measuring helpers of the benchmarks: peak memory of one step, workers, devices, steps.

Peak memory of a step (`peak_step_memory`):

* CUDA: `torch.cuda.max_memory_allocated()` during the step minus the memory allocated before it.
* CPU: the process's resident-set high-water mark during the step minus the RSS before it.
  tracemalloc does not see torch's allocations, so the resident set is the measure, and two
  settings make it the step's live memory rather than the C library's:
  - workers start with `MALLOC_MMAP_THRESHOLD_=65536` (`worker_env`), so every allocation of
    64 KiB or more is its own mapping and goes back to the system when torch frees it. With
    glibc's default the threshold adapts up to 32 MiB, the blocks' activations and gradients
    land on the heap, freed heap memory stays resident, and the high-water mark also counts
    memory that was already free (it moved by ±100 MiB between runs of the same step);
  - freed heap memory is returned (`malloc_trim`) and the high-water mark is reset
    (`/proc/self/clear_refs`, Linux ≥ 4.0) just before the step, so an earlier step's peak
    cannot stand in for this one's.

A step is run after a warm-up step, so optimiser state and allocator pools already exist.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's packages first, also where another copy is installed

# Known dense peak throughputs (TFLOP/s) for MFU: bf16 tensor cores; fp32 runs use the TF32 figure.
PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.4, "float32": 494.7},
    "H200": {"bfloat16": 989.4, "float32": 494.7},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
}


def worker_env() -> dict:
    """Environment of a measuring subprocess: the repository importable, glibc's mmap threshold fixed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    return env


def run_worker(script: str, args: Sequence[str], what: str) -> dict:
    """Run `python script *args` in a fresh process; return the JSON object on its last stdout line."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=worker_env())
    if proc.returncode != 0:
        raise RuntimeError(f"worker ({what}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def passthrough(args, skip=("worker",)) -> list:
    """Command-line form of parsed `args` for a worker (`--name=value`)."""
    return [f"--{k}={v}" for k, v in vars(args).items() if k not in skip and v is not None]


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def trim() -> None:
    """Return freed heap memory to the system (glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; lifetime peak


def peak_step_memory(step: Callable, device) -> tuple:
    """Run `step()` once: (peak bytes above the memory before it, seconds, step's return value)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, time.perf_counter() - start, out
    trim()
    _reset_peak_rss()
    before = rss_bytes()
    start = time.perf_counter()
    out = step()
    seconds = time.perf_counter() - start
    return _peak_rss_bytes() - before, seconds, out


CLOCKS = ("auto", "wall", "cpu")


def add_clock_flag(parser) -> None:
    parser.add_argument("--clock", default="auto", choices=CLOCKS,
                        help="wall: elapsed time; cpu: the process's CPU time (all its threads), i.e. the time it "
                             "ran, not the time it waited for a core on a shared machine (use with --threads 1: "
                             "idle OpenMP threads spin); auto: cpu on a CPU device, wall on CUDA")


def resolve_clock(name: str, device) -> str:
    if name not in CLOCKS:
        raise ValueError(f"--clock must be one of {CLOCKS}, got {name!r}")
    if name == "auto":
        return "wall" if device.type == "cuda" else "cpu"
    if name == "cpu" and device.type == "cuda":
        raise ValueError("--clock cpu does not measure GPU work; use wall or auto on CUDA")
    return name


def timed(fn: Callable, device, repeats: int = 1, clock: str = "wall") -> tuple:
    """(seconds of each of `repeats` calls, last return value), synchronising CUDA around each.

    `clock="wall"`: elapsed time; `clock="cpu"`: `time.process_time()`, the CPU time of every
    thread of this process. Other jobs on a shared machine stretch the elapsed time by however
    long the process waited for a core (the 1-minute load moved between 1 and 11 on the 2-core
    development machine during one run); the CPU time counts only the work done. With one torch
    thread it equals the elapsed time of a quiet machine."""
    import torch

    now = time.process_time if clock == "cpu" else time.perf_counter
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = now()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(now() - start)
    return times, out


def resolve_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    return torch.device(name)


def worker_or_device(args, worker):
    """A benchmark's two roles: with `--worker` run `worker(args)` and print its JSON (returns None,
    the subprocess's whole job); otherwise resolve `--device` for the parent run and return it."""
    import json

    if args.worker is not None:
        print(json.dumps(worker(args)))
        return None
    device = resolve_device(args.device)
    args.device = device.type
    return device


def describe_device(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def load_average() -> str:
    """The 1-minute load average against the core count (other jobs on the machine slow the timings)."""
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "load average unknown"


def known_peak_tflops(device, dtype: str):
    """Dense peak TFLOP/s of a known accelerator for `dtype`, else None."""
    if device.type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks.get(dtype)
    return None


def check_positive(args, names: Sequence[str]) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")


def dit_config(args, **overrides):
    """The `DSLConfig` of the benchmarks' DiT from the common flags (dropout 0)."""
    from modeling_dsl import DSLConfig

    fields = dict(vocab_size=args.vocab_size, mask_token_id=args.vocab_size, hidden_size=args.hidden_size,
                  num_attention_heads=args.num_heads, num_hidden_layers=args.num_layers,
                  max_position_embeddings=max(args.seq_len, 128), noise_dim=args.noise_dim, dropout=0.0)
    fields.update(overrides)
    return DSLConfig(**fields)


def add_model_flags(parser, hidden_size=768, num_layers=12, num_heads=12, seq_len=256, batch_size=4) -> None:
    parser.add_argument("--vocab_size", type=int, default=50257)
    parser.add_argument("--hidden_size", type=int, default=hidden_size)
    parser.add_argument("--num_layers", type=int, default=num_layers)
    parser.add_argument("--num_heads", type=int, default=num_heads)
    parser.add_argument("--noise_dim", type=int, default=64)
    parser.add_argument("--seq_len", type=int, default=seq_len)
    parser.add_argument("--batch_size", type=int, default=batch_size)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def dsl_training_step(model, optimizer, ids, sampler, generator, autocast) -> Callable:
    """One step of Algorithm 1 as `DSLTrainer` runs it: per-token SNRs from the config's sampler,
    forward with `snr=`, token CE (the chunked LM head + CE, `return_logits=False`, as the trainer
    computes it), backward, optimiser step. Returns a callable → loss."""

    def step():
        snr = sampler.sample(ids.shape[0], ids.shape[1], generator=generator, device=ids.device)
        with autocast:
            loss = model(input_ids=ids, snr=snr, labels=ids, generator=generator, return_logits=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()

    return step


OPTIMIZERS = ("adamw_torch_fused", "adamw_torch")


def add_optimizer_flag(parser) -> None:
    parser.add_argument("--optim", default="adamw_torch_fused", choices=OPTIMIZERS,
                        help="AdamW as Trainer's default builds it (fused) or the for-loop AdamW")


def adamw(model, optim: str = "adamw_torch_fused", lr: float = 1e-4):
    """AdamW as `Trainer` builds it for `optim` (its default is "adamw_torch_fused"). The for-loop
    version allocates two temporaries of each parameter's size in its step (the V×D matrices')."""
    import torch

    if optim not in OPTIMIZERS:
        raise ValueError(f"--optim must be one of {OPTIMIZERS}, got {optim!r}")
    return torch.optim.AdamW(model.parameters(), lr=lr, fused=optim == "adamw_torch_fused",
                             foreach=False if optim == "adamw_torch" else None)
