"""DSLConfig: validation, presets, serialisation."""

import math

import pytest

from modeling_dsl import DSLConfig

INVALID = [
    ("backbone_type", "gpt2"),
    ("backbone_type", "LLaDA"),
    ("vocab_size", 0),
    ("vocab_size", 10.5),
    ("hidden_size", -8),
    ("num_attention_heads", 0),
    ("num_attention_heads", 5),  # 768 / 5 is not an integer
    ("num_hidden_layers", 0),
    ("cond_dim", 0),
    ("mlp_ratio", 0),
    ("max_position_embeddings", 0),
    ("noise_dim", 0),
    ("noise_dim", True),
    ("dropout", 1.0),
    ("dropout", -0.1),
    ("rope_theta", 0.0),
    ("beta_init", 0.0),
    ("beta_init", float("nan")),
    ("mask_bias_init", float("inf")),
    ("converter_bias", "yes"),
    ("mask_token_id", -1),
    ("mask_token_id", 50258),
    ("roar_prob", 1.5),
    ("roar_prob", -0.1),
    ("roar_type", "soft"),
    ("snr_granularity", "batch"),
    ("snr_max", 0.0),
    ("snr_min", -1.0),
    ("snr_min", 60.0),  # must stay below snr_max = 50
    ("roar_c", 1.2),
    ("lognormal_sigma", 0.0),
    ("lognormal_mu", float("nan")),
    ("snr_clip", 1),
    ("snr_preset", "mine"),
    ("initializer_range", 0.0),
]


@pytest.mark.parametrize("field,value", INVALID, ids=[f"{f}={v!r}" for f, v in INVALID])
def test_invalid_value_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"DSLConfig\.{field}\b"):
        DSLConfig(**{field: value})


def test_at_least_twenty_invalid_values_are_covered():
    assert len(INVALID) >= 20 and len({f for f, _ in INVALID}) >= 20


def test_defaults_are_the_paper_values_and_derived_quantities():
    cfg = DSLConfig()
    assert (cfg.noise_dim, cfg.roar_prob, cfg.snr_max, cfg.lognormal_mu, cfg.lognormal_sigma) == (64, 0.1, 50.0, 1.65, 0.9)
    assert cfg.snr_granularity == "token" and cfg.roar_type == "smoothed"
    assert cfg.effective_beta_init == 1.0
    assert math.isclose(cfg.effective_mask_bias_init, math.log(50257))
    assert cfg.head_dim == 64


DOCUMENTED_PRESET_DIFFERENCES = {
    "snr_preset": ("paper", "authors_code"),
    "snr_granularity": ("token", "sequence"),
    "roar_row_rule": ("bernoulli", "leading"),
    "roar_type": ("smoothed", "atomic"),
    "roar_prob": (0.1, 0.25),
    "snr_max": (50.0, 100.0),
    "lognormal_mu": (1.65, 4.0),
    "lognormal_sigma": (0.9, 1.5),
    "beta_init": (1.0, None),
    "mask_bias_init": (None, math.log(99 * 50258)),
    "visible_snr": (50.0, 100 * math.log(50257) / math.log(35)),
}


def test_presets_differ_exactly_in_the_documented_fields():
    paper = DSLConfig.from_preset("paper").to_dict()
    authors = DSLConfig.from_preset("authors_code").to_dict()
    differing = {k for k in set(paper) | set(authors) if paper.get(k) != authors.get(k)}
    assert differing == set(DOCUMENTED_PRESET_DIFFERENCES)
    for key, (p, a) in DOCUMENTED_PRESET_DIFFERENCES.items():
        assert paper[key] == p
        assert authors[key] == pytest.approx(a) if isinstance(a, float) else authors[key] == a
    assert DSLConfig.from_preset("authors_code", noise_dim=64).effective_beta_init == 0.125
    # "paper" is the default; its visible SNR is written out, the default's None means snr_max = 50
    default = DSLConfig()
    assert {**default.to_dict(), "visible_snr": 50.0} == paper and default.effective_visible_snr == 50.0
    with pytest.raises(ValueError, match="preset"):
        DSLConfig.from_preset("mdlm")


def test_round_trip_and_auto_map(tmp_path):
    cfg = DSLConfig.from_preset("authors_code", vocab_size=100, mask_token_id=100, hidden_size=32,
                                num_attention_heads=4)
    cfg.save_pretrained(tmp_path)
    loaded = DSLConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == cfg.to_dict()
    assert loaded.auto_map == {
        "AutoConfig": "configuration_dsl.DSLConfig",
        "AutoModel": "modeling_dsl.DSLForDiffusionLM",
        "AutoModelForMaskedLM": "modeling_dsl.DSLForDiffusionLM",
    }
