"""Evaluation library for DSL models (imports `modeling_dsl`; never shipped as remote code).

- `summarization`: zero-shot summarization with ROUGE (the DSL-LLaDA protocol).
- `likelihood`: the DSL path-integral bound, the ROAR estimate and the MDLM ELBO over text data.
- `unconditional`: samples, MAUVE (mauve-text), generative perplexity and unigram entropy.
- `lm_eval_dsl`: the `dsl` model type for lm-evaluation-harness (needs the `lm_eval` extra; imported
  only on demand, e.g. by `scripts/lm_eval_dsl.py`).
- `reporting`: results JSON with the environment, per-sample JSONL, markdown tables, PNG plots —
  shared by every evaluation.
"""
