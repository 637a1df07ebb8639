"""Configuration of DSL (Discrete Stochastic Localization) diffusion language models.

One config describes the three parts of a DSL model (paper arXiv 2602.16169, §4):
the spherical token embeddings and softmax converter, the bidirectional backbone, and the
per-token SNR distribution used for training (Algorithm 1).

This file must import only the standard library, torch and transformers: it is shipped as Hub
remote code next to the weights.
"""

import math
from typing import Optional

from transformers import PretrainedConfig

BACKBONE_TYPES = ("mdlm_dit",)  # "llada" slots in here with backbone_llada.py
SNR_GRANULARITIES = ("token", "sequence")
ROAR_TYPES = ("smoothed", "atomic")
SNR_PRESETS = ("paper", "authors_code")


class DSLConfig(PretrainedConfig):
    r"""Configuration for [`DSLForDiffusionLM`].

    Backbone (`backbone_type="mdlm_dit"`: the MDLM diffusion transformer, time conditioning removed):
        vocab_size (`int`, 50257): number of real tokens the model embeds and predicts (GPT-2: 50257).
            The converter has `vocab_size + 1` slots; the last one is the mask slot.
        hidden_size (`int`, 768): DiT width D.
        num_attention_heads (`int`, 12): attention heads; must divide `hidden_size` into an even
            head dimension (rotary embedding).
        num_hidden_layers (`int`, 12): DiT blocks.
        cond_dim (`int`, 128): width of the (constant, σ = 0) adaLN conditioning vector.
        mlp_ratio (`int`, 4): MLP width = `mlp_ratio * hidden_size`.
        max_position_embeddings (`int`, 1024): longest sequence the model is meant for (MDLM's
            `model_length`). Generation refuses longer sequences.
        dropout (`float`, 0.1): dropout on the residual branches (attention dropout is 0 as in MDLM).
        rope_theta (`float`, 10000.0): rotary base.

    Converter (paper §4.2; π = softmax(β·z·[E;0]ᵀ + b), h = W_trans·π + c):
        noise_dim (`int`, 64): dimension d of the unit-sphere token embeddings E.
        beta_init (`float` or `None`, 1.0): initial β. `None` means 1/√noise_dim (authors' code).
        mask_bias_init (`float` or `None`, `None`): initial pre-softmax bias of the mask slot. `None`
            means ln(vocab_size), so at z = 0 the mask slot holds half of the mass.
        converter_bias (`bool`, True): whether h = W_trans·π has an additive bias c.
        mask_token_id (`int`, 50257): the id that marks a masked position in `input_ids`. It may be
            `vocab_size` (MDLM: the mask is not a real token) or a real id (LLaDA's 126336).

    Training SNR distribution (paper Algorithm 1, App. C.1):
        roar_prob (`float`, 0.1): probability 1/k that a token (or a sequence, see
            `snr_granularity`) takes a ROAR endpoint SNR instead of a LogNormal one.
        roar_type (`str`, "smoothed"): "smoothed" draws γ ~ U(0, snr_min) (hidden) or
            U(roar_c·snr_max, snr_max) (visible); "atomic" uses exactly 0 or snr_max.
        snr_granularity (`str`, "token"): "token" draws every SNR per token (Alg. 1). "sequence"
            (authors' code) draws one LogNormal γ per sequence, and a ROAR sequence reveals a
            uniformly random number of its positions.
        snr_min (`float`, 1.0): γ_min, upper end of the hidden ROAR endpoint.
        snr_max (`float`, 50.0): γ_max, the SNR of a visible clean token at training and inference.
        roar_c (`float`, 0.8): c in U(c·γ_max, γ_max).
        lognormal_mu (`float`, 1.65), lognormal_sigma (`float`, 0.9): ln γ ~ N(μ, σ²).
        snr_clip (`bool`, False): clip LogNormal draws to [snr_min, snr_max] (Alg. 1's optional clip).
        snr_preset (`str`, "paper"): name of the preset these values came from (informational).
    """

    model_type = "dsl_diffusion"
    # Filled so that `save_pretrained` writes the map for every Auto class we support, not only
    # the one `register_for_auto_class` sets.
    _default_auto_map = {
        "AutoConfig": "configuration_dsl.DSLConfig",
        "AutoModel": "modeling_dsl.DSLForDiffusionLM",
        "AutoModelForMaskedLM": "modeling_dsl.DSLForDiffusionLM",
    }

    def __init__(
        self,
        backbone_type: str = "mdlm_dit",
        vocab_size: int = 50257,
        hidden_size: int = 768,
        num_attention_heads: int = 12,
        num_hidden_layers: int = 12,
        cond_dim: int = 128,
        mlp_ratio: int = 4,
        max_position_embeddings: int = 1024,
        dropout: float = 0.1,
        rope_theta: float = 10000.0,
        noise_dim: int = 64,
        beta_init: Optional[float] = 1.0,
        mask_bias_init: Optional[float] = None,
        converter_bias: bool = True,
        mask_token_id: int = 50257,
        roar_prob: float = 0.1,
        roar_type: str = "smoothed",
        snr_granularity: str = "token",
        snr_min: float = 1.0,
        snr_max: float = 50.0,
        roar_c: float = 0.8,
        lognormal_mu: float = 1.65,
        lognormal_sigma: float = 0.9,
        snr_clip: bool = False,
        snr_preset: str = "paper",
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.backbone_type = backbone_type
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        self.cond_dim = cond_dim
        self.mlp_ratio = mlp_ratio
        self.max_position_embeddings = max_position_embeddings
        self.dropout = dropout
        self.rope_theta = rope_theta
        self.noise_dim = noise_dim
        self.beta_init = beta_init
        self.mask_bias_init = mask_bias_init
        self.converter_bias = converter_bias
        self.mask_token_id = mask_token_id
        self.roar_prob = roar_prob
        self.roar_type = roar_type
        self.snr_granularity = snr_granularity
        self.snr_min = snr_min
        self.snr_max = snr_max
        self.roar_c = roar_c
        self.lognormal_mu = lognormal_mu
        self.lognormal_sigma = lognormal_sigma
        self.snr_clip = snr_clip
        self.snr_preset = snr_preset
        self.initializer_range = initializer_range
        kwargs.setdefault("auto_map", dict(self._default_auto_map))
        self.validate_fields()  # before transformers' own checks, which read derived fields like head_dim
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def effective_beta_init(self) -> float:
        """β₀: `beta_init`, or 1/√d when it is `None` (the authors' code)."""
        return 1.0 / math.sqrt(self.noise_dim) if self.beta_init is None else float(self.beta_init)

    @property
    def effective_mask_bias_init(self) -> float:
        """Initial mask-slot bias: `mask_bias_init`, or ln V (mask mass ½ at z = 0) when `None`."""
        if self.mask_bias_init is None:
            return math.log(self.vocab_size)
        return float(self.mask_bias_init)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset_fields(cls, preset: str, vocab_size: int = 50257) -> dict:
        """Field values of a named training preset.

        `"paper"`: the paper's App. C.1 / Algorithm 1 (per-token mixture, smoothed ROAR at γ_max=50,
        LogNormal(1.65, 0.9), β₀ = 1, mask bias ln V).
        `"authors_code"`: the authors' OWT research code (reference/dsl_official.md §0, §5):
        per-sequence LogNormal(2.69, 1.41), atomic ROAR at 100 on a quarter of the sequences
        (their `mixed` path), β₀ = 1/√d, mask bias ln(99(V+1)) (99 % mask mass at z = 0).
        """
        if preset == "paper":
            return dict(
                snr_preset="paper", snr_granularity="token", roar_type="smoothed", roar_prob=0.1,
                snr_max=50.0, lognormal_mu=1.65, lognormal_sigma=0.9, beta_init=1.0,
                mask_bias_init=None,
            )
        if preset == "authors_code":
            return dict(
                snr_preset="authors_code", snr_granularity="sequence", roar_type="atomic",
                roar_prob=0.25, snr_max=100.0, lognormal_mu=2.69, lognormal_sigma=1.41,
                beta_init=None, mask_bias_init=math.log(99.0 * (vocab_size + 1)),
            )
        raise ValueError(f"preset must be one of {SNR_PRESETS}, got {preset!r}")

    @classmethod
    def from_preset(cls, preset: str = "paper", **kwargs) -> "DSLConfig":
        """Build a config from a named preset (`"paper"` or `"authors_code"`); `kwargs` override
        backbone fields (and, if given explicitly, preset fields)."""
        fields = cls.preset_fields(preset, kwargs.get("vocab_size", 50257))
        fields.update(kwargs)
        return cls(**fields)

    # ------------------------------------------------------------------ validation
    def __iter__(self):
        # transformers warns about any `*_token_id` outside [0, vocab_size) while iterating the
        # config; our mask id may be exactly vocab_size (the converter's extra slot), which
        # `validate_fields` checks instead.
        for key in super().__iter__():
            if key == "mask_token_id" and self.__dict__.get(key) == self.vocab_size:
                continue
            yield key

    def validate_fields(self) -> None:
        """Raise `ValueError` naming the first field that is out of its allowed range."""

        def bad(field, allowed):
            raise ValueError(f"DSLConfig.{field} must be {allowed}, got {getattr(self, field)!r}")

        def check_int(field, low):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                bad(field, f"an integer >= {low}")

        def check_float(field, low, high, low_open=False, high_open=False):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                bad(field, f"a finite number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")
            if value < low or value > high or (low_open and value == low) or (high_open and value == high):
                bad(field, f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")

        if self.backbone_type not in BACKBONE_TYPES:
            bad("backbone_type", f"one of {BACKBONE_TYPES}")
        for field in ("vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers",
                      "cond_dim", "mlp_ratio", "max_position_embeddings", "noise_dim"):
            check_int(field, 1)
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 2:
            bad("num_attention_heads", f"a divisor of hidden_size={self.hidden_size} leaving an even head dim")
        check_float("dropout", 0.0, 1.0, high_open=True)
        check_float("rope_theta", 0.0, math.inf, low_open=True, high_open=True)
        if self.beta_init is not None:
            check_float("beta_init", 0.0, math.inf, low_open=True, high_open=True)
        if self.mask_bias_init is not None:
            check_float("mask_bias_init", -math.inf, math.inf, low_open=True, high_open=True)
        if not isinstance(self.converter_bias, bool):
            bad("converter_bias", "True or False")
        if isinstance(self.mask_token_id, bool) or not isinstance(self.mask_token_id, int) or not (
            0 <= self.mask_token_id <= self.vocab_size
        ):
            bad("mask_token_id", f"an integer in [0, vocab_size={self.vocab_size}]")
        check_float("roar_prob", 0.0, 1.0)
        if self.roar_type not in ROAR_TYPES:
            bad("roar_type", f"one of {ROAR_TYPES}")
        if self.snr_granularity not in SNR_GRANULARITIES:
            bad("snr_granularity", f"one of {SNR_GRANULARITIES}")
        check_float("snr_max", 0.0, math.inf, low_open=True, high_open=True)
        check_float("snr_min", 0.0, self.snr_max, high_open=True)
        check_float("roar_c", 0.0, 1.0)
        check_float("lognormal_mu", -math.inf, math.inf, low_open=True, high_open=True)
        check_float("lognormal_sigma", 0.0, math.inf, low_open=True, high_open=True)
        if not isinstance(self.snr_clip, bool):
            bad("snr_clip", "True or False")
        if self.snr_preset not in SNR_PRESETS + ("custom",):
            bad("snr_preset", f"one of {SNR_PRESETS + ('custom',)}")
        check_float("initializer_range", 0.0, math.inf, low_open=True, high_open=True)
