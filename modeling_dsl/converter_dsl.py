"""Spherical token embeddings and the softmax converter of DSL (paper §4.2).

The converter maps a noisy embedding z (dimension d) to the backbone's input space (dimension D):

    π = softmax(β · z · Kᵀ + b),   K = [E ; 0] ∈ R^{(V+1)×d}                (paper §4.2)
    h = W_trans · π + c

Slot V is the mask slot: its key is the zero vector, so its logit is b_V for every z. At γ = 0
(z = 0) the mask slot wins; with β = 1 and b = log prior, π restricted to the token slots is the
exact Bayes posterior of the token given z (log p(z|x) = z·x + const for unit x).
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class SphericalEmbedding(nn.Module):
    """Token embeddings kept on the unit sphere: every use renormalises the rows.

    The raw parameter `weight` (V, d) is free; `unit_weight()` and `forward` return unit rows.
    Normalising on use (instead of a cached weight-norm tensor) means training cannot leave the
    sphere and nothing goes stale after `load_state_dict`.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)

    def unit_weight(self) -> torch.Tensor:
        """All rows, unit norm, fp32: shape (V, d)."""
        return F.normalize(self.weight.float(), dim=-1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Unit embeddings of `input_ids`, shape (*input_ids.shape, d), fp32."""
        return F.normalize(F.embedding(input_ids, self.weight).float(), dim=-1)


def softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension in place; returns log Σ exp(logits), shape (…, 1).

    The chunked converter and LM head run it on one reused (chunk, V) buffer: `torch.softmax` and
    `torch.logsumexp` allocate fresh (chunk, V) outputs and temporaries on every call, and on a CPU
    each such allocation (tens of MiB) is a new mapping whose pages fault on first touch (torch.profiler,
    DiT-170M DSL training step at V = 50257, one thread: removing them took the step from 20.7 s to
    16.8 s of CPU time).
    """
    peak = logits.amax(dim=-1, keepdim=True)
    total = logits.sub_(peak).exp_().sum(dim=-1, keepdim=True)
    logits.div_(total)
    return total.log_().add_(peak)


def matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias=None) -> torch.Tensor:
    """out = a @ b (+ bias), written into `out` (a reused buffer) when the dtypes allow it."""
    if out.dtype == a.dtype == b.dtype and (bias is None or bias.dtype == out.dtype):
        return torch.mm(a, b, out=out) if bias is None else torch.addmm(bias, a, b, out=out)
    return out.copy_(a @ b if bias is None else torch.addmm(bias, a, b))


