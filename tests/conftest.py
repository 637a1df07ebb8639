"""Shared pytest settings: the `slow` marker and the location of the shared data folder."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores (CI still runs it)")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` beside the checkout (CI has it); tests needing it skip with a reason elsewhere."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED


BLOCK_PACKAGE = '''
import importlib.abc, sys

class _BlockPackage(importlib.abc.MetaPathFinder):  # a user's machine without this package
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_dsl", "trainers"):
            raise ImportError("blocked: " + name)

sys.meta_path.insert(0, _BlockPackage())
'''


@pytest.fixture
def run_without_package(tmp_path):
    """Run Python `code` (with `sys.argv[1:] = args`) in a fresh interpreter that cannot import
    `modeling_dsl` or `trainers`, with its own transformers modules cache; return the JSON object
    its last stdout line prints."""
    import json
    import os
    import subprocess
    import sys

    def run(code: str, *args, timeout: int = 300) -> dict:
        script = tmp_path / "without_package.py"
        script.write_text(BLOCK_PACKAGE + code)
        env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": ""}
        proc = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture
def single_thread():
    """Run a test on one torch thread: sampler loops are thousands of tiny ops, and two threads on
    two cores only add contention."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
