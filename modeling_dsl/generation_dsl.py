"""Generation for DSL models: `DSLGenerationConfig` and `DSLGenerationMixin.generate()`.

Follows the DiffusionGemma pattern of transformers 5.x: an own mixin (its name ends in
`GenerationMixin`, so `can_generate()` is True without HF's autoregressive machinery) with its own
`adjust_generation_fn`, so `generation_config.json` round-trips through remote code.
"""

import copy
import logging

from transformers import GenerationConfig

logger = logging.getLogger(__name__)


class DSLGenerationConfig(GenerationConfig):
    """Decoding settings for [`DSLGenerationMixin.generate`] (saved as `generation_config.json`)."""

    def __init__(self, **kwargs):
        self.strategy = kwargs.pop("strategy", "sde")
        self.steps = kwargs.pop("steps", 64)
        self.seed = kwargs.pop("seed", None)
        super().__init__(**kwargs)

    def validate(self, strict: bool = False, **kwargs):
        """Only diffusion fields are checked; HF's autoregressive checks do not apply."""

    @classmethod
    def from_model_config(cls, *args, **kwargs):
        raise NotImplementedError("DSLGenerationConfig is not derived from the model config")


class DSLGenerationMixin:
    """Adds `generate()` to [`DSLForDiffusionLM`]."""

    def adjust_generation_fn(self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path,
                             cache_dir=None, force_download=False, proxies=None, local_files_only=False, token=None,
                             revision=None, subfolder="", trust_remote_code=None, **kwargs):
        """Load `generation_config.json` with `DSLGenerationConfig` at `from_pretrained` time."""
        if generation_config is not None:
            self.generation_config = self.generation_config_class.from_dict(generation_config.to_dict())
            return
        if pretrained_model_name_or_path is None:
            return
        try:
            self.generation_config = self.generation_config_class.from_pretrained(
                pretrained_model_name_or_path, cache_dir=cache_dir, force_download=force_download, proxies=proxies,
                local_files_only=local_files_only, token=token, revision=revision, subfolder=subfolder,
                _from_auto=from_auto_class, _from_pipeline=from_pipeline,
            )
        except OSError:
            logger.info("No generation_config.json found; using the default DSLGenerationConfig.")

    def _prepare_generation_config(self, generation_config=None, **kwargs):
        """Deep-copy the default (or given) config and apply keyword overrides; returns (config, leftovers)."""
        config = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        leftovers = config.update(**kwargs)
        return config, leftovers

    def generate(self, *args, **kwargs):
        raise NotImplementedError("generate() is being implemented")
