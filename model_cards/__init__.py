"""Model cards of DSL checkpoints: Jinja templates (`templates/`) and their renderer
(`huggingface_hub.ModelCard`), used when a checkpoint is saved (trainers, conversion) and pushed.

- `render_model_card(folder, ...)`: the card from the folder's config, generation config,
  training arguments and evaluation JSONs, with `model-index` metadata.
- `write_model_card(folder, ...)`: the same, saved as `folder/README.md`.
"""

from .render import (EVAL_FILES, TRAINING_ARGS_FILE, collect_eval_results, count_parameters, render_model_card,
                     write_model_card)

__all__ = ["EVAL_FILES", "TRAINING_ARGS_FILE", "collect_eval_results", "count_parameters", "render_model_card",
           "write_model_card"]
