"""Configuration of DSL (Discrete Stochastic Localization) diffusion language models.

One config describes the three parts of a DSL model (paper arXiv 2602.16169, §4):
the spherical token embeddings and softmax converter, the bidirectional backbone, and the
per-token SNR distribution used for training (Algorithm 1).

This file must import only the standard library, torch and transformers: it is shipped as Hub
remote code next to the weights.
"""

import logging
import math
from typing import Optional

from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

# Names of the registered backbones (`modeling_dsl.BACKBONES` maps each to its class; a test keeps
# the two equal). "llada" slots in here with backbone_llada.py.
BACKBONE_TYPES = ("mdlm_dit",)
SNR_GRANULARITIES = ("token", "sequence")
ROAR_TYPES = ("smoothed", "atomic")
ROAR_ROW_RULES = ("bernoulli", "leading")
SNR_PRESETS = ("paper", "authors_code")

# The authors' "unmasked" SNR for GPT-2's vocabulary: γ_hi = 100·ln V / ln 35 with V = 50257
# (reference/dsl_official.md §8.2, `nll_roar`; §10.3), ≈ 304.47.
AUTHORS_VISIBLE_SNR = 100.0 * math.log(50257) / math.log(35)


def warm_start_mask_bias(vocab_size: int) -> float:
    """Mask-slot bias when W_trans starts from a pretrained masked-diffusion model's embedding:
    ln(99·(V+1)), so π(mask | z = 0) = 99(V+1) / (99(V+1) + V) ≈ 0.99 and a masked position feeds
    the backbone (almost) its own [MASK] embedding. Source: the authors' MDLM initialisation
    (`load_weights_from_pretrained`, reference/dsl_official.md §3.1, §4). Measured on the tiny
    MDLM-format fixture (tests/test_presets.py): the converted model's logits stay within 0.011 of
    MDLM's (mask positions at γ = 0), so 99 % is enough for the 0.05 warm-start tolerance.
    """
    return math.log(99.0 * (vocab_size + 1))


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
            means ln(vocab_size), so at z = 0 the mask slot holds half of the mass (a fresh model).
            `DSLForDiffusionLM.from_mdlm` sets `warm_start_mask_bias(V)` = ln(99(V+1)) instead.
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
            uniformly random number k ~ U{0, …, L−1} of its positions at exactly `snr_max`.
        roar_row_rule (`str`, "bernoulli"): which sequences are ROAR when `snr_granularity` is
            "sequence": "bernoulli" — each independently with probability `roar_prob`; "leading" —
            exactly the first ⌊B·roar_prob⌋ rows of every (micro-)batch, the authors' `mixed` path.
            Must be "bernoulli" with token granularity.
        snr_min (`float`, 1.0): γ_min, upper end of the hidden ROAR endpoint (DSL-LLaDA's U[0, 1);
            the paper gives no value).
        snr_max (`float`, 50.0): γ_max, the visible ROAR endpoint of training (and the clip bound of
            `snr_clip`); visible tokens at inference use `visible_snr`.
        visible_snr (`float` or `None`, `None`): SNR at which visible (prompt, revealed, unmasked)
            tokens are fed, noise-free, at inference and as prompts in training. `None` means
            `snr_max`. Each preset sets it so the converter puts ≥ 0.99 of its mass on a visible
            token's own slot (see `preset_fields`).
        roar_c (`float`, 0.8): c in U(c·γ_max, γ_max) (DSL-LLaDA's U[0.8·s_max, s_max]; the paper
            gives no value).
        lognormal_mu (`float`, 1.65), lognormal_sigma (`float`, 0.9): ln γ ~ N(μ, σ²).
        snr_clip (`bool`, False): clip LogNormal draws to [snr_min, snr_max] (Alg. 1's optional clip).
        snr_preset (`str`, "paper"): the preset these values came from, or "custom". A config
            whose preset fields differ from the named preset's is recorded as "custom" (see
            `preset_fields` and `matches_preset`), so the label never claims a preset that was
            overridden.
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
        visible_snr: Optional[float] = None,
        roar_row_rule: str = "bernoulli",
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
        self.visible_snr = visible_snr
        self.roar_row_rule = roar_row_rule
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

    @property
    def effective_visible_snr(self) -> float:
        """SNR of a visible token (prompt, revealed, unmasked): `visible_snr`, or `snr_max` when `None`."""
        return float(self.snr_max if self.visible_snr is None else self.visible_snr)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset_fields(cls, preset: str, vocab_size: int = 50257) -> dict:
        """Field values of a named preset: one complete training configuration each.

        `"paper"` — the paper's Algorithm 1 and App. C.1.
        `"authors_code"` — exactly the authors' `mixed` SNR path with their MDLM initialisation
        (reference/dsl_official.md §3.1, §5; their OWT default is a ROAR-free LogNormal(2.69, 1.41),
        a different configuration this preset does not blend in).

        The source of every value is given beside it. `visible_snr` is chosen by measurement: for
        V = 50257, d = 64 random unit embeddings and z = visible_snr·e (noise-free, as samplers feed
        visible tokens), the converter at the preset's β₀ puts ≥ 0.99 of its mass on the token's
        own slot for 100 % of the tokens, with the preset's mask bias and with the MDLM warm start
        ln(99(V+1)) alike (tests/test_presets.py prints the fractions).
        """
        if preset == "paper":
            return dict(
                snr_preset="paper",
                snr_granularity="token",  # Alg. 1: every token draws its own SNR
                roar_row_rule="bernoulli",  # not used with token granularity
                roar_type="smoothed",  # Alg. 1: U(0, γ_min) / U(c·γ_max, γ_max), Bernoulli(½)
                roar_prob=0.1,  # App. C.1: 1/k = 0.1
                snr_max=50.0,  # App. C.1: γ_max = 50
                snr_min=1.0,  # γ_min: the paper gives none; DSL-LLaDA's U[0, 1) (llada_dsl.md §5.3)
                roar_c=0.8,  # c: the paper gives none; DSL-LLaDA's U[0.8·s_max, s_max] (llada_dsl.md §5.3)
                lognormal_mu=1.65,  # App. C.1
                lognormal_sigma=0.9,  # App. C.1
                snr_clip=False,  # Alg. 1's clip is optional; App. C.1 names none
                beta_init=1.0,  # paper: β learnable, no value; 1 makes π the exact Bayes posterior (§4.2)
                mask_bias_init=None,  # ln V (DESIGN.md): mask mass ½ at z = 0; paper: "favours the mask"
                visible_snr=50.0,  # γ_max of App. C.1; measured: 100 % of tokens ≥ 0.99 at β₀ = 1
            )
        if preset == "authors_code":
            return dict(
                snr_preset="authors_code",
                snr_granularity="sequence",  # `mixed`: ROAR rows per token, one LogNormal γ per other row
                roar_row_rule="leading",  # `mixed`: exactly the first ⌊B/4⌋ rows are ROAR (§5)
                roar_type="atomic",  # `roar`: k ~ U{0..L−1} positions at snr_max, the rest exactly 0
                roar_prob=0.25,  # ⌊B/4⌋ rows
                snr_max=100.0,  # configs/snrpath/mixed.yaml: snr_max 100
                snr_min=1.0,  # unused by atomic ROAR (config default)
                roar_c=0.8,  # unused by atomic ROAR (config default)
                lognormal_mu=4.0,  # configs/snrpath/mixed.yaml: μ 4.0
                lognormal_sigma=1.5,  # configs/snrpath/mixed.yaml: σ 1.5
                snr_clip=False,  # the LogNormal draws are never clipped (§5 notes)
                beta_init=None,  # 1/√d: SoftmaxConvertBias init (§3.1)
                mask_bias_init=warm_start_mask_bias(vocab_size),  # ln(99(V+1)): their MDLM init (§3.1)
                visible_snr=AUTHORS_VISIBLE_SNR,  # γ_hi = 100·ln V/ln 35 ≈ 304.5 (§8.2); measured: 100 %
            )
        raise ValueError(f"preset must be one of {SNR_PRESETS}, got {preset!r}")

    @classmethod
    def from_preset(cls, preset: str = "paper", **kwargs) -> "DSLConfig":
        """Build a config from a named preset (`"paper"` or `"authors_code"`); `kwargs` set backbone
        fields and may override preset fields, in which case `snr_preset` records "custom"."""
        fields = cls.preset_fields(preset, kwargs.get("vocab_size", 50257))
        fields.update(kwargs)
        return cls(**fields)

    def preset_mismatches(self, preset: str) -> list:
        """Names of the fields of `preset` whose value here differs from the preset's.

        β₀, the mask bias and the visible SNR are compared by their effective values (`None` and the
        value it stands for are equal). The mask bias also matches the MDLM warm start
        `warm_start_mask_bias(V)`, which `from_mdlm` sets under every preset (the paper gives no value).
        """
        expected = self.preset_fields(preset, self.vocab_size)
        expected.pop("snr_preset")
        effective = {
            "beta_init": (self.effective_beta_init,
                          1.0 / math.sqrt(self.noise_dim) if expected["beta_init"] is None else expected["beta_init"]),
            "mask_bias_init": (self.effective_mask_bias_init,
                               math.log(self.vocab_size) if expected["mask_bias_init"] is None
                               else expected["mask_bias_init"]),
            "visible_snr": (self.effective_visible_snr,
                            expected["snr_max"] if expected["visible_snr"] is None else expected["visible_snr"]),
        }
        mismatched = []
        for field, want in expected.items():
            if field in effective:
                ours, want = effective[field]
                same = _close(ours, want) or (
                    field == "mask_bias_init" and _close(ours, warm_start_mask_bias(self.vocab_size)))
            elif isinstance(want, float):
                ours = getattr(self, field)
                same = isinstance(ours, (int, float)) and not isinstance(ours, bool) and _close(ours, want)
            else:
                same = getattr(self, field) == want
            if not same:
                mismatched.append(field)
        return mismatched

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
        """Raise `ValueError` naming the first field that is out of its allowed range; then record
        `snr_preset="custom"` when the named preset's fields were changed (`preset_mismatches`)."""

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
        if self.visible_snr is not None:
            check_float("visible_snr", 0.0, math.inf, low_open=True, high_open=True)
        if self.roar_row_rule not in ROAR_ROW_RULES:
            bad("roar_row_rule", f"one of {ROAR_ROW_RULES}")
        if self.roar_row_rule != "bernoulli" and self.snr_granularity == "token":
            bad("roar_row_rule", "'bernoulli' when snr_granularity='token' (the rule picks whole ROAR rows)")
        check_float("snr_min", 0.0, self.snr_max, high_open=True)
        check_float("roar_c", 0.0, 1.0)
        check_float("lognormal_mu", -math.inf, math.inf, low_open=True, high_open=True)
        check_float("lognormal_sigma", 0.0, math.inf, low_open=True, high_open=True)
        if not isinstance(self.snr_clip, bool):
            bad("snr_clip", "True or False")
        if self.snr_preset not in SNR_PRESETS + ("custom",):
            bad("snr_preset", f"one of {SNR_PRESETS + ('custom',)}")
        check_float("initializer_range", 0.0, math.inf, low_open=True, high_open=True)
        # Last, once every field is valid: never claim a preset whose values were overridden.
        if self.snr_preset in SNR_PRESETS:
            mismatched = self.preset_mismatches(self.snr_preset)
            if mismatched:
                logger.info("snr_preset=%r recorded as 'custom': %s differ from the preset", self.snr_preset, mismatched)
                self.snr_preset = "custom"


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
