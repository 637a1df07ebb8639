"""DSLForDiffusionLM: input conventions, loss, denoiser, gradient checkpointing, bf16, remote code."""

import os
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, tiny_model
from modeling_dsl import DSLForDiffusionLM

V = TINY["vocab_size"]
WEIGHT_STD = 0.2  # every weight random (MDLM's init starts adaLN and the head at zero)


def test_default_snr_convention_mask_is_zero_visible_is_snr_max():
    model = tiny_model(weight_std=WEIGHT_STD)
    ids = torch.tensor([[1, V, 3, 4]])
    attn = torch.tensor([[1, 1, 1, 0]])
    z, snr = model.noisy_embeds_from_ids(ids, attention_mask=attn, generator=torch.Generator().manual_seed(0))
    assert snr.tolist() == [[50.0, 0.0, 50.0, 0.0]]  # padding counts as hidden too
    assert torch.count_nonzero(z[0, 1]) == 0 and torch.count_nonzero(z[0, 3]) == 0
    z_clean, _ = model.noisy_embeds_from_ids(ids, noise=False)
    torch.testing.assert_close(z_clean[0, 0], 50.0 * model.noise_embeddings()[1])
    # per-sequence SNR broadcast, and the forward uses exactly this corruption (no mask id in the row:
    # a nonzero SNR at a mask id is an error)
    ids = torch.tensor([[1, 2, 3, 4]])
    out = model(input_ids=ids, snr=torch.tensor([7.0]), generator=torch.Generator().manual_seed(0))
    z7, _ = model.noisy_embeds_from_ids(ids, snr=torch.tensor([7.0]), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.logits, model(noisy_embeds=z7).logits)
    assert out.snr.tolist() == [[7.0] * 4]
    # clean_mask: those positions noise-free, the others exactly as without the mask
    clean = torch.tensor([[True, False, False, True]])
    zc, _ = model.noisy_embeds_from_ids(ids, snr=torch.tensor([7.0]), generator=torch.Generator().manual_seed(0),
                                        clean_mask=clean)
    torch.testing.assert_close(zc[0, 0], 7.0 * model.noise_embeddings()[1])
    torch.testing.assert_close(zc[0, 2], z7[0, 2])
    assert (z7[0, 0] - zc[0, 0]).abs().max() > 0.1
    out_c = model(input_ids=ids, snr=torch.tensor([7.0]), clean_mask=clean, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out_c.logits, model(noisy_embeds=zc).logits)


def test_loss_is_token_mean_ce_over_scored_non_pad_positions():
    model = tiny_model(weight_std=WEIGHT_STD)
    ids = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, 2] = -100
    attn = torch.ones(2, 6, dtype=torch.long)
    attn[1, 4:] = 0
    out = model(input_ids=ids, attention_mask=attn, labels=labels, generator=torch.Generator().manual_seed(2))
    keep = (labels != -100) & attn.bool()
    manual = F.cross_entropy(out.logits[keep], ids[keep])
    torch.testing.assert_close(out.loss, manual)
    with pytest.raises(ValueError, match="labels"):
        model(input_ids=ids, labels=torch.full_like(ids, V))  # the mask id is not a target
    with pytest.raises(ValueError, match="labels must have shape"):
        model(input_ids=ids, labels=ids[:, :3])


def test_padding_keys_are_not_attended():
    model = tiny_model(weight_std=WEIGHT_STD)
    ids = torch.randint(0, V, (1, 8), generator=torch.Generator().manual_seed(3))
    attn = torch.tensor([[1] * 5 + [0] * 3])
    z, _ = model.noisy_embeds_from_ids(ids, noise=False)
    a = model(noisy_embeds=z, attention_mask=attn).logits[:, :5]
    z2 = z.clone()
    z2[:, 5:] = torch.randn(1, 3, 8) * 30  # change only the padded positions
    b = model(noisy_embeds=z2, attention_mask=attn).logits[:, :5]
    torch.testing.assert_close(a, b)
    c = model(noisy_embeds=z2).logits[:, :5]
    assert (a - c).abs().max() > 1e-3  # without the mask they would leak in


