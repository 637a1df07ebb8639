"""DSL-Diffusion model package: config, noise, converter, backbones, model and generation.

Importing the package registers `DSLConfig` / `DSLForDiffusionLM` with the transformers Auto
classes, so `AutoModel.from_pretrained(path)` works without `trust_remote_code` when the package
is installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from .backbone_base import DSLBackbone, PublishedWeights
from .configuration_dsl import DSLConfig
from .converter_dsl import SoftmaxConverter, SphericalEmbedding
from .generation_dsl import DSLGenerationConfig, DSLGenerationMixin
from .modeling_dsl import DSLDiffusionOutput, DSLForDiffusionLM, DSLPreTrainedModel, load_tokenizer
from .noise_dsl import SNRSampler, corrupt, optimal_denoiser, snr_schedule, token_posterior

AutoConfig.register(DSLConfig.model_type, DSLConfig, exist_ok=True)
AutoModel.register(DSLConfig, DSLForDiffusionLM, exist_ok=True)
AutoModelForMaskedLM.register(DSLConfig, DSLForDiffusionLM, exist_ok=True)

__all__ = [
    "DSLConfig", "DSLForDiffusionLM", "DSLPreTrainedModel", "DSLDiffusionOutput", "DSLGenerationConfig",
    "DSLBackbone", "PublishedWeights",
    "DSLGenerationMixin", "SoftmaxConverter", "SphericalEmbedding", "SNRSampler", "corrupt",
    "optimal_denoiser", "snr_schedule", "token_posterior", "load_tokenizer",
]
