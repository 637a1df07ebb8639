#!/usr/bin/env python
"""Push a saved DSL checkpoint folder to the Hugging Face Hub in one commit, with its model card.

Uploads the weights (`*.safetensors` + index), `config.json`, `generation_config.json`, the
remote-code files (`*.py`, so `AutoModel.from_pretrained(repo, trust_remote_code=True)` works
without this package), the tokenizer files, `training_args.json`, the evaluation JSONs
(`eval_*.json`), and a model card rendered now (`model_cards`: config, training arguments,
evaluation results as `model-index`, usage for this repository) as README.md. PEFT adapter folders
(`adapter_config.json`) are pushed the same way, with the adapter card. Nothing else in the folder
is uploaded (trainer state, optimizer, sub-folders): those files are listed as skipped.

The folder is checked (config, weights, remote code, tokenizer) and a token is found (`--token`,
else the one saved by `hf auth login`) before anything is sent.

Example:
    python scripts/push_to_hub.py dsl-mdlm-owt-ft --repo_id me/dsl-mdlm-owt --private \\
        --commit-message "DSL continued pretraining, 100k steps" --eval_results likelihood=ll/eval_likelihood.json

`model.push_to_hub(repo_id)` (transformers) also works for a loaded model: it uploads the weights,
config, generation config and remote code, with transformers' own card (or the repository's existing
README.md); this script adds the tokenizer and the DSL card.
"""

import argparse
import fnmatch
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Files pushed (top level of the folder only); README.md is replaced by the rendered card.
WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
CONFIGS = ("config.json", "generation_config.json", "adapter_config.json")
CODE = ("*.py",)
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
             "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.txt")
RECORDS = ("training_args.json", "eval_*.json")
PUSHED = WEIGHTS + CONFIGS + CODE + TOKENIZER + RECORDS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="saved checkpoint folder (save_pretrained / trainer output / adapter)")
    parser.add_argument("--repo_id", "--repo-id", required=True, help="Hub repository, e.g. me/dsl-mdlm-owt")
    parser.add_argument("--token", default=None, help="Hub token (default: the one saved by `hf auth login`)")
    parser.add_argument("--private", action="store_true", help="create the repository as private (ignored if it exists)")
    parser.add_argument("--revision", default=None, help="branch to push to (created from main if missing; default main)")
    parser.add_argument("--commit-message", "--commit_message", dest="commit_message", default=None,
                        help="commit message (default: 'Upload DSL checkpoint')")
    parser.add_argument("--create-pr", "--create_pr", dest="create_pr", action="store_true",
                        help="open a pull request instead of committing to the branch")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder or Hub id to push when the checkpoint folder has none")
    parser.add_argument("--eval_results", nargs="*", default=[], metavar="KIND=PATH",
                        help="extra evaluation JSONs for the card; KIND: summarization, likelihood, unconditional "
                             "(files named eval_<kind>.json in the folder are read anyway)")
    parser.add_argument("--base_model", default=None, help="Hub id the weights came from (card metadata)")
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: huggingface_hub's, https://huggingface.co)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="check, render the card and list the files; send nothing")
    return parser.parse_args(argv)


def select_files(folder: Path):
    """(pushed, skipped) top-level names of the folder; README.md is neither (the card replaces it)."""
    pushed, skipped = [], []
    for entry in sorted(os.listdir(folder)):
        if entry == "README.md":
            continue
        if (folder / entry).is_file() and any(fnmatch.fnmatch(entry, p) for p in PUSHED):
            pushed.append(entry)
        else:
            skipped.append(entry + ("/" if (folder / entry).is_dir() else ""))
    return pushed, skipped


