"""Evaluation library for DSL models (imports `modeling_dsl`; never shipped as remote code).

- `summarization`: zero-shot summarization with ROUGE (the DSL-LLaDA protocol).
- `likelihood`: the DSL path-integral bound, the ROAR estimate and the MDLM ELBO over text data.
- `unconditional`: samples, MAUVE (mauve-text), generative perplexity and unigram entropy.
- `reporting`: results JSON with the environment, per-sample JSONL, markdown tables, PNG plots —
  shared by every evaluation.
"""
