#!/usr/bin/env python3
"""Run every ```bash block of README.md as written, in order, and fail on the first that fails.

This is what `.ci/run` executes. Standard library only: it starts before any virtual environment
exists, because README.md's first block is the install itself (`python3 -m venv .venv && ... pip
install ...`), which it runs verbatim like every other block; the second block is the README's test
command. Each block runs in a fresh `bash -eo pipefail` from the repository root; once `.venv`
exists, blocks run with it activated, as in the reader's terminal after the quick start.

Sizing marker. A block that would be too big for CI (GPUs, full datasets, Hub downloads) is preceded
in README.md by an HTML comment, invisible on the rendered page:

    <!-- ci-sized
    $ a setup command run before the block (e.g. build a tiny stand-in checkpoint)
    --max_steps 100000 => --max_steps 2
    --bf16  =>
    -->

Each `OLD => NEW` line replaces the text OLD of the block by NEW (NEW may be empty) before CI runs
it; an OLD the block does not contain fails the check, so marker and command cannot drift apart.
`$ ...` lines run first, in the same environment. Nothing else of the block changes.

Outputs the blocks create at the top of the repository (demo_output/, converted checkpoints,
plots, ...) are deleted afterwards unless `--keep`; `.venv` and the install's egg-info stay.
Exit status: 0 when every block succeeded, else 1 (pytest's "no tests collected", exit 5, is a
failure too, reported as such).

    python3 scripts/check_readme.py            # run them all (what CI does)
    python3 scripts/check_readme.py --list     # print each block as CI would run it
    python3 scripts/check_readme.py --from 3   # start at block 3 (after a fix; needs blocks 1-2's outputs)

Tiny stand-ins for Hub checkpoints, for `$ setup` lines (they need the project's environment):

    python scripts/check_readme.py mdlm-fixture DIR TOKENIZER                # kuleshov-group/mdlm-owt format
    python scripts/check_readme.py llada-fixture DIR TOKENIZER [--released]  # LLaDA-8B / DSL-LLaDA format
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEEP_ALWAYS = {".venv", ".git", "__pycache__", ".pytest_cache"}


@dataclass
class Block:
    number: int  # 1-based, in README order
    line: int  # line of the opening fence
    code: str  # as written in the README
    replacements: list = field(default_factory=list)  # (old, new)
    setup: list = field(default_factory=list)  # shell commands

    def command(self) -> str:
        """The block as CI runs it: setup commands, then the code with the marker's replacements."""
        code = self.code
        for old, new in self.replacements:
            if old not in code:
                raise ValueError(f"README.md block {self.number} (line {self.line}): its ci-sized marker replaces "
                                 f"{old!r}, which the block does not contain")
            code = code.replace(old, new)
        return "\n".join(self.setup + [code])


def parse_marker(text: str, where: str):
    replacements, setup = [], []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("$ "):
            setup.append(line[2:].strip())
        elif "=>" in line:
            old, new = line.split("=>", 1)
            if not old.strip():
                raise ValueError(f"{where}: empty left side in ci-sized line {raw!r}")
            replacements.append((old.strip(), new.strip()))
        else:
            raise ValueError(f"{where}: ci-sized lines are 'OLD => NEW' or '$ command', got {raw!r}")
    return replacements, setup