def check_folder(folder: Path, pushed, tokenizer_source) -> None:
    """A pushable checkpoint: config, weights, the remote code its config names, a tokenizer."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder: no such checkpoint folder: {str(folder)!r}")
    adapter = "adapter_config.json" in pushed
    if "config.json" not in pushed and not adapter:
        raise FileNotFoundError(f"folder {str(folder)!r} has no config.json: not a saved model (save it with "
                                "model.save_pretrained or scripts/continue_pretrain.py)")
    if not any(fnmatch.fnmatch(f, "*.safetensors") for f in pushed):
        raise FileNotFoundError(f"folder {str(folder)!r} holds no *.safetensors weights")
    if not adapter:
        import json

        auto_map = json.loads((folder / "config.json").read_text()).get("auto_map") or {}
        needed = sorted({ref.split(".")[0] + ".py" for ref in auto_map.values() if isinstance(ref, str)})
        missing = [f for f in needed if f not in pushed]
        if not needed or missing:
            raise FileNotFoundError(f"folder {str(folder)!r} lacks the remote-code files {missing or '(no auto_map)'}; "
                                    "save it again with model.save_pretrained(folder), which copies them")
    if "tokenizer_config.json" not in pushed and tokenizer_source is None:
        raise FileNotFoundError(f"folder {str(folder)!r} has no tokenizer (tokenizer_config.json); "
                                "pass --tokenizer FOLDER_OR_HUB_ID")


def parse_eval_results(items):
    from model_cards import EVAL_FILES

    extra = {}
    for item in items:
        kind, sep, path = item.partition("=")
        if not sep or kind not in EVAL_FILES:
            raise ValueError(f"--eval_results {item!r}: expected KIND=PATH with KIND one of {sorted(EVAL_FILES)}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--eval_results {kind}: no such file: {path!r}")
        extra[kind] = path
    return extra


def find_token(args) -> str:
    from huggingface_hub import get_token

    token = args.token or get_token()
    if not token:
        raise ValueError("no Hugging Face token: pass --token, or log in once with `hf auth login`")
    return token


def main(argv=None) -> int:
    args = parse_args(argv)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from scripts.cli_checks import check_source

    folder = Path(args.folder)
    try:
        validate_repo_id(args.repo_id)
        pushed, skipped = select_files(folder) if folder.is_dir() else ([], [])
        check_folder(folder, pushed, args.tokenizer)
        check_source(args.tokenizer, "--tokenizer")
        extra = parse_eval_results(args.eval_results)
        token = None if args.dry_run else find_token(args)
    except (HFValidationError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from model_cards import render_model_card

    card = render_model_card(folder, repo_id=args.repo_id, eval_files=extra, base_model=args.base_model)
    with tempfile.TemporaryDirectory() as staging:
        files = {name: folder / name for name in pushed}
        if "tokenizer_config.json" not in pushed:
            from modeling_dsl import load_tokenizer

            for name in load_tokenizer(args.tokenizer).save_pretrained(staging):
                files[os.path.basename(name)] = Path(name)
        card.save(os.path.join(staging, "README.md"))
        files["README.md"] = Path(staging) / "README.md"
        print(f"{'would push' if args.dry_run else 'pushing'} {len(files)} files to {args.repo_id}"
              f"{' (' + args.revision + ')' if args.revision else ''}: {', '.join(sorted(files))}")
        if skipped:
            print(f"not pushed (not part of a checkpoint): {', '.join(skipped)}")
        if args.dry_run:
            print(card.content)
            return 0
        return upload(args, token, files)


def upload(args, token, files) -> int:
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=args.endpoint, token=token)
    try:
        api.create_repo(args.repo_id, private=True if args.private else None, exist_ok=True)  # None: the namespace default
        if args.revision and args.revision != "main":
            api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                      for name, path in sorted(files.items())]
        info = api.create_commit(args.repo_id, operations=operations, revision=args.revision,
                                 commit_message=args.commit_message or "Upload DSL checkpoint",
                                 create_pr=args.create_pr)
    except HfHubHTTPError as err:
        print(f"error: the Hub refused the push to {args.repo_id!r}: {err}", file=sys.stderr)
        return 1
    print(f"pull request: {info.pr_url}" if args.create_pr else f"commit: {info.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
