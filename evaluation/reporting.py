"""Reporting shared by every evaluation (summarization now; likelihood and unconditional text next).

- `environment()`: the versions and machine a result came from.
- `write_json()` / `read_json()`: results files, written atomically (a kill leaves the old file or
  the new one, never half of one).
- `JsonlWriter` / `read_jsonl()`: per-sample records, one JSON object a line, appended and flushed
  record by record so that a killed run keeps every finished sample; `read_jsonl(repair=True)`
  drops a partially written last line (the only damage a kill can do) and cuts it from the file.
- `markdown_table()`: a GitHub-flavoured table from rows of dicts.
- `plot_lines()`: a PNG with one panel per group and one line per series (e.g. ROUGE-1 against
  NFE per method, one panel per dataset), with optional horizontal reference lines.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

_VERSIONED = ("torch", "transformers", "datasets", "tokenizers", "accelerate", "safetensors", "rouge_score",
              "evaluate", "numpy")


def _package_version(name: str) -> Optional[str]:
    from importlib import metadata

    for candidate in (name, name.replace("_", "-")):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return None


def _git_commit() -> Optional[str]:
    """Commit of the checkout this package runs from (None outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def environment(device: Optional[str] = None) -> Dict[str, object]:
    """Python, platform, package versions, the project's git commit, and the accelerator behind
    `device` (its name and the CUDA version when it is a GPU)."""
    env: Dict[str, object] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _package_version(name) for name in _VERSIONED},
        "project_commit": _git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device is not None:
        env["device"] = str(device)
        import torch

        if str(device).startswith("cuda") and torch.cuda.is_available():
            env["device_name"] = torch.cuda.get_device_name(torch.device(device))
            env["cuda"] = torch.version.cuda
    return env


def write_json(path: PathLike, obj) -> None:
    """Write `obj` as indented JSON through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False, allow_nan=False)
        handle.write("\n")
    os.replace(tmp, path)


def read_json(path: PathLike):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_jsonl(path: PathLike, repair: bool = False) -> List[dict]:
    """Records of a JSONL file (a missing file has none).

    Every record is written as one line ending in a newline, so a kill during a write can only
    leave a last line without its newline: it is dropped with a warning (with `repair=True` also
    cut from the file, so appending can go on). A bad newline-terminated line raises `ValueError`
    naming it: that is damage, not an interrupted write.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    *complete, tail = data.split(b"\n")  # tail: the bytes after the last newline
    records: List[dict] = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg}); the file is damaged") from None
    if tail.strip():
        logger.warning("%s: dropping a partially written last line (%d bytes) left by an interrupted run",
                       path, len(tail))
        if repair:
            with open(path, "r+b") as handle:
                handle.truncate(len(data) - len(tail))
    return records


class JsonlWriter:
    """Append records to a JSONL file, each as one `write` of a full line, flushed at once."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: Mapping) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(frozen=True)
class Column:
    """A table column: `key` into each row (or a callable of the row), its header, and a format."""

    key: Union[str, Callable[[Mapping], object]]
    header: str
    fmt: str = "{}"

    def cell(self, row: Mapping) -> str:
        value = self.key(row) if callable(self.key) else row.get(self.key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        return self.fmt.format(value)


def markdown_table(columns: Sequence[Column], rows: Iterable[Mapping]) -> str:
    """A markdown table with one line per row."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(c.cell(row).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def plot_lines(panels: Mapping[str, Mapping[str, Sequence[Tuple[float, float]]]], path: PathLike, xlabel: str,
               ylabel: str, title: Optional[str] = None, references: Optional[Mapping[str, Mapping[str, float]]] = None,
               log2_x: bool = True) -> None:
    """Save a PNG: one panel per key of `panels`, in it one line per series (points (x, y)), and
    for `references[panel]` a dashed horizontal line per label (e.g. an extractive baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels) or list(references or {})
    cols = min(3, max(1, len(names)))
    rows = math.ceil(len(names) / cols) if names else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        for label, points in panels.get(name, {}).items():
            points = sorted(points)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        for label, value in (references or {}).get(name, {}).items():
            ax.axhline(value, linestyle="--", color="gray", linewidth=1)
            ax.annotate(label, (0.01, value), xycoords=("axes fraction", "data"), fontsize=8, color="gray",
                        va="bottom")
        xs = sorted({p[0] for pts in panels.get(name, {}).values() for p in pts})
        if log2_x and xs and min(xs) > 0:
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{x:g}" for x in xs])
        ax.margins(y=0.12)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if panels.get(name):
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