def test_bad_inputs_raise_value_errors_naming_the_argument():
    model = tiny_model(weight_std=WEIGHT_STD)
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="input_ids and noisy_embeds"):
        model()
    with pytest.raises(ValueError, match="input_ids and noisy_embeds"):
        model(input_ids=ids, noisy_embeds=torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match="noisy_embeds must have shape"):
        model(noisy_embeds=torch.zeros(1, 4, 7))
    with pytest.raises(ValueError, match="clean_mask must have shape"):
        model(input_ids=ids, clean_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="snr and clean_mask are only used with input_ids"):
        model(noisy_embeds=torch.zeros(1, 4, 8), snr=torch.ones(1, 4))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids must have shape"):
        model(input_ids=torch.zeros(4, dtype=torch.long))


def test_denoise_is_posterior_mean_embedding_and_top_k_renormalises():
    model = tiny_model(weight_std=WEIGHT_STD)
    z = torch.randn(2, 5, 8) * 3
    logits = model(noisy_embeds=z).logits
    E = model.noise_embeddings()
    torch.testing.assert_close(model.denoise(z), torch.softmax(logits, -1) @ E)
    top = model.denoise(z, posterior_top_k=1)
    torch.testing.assert_close(top, E[logits.argmax(-1)])
    with pytest.raises(ValueError, match="posterior_top_k"):
        model.denoise(z, posterior_top_k=0)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(4))
    results = []
    for checkpointing in (False, True):
        model = tiny_model(seed=7, weight_std=WEIGHT_STD, dropout=0.1).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert all(block.gradient_checkpointing for block in model.backbone.blocks)
        torch.manual_seed(11)  # dropout; checkpointing replays the same RNG state
        out = model(input_ids=ids, labels=ids, generator=torch.Generator().manual_seed(5))
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
    assert grads_a["embed.weight"].abs().sum() > 0 and grads_a["converter.beta"].abs() > 0


def test_bf16_forward_has_no_nan():
    model = tiny_model(weight_std=WEIGHT_STD).to(torch.bfloat16)
    ids = torch.randint(0, V, (2, 16))
    ids[:, ::3] = V
    out = model(input_ids=ids, labels=ids.masked_fill(ids == V, -100), generator=torch.Generator().manual_seed(0))
    assert out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np, torch
    from transformers import AutoModel, AutoModelForMaskedLM

    folder, ids_file, out_file = sys.argv[1:4]
    ids = torch.from_numpy(np.load(ids_file))
    results = {}
    for name, auto in (("auto", AutoModel), ("masked_lm", AutoModelForMaskedLM)):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        with torch.no_grad():
            logits = model(input_ids=ids, generator=torch.Generator().manual_seed(123)).logits
        np.save(out_file + "." + name + ".npy", logits.numpy())
        results[name] = type(model).__name__
    try:
        import modeling_dsl  # noqa: F401
        results["package_importable"] = True
    except ImportError:
        results["package_importable"] = False
    print(json.dumps(results))
    """
)


def test_saved_model_loads_as_remote_code_without_the_package(tmp_path, run_without_package):
    model = tiny_model(weight_std=WEIGHT_STD)
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    files = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "modeling_dsl.py", "configuration_dsl.py", "noise_dsl.py",
            "converter_dsl.py", "backbone_mdlm.py", "generation_dsl.py"} <= files
    ids = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(9))
    ids[0, 4] = V
    np.save(tmp_path / "ids.npy", ids.numpy())
    # Compare with the same checkpoint loaded in-process: safetensors-loaded weights sit at other
    # memory alignments than freshly built ones, and BLAS rounds differently (~1e-6) there.
    reloaded = DSLForDiffusionLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = reloaded(input_ids=ids, generator=torch.Generator().manual_seed(123)).logits.numpy()
        original = model(input_ids=ids, generator=torch.Generator().manual_seed(123)).logits.numpy()
    np.testing.assert_allclose(expected, original, rtol=0, atol=1e-5)
    report = run_without_package(REMOTE_SCRIPT, folder, tmp_path / "ids.npy", tmp_path / "out")
    assert report == {"auto": "DSLForDiffusionLM", "masked_lm": "DSLForDiffusionLM", "package_importable": False}
    for name in ("auto", "masked_lm"):
        got = np.load(tmp_path / f"out.{name}.npy")
        np.testing.assert_array_equal(got, expected)
