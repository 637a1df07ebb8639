"""Spherical embeddings and the softmax converter (paper §4.2)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_dsl import SoftmaxConverter, SphericalEmbedding, corrupt, token_posterior


def converter_with(vocab, dim, hidden=4, beta=1.0, mask_bias=None, token_bias=None):
    conv = SoftmaxConverter(vocab, dim, hidden, beta_init=beta,
                            mask_bias_init=math.log(vocab) if mask_bias is None else mask_bias)
    if token_bias is not None:
        with torch.no_grad():
            conv.logit_bias[:vocab] = token_bias
    return conv


@settings(max_examples=50, deadline=None)
@given(
    vocab=st.integers(2, 40), dim=st.integers(2, 16), seed=st.integers(0, 2**31 - 1),
    snrs=st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 200.0)), min_size=1, max_size=8),
)
def test_token_slots_are_the_exact_bayes_posterior(vocab, dim, seed, snrs):
    """β = 1 and b = log prior: π renormalised over the V token slots = p(token | z)."""
    gen = torch.Generator().manual_seed(seed)
    emb = SphericalEmbedding(vocab, dim)
    with torch.no_grad():
        emb.weight.copy_(torch.randn(vocab, dim, generator=gen) * 3)  # not unit: the module normalises
    prior = torch.softmax(torch.randn(vocab, generator=gen), 0)
    conv = converter_with(vocab, dim, token_bias=prior.log())
    tokens = torch.multinomial(prior, len(snrs), replacement=True, generator=gen)[None]
    snr = torch.tensor([snrs])
    z = corrupt(emb(tokens), snr, gen)
    probs = conv.slot_probs(z, emb.unit_weight())
    assert probs.dtype == torch.float32 and probs.shape == (1, len(snrs), vocab + 1)
    tokens_only = probs[..., :vocab] / probs[..., :vocab].sum(-1, keepdim=True)
    exact = token_posterior(z.double(), emb.unit_weight().double(), prior.double())
    torch.testing.assert_close(tokens_only.double(), exact, rtol=1e-4, atol=1e-6)


def test_mask_slot_wins_at_zero_snr():
    conv = converter_with(1000, 16)
    emb = SphericalEmbedding(1000, 16)
    probs = conv.slot_probs(torch.zeros(2, 3, 16), emb.unit_weight())
    assert (probs.argmax(-1) == 1000).all()
    torch.testing.assert_close(probs[..., -1], torch.full((2, 3), 0.5))  # b_V = ln V → ½


def clean_token_mass(snr, draws=1000, vocab=50257, dim=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    emb = SphericalEmbedding(vocab, dim)
    with torch.no_grad():
        emb.weight.copy_(torch.randn(vocab, dim, generator=gen))
    conv = converter_with(vocab, dim)  # β = 1, mask bias ln V
    tokens = torch.randint(0, vocab, (1, draws), generator=gen)
    z = corrupt(emb(tokens), torch.full((1, draws), float(snr)), gen)
    with torch.no_grad():
        probs = conv.slot_probs(z, emb.unit_weight())
    return probs.gather(-1, tokens[..., None])[..., 0]


def test_clean_token_gets_its_own_slot_at_snr_100_for_a_real_vocabulary():
    own = clean_token_mass(100.0)
    assert (own >= 0.99).float().mean() >= 0.99
    # At the paper's γ_max = 50 only ~90 % reach 0.99 even with the exact posterior
    # (reference/dsl_official.md §11): 50 is not a one-hot SNR for d = 64, V = 50257.
    frac50 = (clean_token_mass(50.0, seed=1) >= 0.99).float().mean().item()
    assert 0.8 < frac50 < 0.97, frac50


def test_spherical_rows_stay_unit_after_updates_and_loading():
    emb = SphericalEmbedding(10, 4)
    with torch.no_grad():
        emb.weight.mul_(7.0)
    torch.testing.assert_close(emb.unit_weight().norm(dim=-1), torch.ones(10))
    other = SphericalEmbedding(10, 4)
    other.load_state_dict({"weight": torch.randn(10, 4) * 0.01})
    torch.testing.assert_close(other(torch.arange(10)).norm(dim=-1), torch.ones(10))
    torch.testing.assert_close(other(torch.tensor([3])), other.unit_weight()[3:4])


def test_no_full_vocab_tensor_is_kept_for_backward():
    """SlotProjection recomputes π in backward: what autograd keeps is z, E and the parameters,
    O(B·L·d) besides the weights, never a (B, L, V+1) tensor."""
    batch, length, vocab, dim, hidden = 2, 5, 300, 8, 6
    conv = converter_with(vocab, dim, hidden)
    emb = SphericalEmbedding(vocab, dim)
    z = torch.randn(batch, length, dim, requires_grad=True)
    unit = emb.unit_weight()
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h = conv(z, unit)
    assert h.shape == (batch, length, hidden)
    weights = {p.data_ptr() for p in conv.parameters()} | {unit.data_ptr()}
    activations = [shape for shape, ptr in saved if ptr not in weights]
    assert all(math.prod(shape) <= batch * length * (dim + hidden) for shape in activations), activations
    assert not any(shape[-1:] == (vocab + 1,) and math.prod(shape) >= batch * length * (vocab + 1)
                   for shape, _ in saved), saved
    h.sum().backward()
    assert z.grad is not None and conv.beta.grad is not None and conv.logit_bias.grad is not None
    assert emb.weight.grad is not None and conv.backbone_embedding.weight.grad is not None


def test_softmax_runs_in_fp32_for_a_bf16_model():
    conv = converter_with(50, 8).to(torch.bfloat16)
    emb = SphericalEmbedding(50, 8).to(torch.bfloat16)
    z = torch.randn(1, 3, 8)
    assert conv.slot_probs(z, emb.unit_weight()).dtype == torch.float32
    assert conv(z, emb.unit_weight()).dtype == torch.bfloat16


def test_init_from_embedding_reproduces_backbone_inputs_for_one_hot_slots():
    vocab, dim, hidden = 30, 8, 5
    backbone_embedding = torch.randn(vocab + 1, hidden)  # MDLM layout: mask row last
    conv = converter_with(vocab, dim, hidden, mask_bias=1e4)
    conv.init_from_embedding(backbone_embedding, backbone_embedding[vocab])
    emb = SphericalEmbedding(vocab, dim)
    # z = 0 with a huge mask bias: π is one-hot on the mask slot → the mask embedding
    torch.testing.assert_close(conv(torch.zeros(1, 1, dim), emb.unit_weight())[0, 0], backbone_embedding[vocab])
    conv2 = converter_with(vocab, dim, hidden, mask_bias=-1e4)
    conv2.init_from_embedding(backbone_embedding, backbone_embedding[vocab])
    z = 1e4 * emb(torch.tensor([[7]]))  # a very clean token: π one-hot on its slot
    torch.testing.assert_close(conv2(z, emb.unit_weight())[0, 0], backbone_embedding[7])
    try:
        conv.init_from_embedding(torch.randn(vocab - 1, hidden), torch.randn(hidden))
    except ValueError as err:
        assert "embedding" in str(err)
    else:
        raise AssertionError("a too-small embedding must be refused")
