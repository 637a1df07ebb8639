"""Data of the demo lm-eval tasks (`--include_path evaluation/lm_eval_tasks`): sentences of the last
two articles of the WikiText-103 excerpt shipped in `trainers/demo_data/` (the articles
`scripts/demo.py` holds out from training; CC BY-SA 4.0, see `trainers/demo_data/LICENSE`).
Offline: nothing is downloaded. Each row: `text` (the sentence), `prompt` (its first 8 words),
`answer` (" " + the 9th word), `choices` (the answer and the distinct 9th words of the next sentences,
three in a rotating order) and `label` (the answer's index)."""

import re
from pathlib import Path

HELD_OUT_ARTICLES = 2  # scripts/demo.py --held_out_articles default
PROMPT_WORDS = 8


def sentences():
    import trainers

    text = (Path(trainers.__file__).resolve().parent / "demo_data" / "wikitext103_excerpt.txt").read_text("utf-8")
    articles = [a.strip() for a in text.split("\n\n") if a.strip()][-HELD_OUT_ARTICLES:]
    out = []
    for article in articles:
        for line in article.split("\n"):
            if line.strip().startswith("="):
                continue  # a heading
            out += [s.strip() for s in re.split(r"(?<=\.) ", line) if len(s.split()) >= 12 and "<unk>" not in s]
    return out


def load(**kwargs):
    """lm-eval's `custom_dataset` hook: {"test": Dataset}."""
    import datasets

    rows = []
    pool = sentences()
    for i, sentence in enumerate(pool):
        words = sentence.split()
        answer = " " + words[PROMPT_WORDS]
        choices = [answer]
        for k in range(1, len(pool)):  # the 9th words of the next sentences, two distinct ones
            word = " " + pool[(i + k) % len(pool)].split()[PROMPT_WORDS]
            if word not in choices:
                choices.append(word)
            if len(choices) == 3:
                break
        shift = i % len(choices)
        choices = choices[shift:] + choices[:shift]
        rows.append({"text": sentence, "prompt": " ".join(words[:PROMPT_WORDS]), "answer": answer,
                     "choices": choices, "label": choices.index(answer)})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
