"""Start-up checks shared by the command-line scripts: every input and output path is checked before
any work starts, and each failure names the flag, the path and what is wrong."""

from __future__ import annotations

import os
import re

# huggingface_hub's repo id rule: "name" or "namespace/name", word characters, '-' and '.'.
_HUB_ID = re.compile(r"^[\w.\-]{1,96}(/[\w.\-]{1,96})?$")


def looks_like_hub_id(value: str) -> bool:
    """True when `value` could name a Hub repository (and is not written as a local path)."""
    return (bool(_HUB_ID.match(value)) and not value.startswith((".", "/", "~")) and ".." not in value
            and "--" not in value)


def check_source(value: str | None, flag: str, kind: str = "folder") -> None:
    """A model or tokenizer source: an existing local folder, or something that can only be a Hub id.
    A missing local path is reported as such (not as an invalid Hub repo id)."""
    if value is None:
        return
    if os.path.isdir(value):
        return
    if os.path.exists(value):
        raise ValueError(f"{flag} {value!r} is a file; expected a {kind} (or a Hub repo id)")
    if not looks_like_hub_id(value):
        raise FileNotFoundError(f"{flag}: no such local {kind}: {value!r} (does not exist; not a Hub repo id either)")


def describe_missing(value: str, flag: str) -> str:
    """Prefix for a load failure of `value`: says whether it was tried as a local folder."""
    if os.path.isdir(value):
        return f"{flag} {value!r}: could not load this local folder"
    return (f"{flag} {value!r}: not a local folder (no such directory under {os.getcwd()!r}), and loading it as "
            f"a Hub repo id failed")


def check_input_file(value: str | None, flag: str) -> None:
    """A data file or folder: it must exist, and a file must hold some text."""
    if value is None:
        return
    if not os.path.exists(value):
        raise FileNotFoundError(f"{flag}: no such file or folder: {value!r}")
    if os.path.isfile(value):
        with open(value, "rb") as f:
            head = f.read(1 << 16)
        if not head.strip():
            raise ValueError(f"{flag} {value!r} is empty (no text to train on)")


def check_output_file(value: str | None, flag: str) -> None:
    """A file the script writes at the end: its folder must exist and be writable, and the path must
    not be a folder, so a long run is not lost at the last step."""
    if value is None:
        return
    if os.path.isdir(value):
        raise ValueError(f"{flag} {value!r} is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{flag} {value!r}: the folder {parent!r} does not exist (create it first)")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{flag} {value!r}: the folder {parent!r} is not writable")


def check_output_dir(value: str, flag: str, allow_nonempty: bool, how_to_allow: str) -> None:
    """A folder a script fills: refuse one that already holds files unless explicitly allowed."""
    if os.path.isfile(value):
        raise ValueError(f"{flag} {value!r} is a file; expected a folder")
    if os.path.isdir(value) and os.listdir(value) and not allow_nonempty:
        shown = sorted(os.listdir(value))
        more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
        raise ValueError(f"{flag} {value!r} is not empty ({', '.join(shown[:5])}{more}); {how_to_allow}")


def run_reporting_errors(body, model: str | None, model_flag: str = "--model"):
    """`body()`, or None after printing `error: …` to stderr when it raises `ValueError` / `OSError`
    (the CLI then exits 2). A model that fails to load (`evaluation.likelihood.ModelLoadError`) is
    reported with the flag and what is missing at that path."""
    import sys

    from evaluation.likelihood import ModelLoadError

    try:
        return body()
    except ModelLoadError as err:
        print(f"error: {describe_missing(model, model_flag)}: {err}", file=sys.stderr)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
    return None