def parse_readme(text: str) -> list:
    """The ```bash blocks of `text`, each with the ci-sized marker directly above it (if any)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start = i
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if j == len(lines):
                raise ValueError(f"README.md line {start + 1}: unterminated ```bash block")
            block = Block(len(blocks) + 1, start + 1, "\n".join(lines[start + 1 : j]))
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            if k >= 0 and lines[k].strip().endswith("-->"):
                m = k
                while m >= 0 and "<!--" not in lines[m]:
                    m -= 1
                comment = "\n".join(lines[m : k + 1])
                head = re.match(r"\s*<!--\s*ci-sized\b(.*?)-->\s*$", comment, re.S)
                if head:
                    block.replacements, block.setup = parse_marker(head.group(1), f"README.md line {m + 1}")
            blocks.append(block)
            i = j + 1
        else:
            i += 1
    return blocks


def block_env() -> dict:
    env = dict(os.environ)
    venv = ROOT / ".venv"
    if (venv / "bin" / "activate").exists():
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.pop("PYTHONHOME", None)
    return env


def run_block(block: Block) -> int:
    command = block.command()
    print(f"\n=== README.md block {block.number} (line {block.line}) ===\n{command}\n", flush=True)
    start = time.time()
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", command], cwd=ROOT, env=block_env())
    print(f"=== block {block.number}: exit {proc.returncode} after {time.time() - start:.0f} s ===", flush=True)
    return proc.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--list", action="store_true", help="print the blocks as CI runs them, run nothing")
    parser.add_argument("--from", dest="first", type=int, default=1, help="first block to run (1-based)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs the blocks create")
    args = parser.parse_args(argv)
    blocks = parse_readme(Path(args.readme).read_text(encoding="utf-8"))
    if not blocks:
        print("README.md has no ```bash block", file=sys.stderr)
        return 1
    for block in blocks:
        block.command()  # every marker is checked before anything runs
    if args.list:
        for block in blocks:
            print(f"--- block {block.number} (line {block.line}) ---\n{block.command()}\n")
        return 0
    before = set(os.listdir(ROOT))
    failed = None
    try:
        for block in blocks[args.first - 1 :]:
            rc = run_block(block)
            if rc != 0:
                failed = (block, rc)
                break
    finally:
        if not args.keep:
            for name in sorted(set(os.listdir(ROOT)) - before - KEEP_ALWAYS):
                if not name.endswith(".egg-info"):
                    path = ROOT / name
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if failed is not None:
        block, rc = failed
        why = " (pytest collected no tests)" if rc == 5 and "pytest" in block.code else ""
        print(f"\nFAILED: README.md block {block.number} (line {block.line}) exited with {rc}{why}", file=sys.stderr)
        return 1
    print(f"\nall {len(blocks) - args.first + 1} README.md bash blocks ran successfully")
    return 0


def write_mdlm_fixture(folder: str, tokenizer: str) -> None:
    """A tiny checkpoint in the published `kuleshov-group/mdlm-owt` format whose vocabulary fits
    `tokenizer` (V real tokens + MDLM's mask row): the README's MDLM commands run against it in CI."""
    sys.path.insert(0, str(ROOT / "tests"))
    from modeling_dsl import load_tokenizer

    from test_core_mdlm_parity import TINY, write_mdlm_checkpoint

    size = len(load_tokenizer(tokenizer))
    os.makedirs(folder, exist_ok=True)
    write_mdlm_checkpoint(Path(folder), cfg={**TINY, "vocab_size": size + 1})


def write_llada_fixture(folder: str, tokenizer: str, released: bool = False) -> None:
    """A tiny checkpoint in the published `GSAI-ML/LLaDA-8B-Instruct` format (with `released`, in
    the released `liddlefish/DSL-LLaDA-*` format: trained converter tensors included) over
    `tokenizer` plus LLaDA's special tokens and Instruct chat template, context 512: the README's
    LLaDA commands run against it in CI."""
    sys.path.insert(0, str(ROOT / "tests"))
    from llada_checkpoint import llada_tokenizer, write_llada_checkpoint

    write_llada_checkpoint(Path(folder), llada_tokenizer(tokenizer), released=released, max_sequence_length=512,
                           head_std=1.0)


def fixture_main(name: str, args: list) -> int:
    """`NAME DIR TOKENIZER [--released]` (llada-fixture only) → write that fixture."""
    options = ["--released"] if name == "llada-fixture" else []
    if len(args) < 2 or any(a not in options for a in args[2:]):
        print(f"usage: check_readme.py {name} DIR TOKENIZER {' '.join(f'[{o}]' for o in options)}", file=sys.stderr)
        return 2
    if name == "mdlm-fixture":
        write_mdlm_fixture(args[0], args[1])
    else:
        write_llada_fixture(args[0], args[1], released="--released" in args[2:])
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("mdlm-fixture", "llada-fixture"):
        sys.exit(fixture_main(sys.argv[1], sys.argv[2:]))
    sys.exit(main())