def accumulate_matmul(total: Optional[torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """total + a @ b in fp32 (total None: a fresh fp32 a @ b, so no zero-filled start is needed)."""
    if a.dtype != torch.float32:
        product = (a @ b).float()
        return product if total is None else total.add_(product)
    if total is None:
        return a @ b
    return total.addmm_(a, b)


class SlotProjection(torch.autograd.Function):
    """h = W_trans · softmax(β z Kᵀ + b) + c, K = [E; 0], without keeping π for backward.

    The straightforward autograd graph keeps the fp32 (…, V+1) slot probabilities π for the
    softmax and projection backwards and builds their gradients at full size; at V = 50k that
    dominates a training step's memory. Here forward and backward walk the positions in chunks
    of `chunk_rows` rows, in (chunk, V+1) buffers reused from chunk to chunk, and backward
    recomputes each chunk's π, so only z, E and the parameters are saved (O(B·L·d) besides the
    weights). Gradients (z, E, β, b, W_trans, c) equal the straightforward path's up to float
    rounding.

    Args (of `apply`): z (…, d); unit_embeddings E (V, d); beta (1,); logit_bias (V+1,);
    weight W_trans (D, V+1); bias c (D,) or None; dtype: the projection's matmul dtype (the
    slot logits and softmax run in fp32 always); chunk_rows: positions per chunk; keys: None, or
    [E; 0] (V+1, d) fp32 already padded (inference calls reuse it; backward pads E itself).
    Returns h (…, D) in `dtype`.
    """

    @staticmethod
    def _probs(out: torch.Tensor, scaled: torch.Tensor, keys: torch.Tensor, logit_bias: torch.Tensor) -> torch.Tensor:
        """π of the rows `scaled` (m, d) = β z, written into `out` (m, V+1)."""
        softmax_(torch.addmm(logit_bias, scaled, keys.t(), out=out))
        return out

    @staticmethod
    def forward(ctx, z, unit_embeddings, beta, logit_bias, weight, bias, dtype, chunk_rows, keys=None):
        flat = z.reshape(-1, z.shape[-1])
        out = torch.empty(*z.shape[:-1], weight.shape[0], dtype=dtype, device=z.device)
        out_flat = out.view(-1, weight.shape[0])  # the output itself is no view (callers may write into it)
        with torch.autocast(device_type=z.device.type, enabled=False):
            if keys is None:
                keys = F.pad(unit_embeddings.float(), (0, 0, 0, 1))  # (V+1, d), last row = mask key 0
            w, c, b, beta_f = weight.to(dtype), None if bias is None else bias.to(dtype), logit_bias.float(), beta.float()
            buffer = torch.empty(min(chunk_rows, flat.shape[0]), keys.shape[0], dtype=torch.float32, device=z.device)
            for lo in range(0, flat.shape[0], chunk_rows):
                rows = slice(lo, lo + chunk_rows)
                probs = SlotProjection._probs(buffer[: flat[rows].shape[0]], flat[rows].float() * beta_f, keys, b)
                matmul_into(out_flat[rows], probs.to(dtype), w.t(), c)
        ctx.save_for_backward(z, unit_embeddings, beta, logit_bias, weight, bias)
        ctx.dtype, ctx.chunk_rows = dtype, chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out):
        z, unit_embeddings, beta, logit_bias, weight, bias = ctx.saved_tensors
        need_z, need_e, need_beta, need_b, need_w, need_c = ctx.needs_input_grad[:6]
        dtype, chunk_rows = ctx.dtype, ctx.chunk_rows
        flat = z.reshape(-1, z.shape[-1])
        grad_flat = grad_out.reshape(-1, grad_out.shape[-1])
        need_logits = need_z or need_e or need_beta or need_b
        with torch.autocast(device_type=z.device.type, enabled=False):
            keys = F.pad(unit_embeddings.float(), (0, 0, 0, 1))
            w, b, beta_f = weight.to(dtype), logit_bias.float(), beta.float()
            grad_w = grad_keys = None
            grad_b = torch.zeros_like(b) if need_b else None
            grad_z = torch.empty(flat.shape, dtype=torch.float32, device=z.device) if need_z else None
            grad_beta = torch.zeros((), dtype=torch.float32, device=z.device)
            size = (min(chunk_rows, flat.shape[0]), keys.shape[0])
            probs_buffer = torch.empty(size, dtype=torch.float32, device=z.device)
            grad_buffer = torch.empty(size, dtype=torch.float32, device=z.device) if need_logits else None
            for lo in range(0, flat.shape[0], chunk_rows):
                rows = slice(lo, lo + chunk_rows)
                z_rows = flat[rows].float()
                scaled = z_rows * beta_f
                probs = SlotProjection._probs(probs_buffer[: z_rows.shape[0]], scaled, keys, b)
                g_out = grad_flat[rows].to(dtype)
                if need_w:
                    grad_w = accumulate_matmul(grad_w, g_out.t(), probs.to(dtype))
                if not need_logits:
                    continue
                g_probs = matmul_into(grad_buffer[: z_rows.shape[0]], g_out, w)  # (m, V+1), updated in place
                # softmax backward, g_logits = π ⊙ (g_π − ⟨g_π, π⟩), without (m, V+1) temporaries
                g_logits = g_probs.sub_(torch.linalg.vecdot(g_probs, probs).unsqueeze(-1)).mul_(probs)
                if need_b:
                    grad_b += g_logits.sum(dim=0)
                if need_e:
                    grad_keys = accumulate_matmul(grad_keys, g_logits.t(), scaled)
                if need_z or need_beta:
                    g_scaled = g_logits @ keys  # (m, d)
                    if need_z:
                        grad_z[rows] = g_scaled * beta_f
                    if need_beta:
                        grad_beta += (g_scaled * z_rows).sum()
            if need_w and grad_w is None:  # no positions
                grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=z.device)
            if need_e and grad_keys is None:
                grad_keys = torch.zeros_like(keys)
            grad_c = None
            if need_c and bias is not None:
                grad_c = grad_flat.float().sum(dim=0).to(bias.dtype)
        return (
            None if grad_z is None else grad_z.view(z.shape).to(z.dtype),
            None if grad_keys is None else grad_keys[:-1].to(unit_embeddings.dtype),
            grad_beta.reshape(beta.shape).to(beta.dtype) if need_beta else None,
            None if grad_b is None else grad_b.to(logit_bias.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            grad_c,
            None,
            None,
            None,
        )


class SoftmaxConverter(nn.Module):
    """π = softmax(β z [E;0]ᵀ + b) over V+1 slots, h = W_trans π + c (paper §4.2).

    Args:
        vocab_size: V, the number of token slots (the mask slot is index V).
        noise_dim: d.
        hidden_size: D, the backbone width.
        beta_init: initial β (learnable scalar).
        mask_bias_init: initial b_V; token biases start at 0.
        bias: whether h has the additive bias c.

    Parameter names follow DSL-LLaDA's checkpoints (`beta`, `logit_bias`,
    `backbone_embedding.weight` (D, V+1), `backbone_embedding.bias` (D,)).
    """

    def __init__(self, vocab_size: int, noise_dim: int, hidden_size: int, beta_init: float,
                 mask_bias_init: float, bias: bool = True):
        super().__init__()
        self.vocab_size, self.noise_dim = vocab_size, noise_dim
        self.beta_init, self.mask_bias_init = float(beta_init), float(mask_bias_init)
        # β has shape (1,), not (): DeepSpeed views every parameter as bytes, which 0-dim tensors refuse.
        self.beta = nn.Parameter(torch.full((1,), self.beta_init))
        self.logit_bias = nn.Parameter(torch.zeros(vocab_size + 1))
        self.backbone_embedding = nn.Linear(vocab_size + 1, hidden_size, bias=bias)
        # Not reset_parameters(): under ZeRO-3's zero.Init the Linear is already partitioned
        # (shape [0]) and its own init already ran; only the DSL-specific entries are set here.
        with torch.no_grad():
            self.logit_bias[-1] = self.mask_bias_init
            if self.backbone_embedding.bias is not None:
                self.backbone_embedding.bias.zero_()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.beta.fill_(self.beta_init)
            self.logit_bias.zero_()
            self.logit_bias[-1] = self.mask_bias_init
        self.backbone_embedding.reset_parameters()
        if self.backbone_embedding.bias is not None:
            nn.init.zeros_(self.backbone_embedding.bias)

    def effective_beta(self, beta=None, device=None) -> torch.Tensor:
        """β for one call, fp32 of shape (1,): the learned parameter, or `beta` when given.

        `beta` (a float, or a 0-d / (1,) tensor) replaces the learned β for this call only, without
        touching the weights (DSL-LLaDA decodes with β_inf = 2·β_train). It must be finite and > 0.
        """
        if beta is None:
            return self.beta.float()
        if isinstance(beta, bool) or not isinstance(beta, (int, float, torch.Tensor)):
            raise ValueError(f"beta must be a float or a 0-d / (1,) tensor, got {type(beta).__name__}")
        value = torch.as_tensor(beta, dtype=torch.float32, device=device if device is not None else self.beta.device)
        if value.numel() != 1 or value.dim() > 1:
            raise ValueError(f"beta must be a float or a 0-d / (1,) tensor, got shape {tuple(value.shape)}")
        if not bool(torch.isfinite(value).all() & (value > 0).all()):
            raise ValueError(f"beta must be finite and > 0, got {value.item()}")
        return value.reshape(1)

    def slot_logits(self, z: torch.Tensor, unit_embeddings: torch.Tensor, beta=None) -> torch.Tensor:
        """β z Kᵀ + b in fp32, shape (..., V+1). Autocast is off: a V-way bf16 softmax misorders.

        `beta` replaces the learned β for this call (see `effective_beta`).
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            keys = F.pad(unit_embeddings.float(), (0, 0, 0, 1))  # (V+1, d), last row = mask key 0
            scaled = z.float() * self.effective_beta(beta, z.device)  # fold β into z: (…, d) is cheap, (…, V+1) is not
            return F.linear(scaled, keys, self.logit_bias.float())

    def slot_probs(self, z: torch.Tensor, unit_embeddings: torch.Tensor, beta=None) -> torch.Tensor:
        """π over the V+1 slots (fp32), shape (..., V+1); `beta` as in `slot_logits`."""
        return torch.softmax(self.slot_logits(z, unit_embeddings, beta), dim=-1)

    # Positions per chunk of `SlotProjection`: about 2^23 fp32 slot values (32 MiB) per temporary.
    chunk_elements = 2**23

    def forward(self, z: torch.Tensor, unit_embeddings: torch.Tensor, beta=None) -> torch.Tensor:
        """h = W_trans π + c: (B, L, d) fp32 → (B, L, D) in W_trans's dtype; `beta` as in `slot_logits`.

        The projection runs outside autocast, so under `torch.autocast(bfloat16)` with fp32 weights h
        (the start of the residual stream) stays fp32, as in the authors' code, where the converter
        runs outside autocast (reference/dsl_official.md §3.1). π is never stored at full size:
        [`SlotProjection`] runs over chunks of positions and recomputes π in backward, so training
        keeps no (B, L, V+1) tensor for the backward pass.
        """
        weight = self.backbone_embedding.weight
        beta_value = self.beta if beta is None else self.effective_beta(beta, z.device)
        chunk_rows = max(1, self.chunk_elements // (self.vocab_size + 1))
        return SlotProjection.apply(z, unit_embeddings, beta_value, self.logit_bias, weight,
                                    self.backbone_embedding.bias, weight.dtype, chunk_rows,
                                    self._inference_keys(unit_embeddings))

    def _inference_keys(self, unit_embeddings: torch.Tensor):
        """[E; 0] kept between calls that need no gradient for E and pass the same, unchanged E
        tensor (a sampler passes one E to every step); None otherwise (SlotProjection pads E).
        Padding the (V+1, d) keys anew took ~8 % of an mdlm sampling run's time (profiled at
        V = 50257, converter calls on ~16 changed rows per step)."""
        if (torch.is_grad_enabled() and unit_embeddings.requires_grad) or torch.is_inference(unit_embeddings):
            return None  # inference-mode tensors have no version counter to detect in-place changes
        cache = self.__dict__.get("_keys_cache")
        if cache is None or cache[0] is not unit_embeddings or cache[1] != unit_embeddings._version:
            keys = F.pad(unit_embeddings.detach().float(), (0, 0, 0, 1))
            cache = self.__dict__["_keys_cache"] = (unit_embeddings, unit_embeddings._version, keys)
        return cache[2]

    @torch.no_grad()
    def init_from_embedding(self, embedding: torch.Tensor, mask_embedding: torch.Tensor) -> None:
        """Start W_trans from a backbone's input embedding so a one-hot π reproduces it.

        Args:
            embedding: (V_src, D) input embedding matrix; its first V rows become the token
                columns of W_trans.
            mask_embedding: (D,) the backbone's embedding of its mask token (column V).
        """
        weight = self.backbone_embedding.weight  # (D, V+1)
        if embedding.ndim != 2 or embedding.shape[0] < self.vocab_size or embedding.shape[1] != weight.shape[0]:
            raise ValueError(
                f"embedding must have shape (>= {self.vocab_size}, {weight.shape[0]}), got {tuple(embedding.shape)}"
            )
        if mask_embedding.shape != (weight.shape[0],):
            raise ValueError(f"mask_embedding must have shape ({weight.shape[0]},), got {tuple(mask_embedding.shape)}")
        weight[:, : self.vocab_size].copy_(embedding[: self.vocab_size].T)
        weight[:, self.vocab_size].copy_(mask_embedding)
        if self.backbone_embedding.bias is not None:
            self.backbone_embedding.bias.zero_()
