"""The `dsl` model type for lm-evaluation-harness 0.4.13 (`pip install -e ".[lm_eval]"`).

lm-eval finds a model type only in its registry, and reads no plugin entry point
(`../shared/reference/lm_eval.md` §1): the name `dsl` exists once this module is imported. So run
the harness through `scripts/lm_eval_dsl.py`, which imports this module and then calls lm-eval's own
command line (every `lm_eval` flag works, as in LLaDA's / dllm's runners)::

    python scripts/lm_eval_dsl.py --model dsl \\
        --model_args pretrained=DIR,strategy=low_confidence,steps=32,gen_length=32,mc_num=64 \\
        --tasks TASK --device cpu --batch_size 8

or, from Python, import it and pass an instance: `lm_eval.simple_evaluate(model=DSLEvalHarness(...))`.

Request types (lm_eval.md §1):

- `generate_until`: prompts batched (left-padded, `batch_size` rows) through `model.generate()`
  with the decoding settings of `--model_args` (`strategy`, `steps`, `gen_length`, and any other
  `DSLGenerationConfig` field); the generated ids are cut at the first EOS id, decoded without
  special tokens, and the text is cut at the first occurrence of any of the request's `until`
  strings (the harness does not cut). `gen_length` defaults to the request's `max_gen_toks`. Row
  seeds are `seed + request index`, so a result does not depend on the batch it ran in. Of the
  request's generation kwargs only `until` and `max_gen_toks` are read; sampling settings
  (temperature, do_sample) come from `--model_args`, because they mean different things to
  different DSL samplers (a warning names ignored keys once).
- `loglikelihood`: log p(continuation | context) in nats, summed over continuation tokens, from a
  Monte-Carlo estimator (`likelihood=`, a key of `LIKELIHOOD_ESTIMATORS`). The default `mc_mask` is
  LLaDA's masked-diffusion bound (its eq. for conditional likelihood, `get_log_likelihood.py`;
  lm_eval.md §4): with the context visible and clean, draw l ~ U{1..L} for a continuation of L
  tokens, mask l of its tokens uniformly at random, and score

      X = −(L / l) · Σ_{i masked} log p_θ(r_i | context, unmasked r)          (one sample)

  E[X] ≤ log p(continuation | context): X is an unbiased draw of the masked-diffusion ELBO of the
  model's γ ∈ {0, visible} endpoints. The estimate is the mean of `mc_num` i.i.d. samples; its variance is Var(X)/mc_num
  and its standard error s/√mc_num (s the sample standard deviation), logged per call and kept
  in `last_standard_errors`. Samples are seeded from `seed` and the request's tokens, so a score
  does not depend on request order or batching. `is_greedy` is False unless `check_greedy=True`
  (LLaDA's advice; it costs L forward passes per request): then the continuation is decoded from
  all-masked by `low_confidence` with L steps, temperature 0 (LLaDA's greedy check) and compared.
- `loglikelihood_rolling`: the text after the prefix token (BOS, else EOS) in lm-eval's rolling
  windows of the model's context length (`lm_eval.utils.get_rolling_token_windows`), each window's
  tokens scored by the estimator given its context, summed.

One process: the harness's data-parallel mode (`accelerate launch`, rank / world size, gathers)
is not implemented, so several GPUs need one run per task subset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import handle_stop_sequences
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("evaluation.lm_eval_dsl needs lm-evaluation-harness: pip install -e \".[lm_eval]\" "
                      "(lm-eval==0.4.13)") from err

from tqdm.auto import tqdm

from modeling_dsl.generation_dsl import FIELDS

from .summarization import load_model, model_context

# A child of lm-eval's logger, so that the harness's own handler and --verbosity show our messages.
logger = logging.getLogger("lm_eval.models.dsl")

# LLaDA's and Dream's lm-eval runs use 128 Monte-Carlo samples (lm_eval.md §4, DreamLM/Dream#14).
DEFAULT_MC_NUM = 128
# lm-eval's default torch seed (lm_eval.md §2: --seed 0,1234,1234,1234).
DEFAULT_SEED = 1234
# Request keys read by generate_until; the rest of a task's generation_kwargs is ignored (see above).
_READ_GEN_KWARGS = ("until", "max_gen_toks", "max_new_tokens")
_QUIET_GEN_KWARGS = ("do_sample", "temperature")  # lm-eval adds these itself; ignored without a warning


# ============================================================================ estimators


def _forward_logits(model, ids: torch.Tensor, masked: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """fp32 logits (N, V) at the masked positions of `ids` (B, L): masked tokens at γ = 0 (z = 0),
    the others visible and noise-free at the model's visible SNR (as the samplers feed revealed
    tokens); `clean` marks context positions, fed as the backbone's own token embedding when the
    config's `prompt_embedding` is "backbone" (DSL-LLaDA's clean prompt)."""
    config = model.config
    inputs = ids.masked_fill(masked, config.mask_token_id)
    z, _ = model.noisy_embeds_from_ids(inputs, noise=False)
    backbone_prompt = config.effective_prompt_embedding == "backbone"
    hidden = model.hidden_states_with_clean(z, None, clean_ids=ids if backbone_prompt else None,
                                            clean_mask=clean if backbone_prompt else None)
    logits = model.logits_from_hidden(hidden[masked])
    if config.mask_token_id < logits.shape[-1]:  # an in-vocabulary mask id (LLaDA) is never a token
        logits[:, config.mask_token_id] = -math.inf
    return logits


@torch.no_grad()
def mc_mask_loglikelihood(model, context: Sequence[int], target: Sequence[int], num_samples: int,
                          batch_size: int, generator: torch.Generator) -> Tuple[float, float]:
    """LLaDA's Monte-Carlo masked-diffusion bound on log p(target | context), in nats (see the
    module docstring): the mean of `num_samples` i.i.d. draws of −(L/l)·Σ_masked CE, l ~ U{1..L},
    and its standard error (NaN for one sample). Rows of `batch_size` samples share one forward."""
    device = next(model.parameters()).device
    ctx = torch.as_tensor(list(context), dtype=torch.long)
    tgt = torch.as_tensor(list(target), dtype=torch.long)
    P, L = len(ctx), len(tgt)
    if L == 0:
        raise ValueError("the continuation has no tokens to score")
    row = torch.cat([ctx, tgt]).to(device)
    clean = torch.zeros(P + L, dtype=torch.bool, device=device)
    clean[:P] = True
    samples: List[torch.Tensor] = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        counts = torch.randint(1, L + 1, (n,), generator=generator)                 # l ~ U{1..L}
        ranks = torch.argsort(torch.rand(n, L, generator=generator), dim=1)         # a random order
        masked_t = ranks < counts[:, None]                                          # the first l of it
        masked = torch.zeros(n, P + L, dtype=torch.bool)
        masked[:, P:] = masked_t
        masked = masked.to(device)
        ids = row.expand(n, -1)
        logits = _forward_logits(model, ids, masked, clean.expand(n, -1))
        nll = torch.nn.functional.cross_entropy(logits, ids[masked], reduction="none")
        per_row = torch.zeros(n, device=device).index_add_(0, masked.nonzero()[:, 0], nll)
        samples.append(-(L / counts.to(device).float()) * per_row)
    x = torch.cat(samples).double()
    stderr = float(x.std(unbiased=True) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return float(x.mean()), stderr


# The seam for other estimators (e.g. the DSL path-integral bound of evaluation/likelihood.py):
# name → fn(model, context ids, target ids, num_samples, batch_size, generator) → (log p in nats, stderr).
LIKELIHOOD_ESTIMATORS: Dict[str, Callable] = {"mc_mask": mc_mask_loglikelihood}


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any stop string (all of it when none occurs)."""
    cut = len(text)
    for stop in stops:
        if stop:
            at = text.find(stop)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


def request_seed(seed: int, *parts: Sequence[int]) -> int:
    """A seed fixed by `seed` and the request's token ids (independent of order and batching)."""
    digest = hashlib.sha256(json.dumps([seed, *[list(map(int, p)) for p in parts]]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ============================================================================ the model type


def _positive_int(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < 1 or (isinstance(value, float) and value != number):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


@register_model("dsl")
class DSLEvalHarness(LM):
    """A DSL checkpoint as an lm-eval model (see the module docstring for each request type).

    Args (all from `--model_args`, lm-eval's `--batch_size` / `--device` too):
        pretrained: DSL checkpoint folder or Hub id (a LLaDA-format checkpoint loads through
            `from_llada`). tokenizer: default the checkpoint's. revision, dtype ("float32" default).
        batch_size: prompts per `generate()` call and Monte-Carlo samples per forward pass.
        device: "cpu", "cuda", "cuda:1", ... (lm-eval's CLI default "cuda:0" needs a GPU).
        likelihood: estimator name (`LIKELIHOOD_ESTIMATORS`; default "mc_mask").
        mc_num: Monte-Carlo samples per log-likelihood request (default 128, LLaDA / Dream).
        check_greedy: compute `is_greedy` by greedy decoding (default False).
        seed: base seed of the estimator and the samplers (default 1234, lm-eval's torch seed).
        max_length: longest context + continuation (default: the model's max_position_embeddings).
        gen_length: tokens generated per prompt (default: the request's max_gen_toks).
        any other `DSLGenerationConfig` field (strategy, steps, block_length, temperature, ...):
            passed to `generate()`.
    """

    def __init__(self, pretrained: str, tokenizer: Optional[str] = None, revision: Optional[str] = None,
                 dtype: str = "float32", batch_size=1, max_batch_size=None, device: str = "cpu",
                 likelihood: str = "mc_mask", mc_num: int = DEFAULT_MC_NUM, check_greedy: bool = False,
                 seed: int = DEFAULT_SEED, max_length: Optional[int] = None, gen_length: Optional[int] = None,
                 **generation_kwargs):
        super().__init__()
        from modeling_dsl import load_tokenizer

        unknown = sorted(set(generation_kwargs) - set(FIELDS))
        if unknown:
            raise ValueError(f"dsl model_args: unknown argument(s) {unknown}; allowed: pretrained, tokenizer, revision, "
                             f"dtype, batch_size, device, likelihood, mc_num, check_greedy, seed, max_length, "
                             f"gen_length, and the generate() fields {sorted(FIELDS)}")
        if likelihood not in LIKELIHOOD_ESTIMATORS:
            raise ValueError(f"likelihood must be one of {sorted(LIKELIHOOD_ESTIMATORS)}, got {likelihood!r}")
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {dtype!r}")
        device = str(device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but torch finds no GPU; pass --device cpu")
        if not os.path.isdir(str(pretrained)) and (str(pretrained).startswith((".", "/", "~"))
                                                    or os.path.exists(str(pretrained))):
            raise FileNotFoundError(f"dsl model_args: pretrained={pretrained!r} is not a model folder")
        self.batch_size = _positive_int("batch_size", batch_size)
        self.mc_num = _positive_int("mc_num", mc_num)
        self.seed = int(seed)
        self.check_greedy = bool(check_greedy)
        self.estimator = LIKELIHOOD_ESTIMATORS[likelihood]
        self._device = torch.device(device)
        self.model, _ = load_model(str(pretrained), revision, dtype, device)
        self.tokenizer = load_tokenizer(str(tokenizer or pretrained), revision=revision)
        self.max_length = _positive_int("max_length", max_length) if max_length is not None else model_context(self.model)
        self.gen_length = _positive_int("gen_length", gen_length) if gen_length is not None else None
        self.generation_kwargs = dict(generation_kwargs)
        self.last_standard_errors: List[float] = []
        self._warned_keys: set = set()
        # Eos ids end a generated text; the prefix token stands in for an empty context (lm-eval's
        # convention: BOS, else EOS).
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set([] if eos is None else ([eos] if isinstance(eos, int) else list(eos)))
        prefix = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        if prefix is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to stand for an empty context")
        self.prefix_token_id = int(prefix)
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.prefix_token_id

    # ------------------------------------------------------------------ lm-eval plumbing
    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def apply_chat_template(self, chat_history: List[Dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def tok_encode(self, text: str) -> List[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        """HFLM's split: trailing spaces of the context move to the continuation, the continuation's
        ids are the tail of the joint encoding; an empty context becomes the prefix token."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        ctx, cont = (ctx, whole[len(ctx):]) if ctx else ([self.prefix_token_id], whole)
        return ctx, cont

    def _fit(self, context: List[int], target: List[int]) -> List[int]:
        """The context cut from the left so that context + target fit `max_length` (logged)."""
        if len(target) >= self.max_length:
            raise ValueError(f"a continuation of {len(target)} tokens does not fit max_length={self.max_length} "
                             "with any context")
        room = self.max_length - len(target)
        if len(context) > room:
            logger.warning("dsl: context of %d tokens cut from the left to %d (max_length %d)", len(context), room,
                           self.max_length)
            context = context[-room:]
        return context

    def _score(self, context: List[int], target: List[int]) -> Tuple[float, float]:
        generator = torch.Generator().manual_seed(request_seed(self.seed, context, target))
        return self.estimator(self.model, context, target, self.mc_num, self.batch_size, generator)

    def _log_errors(self, kind: str, errors: List[float]) -> None:
        self.last_standard_errors = errors
        finite = [e for e in errors if math.isfinite(e)]
        if finite:
            logger.info("dsl %s: %d requests, %d Monte-Carlo samples each; standard error of log p: mean %.4g, "
                        "max %.4g nats", kind, len(errors), self.mc_num, sum(finite) / len(finite), max(finite))

    # ------------------------------------------------------------------ requests
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> List[Tuple[float, bool]]:
        results, errors = [], []
        for request in tqdm(requests, desc="dsl loglikelihood", disable=disable_tqdm):
            context, continuation = request.args
            ctx, cont = self._encode_pair(context, continuation)
            ctx = self._fit(ctx, cont)
            value, stderr = self._score(ctx, cont)
            greedy = self._is_greedy(ctx, cont) if self.check_greedy else False
            results.append((value, greedy))
            errors.append(stderr)
            self.cache_hook.add_partial("loglikelihood", request.args, (value, greedy))
        self._log_errors("loglikelihood", errors)
        return results

    def _is_greedy(self, context: List[int], target: List[int]) -> bool:
        """LLaDA's check: decode the L target tokens from all-masked, one most-confident argmax per step."""
        ids = torch.tensor([context], device=self.device)
        out = self.model.generate(ids, strategy="low_confidence", steps=len(target), gen_length=len(target),
                                  temperature=0.0, block_length=None, seed=self.seed)
        return out[0, len(context):].tolist() == list(target)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        results, errors = [], []
        for request in tqdm(requests, desc="dsl loglikelihood_rolling", disable=disable_tqdm):
            (text,) = request.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            total, variance = 0.0, 0.0
            for context, target in windows:
                value, stderr = self._score(context, target)
                total += value
                variance += stderr ** 2  # windows draw independently: variances add
            results.append(total)
            errors.append(math.sqrt(variance))
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        self._log_errors("loglikelihood_rolling", errors)
        return results

    def _request_length(self, gen_kwargs: dict) -> int:
        for key in ("max_gen_toks", "max_new_tokens"):
            if gen_kwargs.get(key) is not None:
                return _positive_int(key, gen_kwargs[key])
        return 256  # lm-eval's default max_gen_toks (lm_eval.md §1)

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        results: List[Optional[str]] = [None] * len(requests)
        groups: Dict[str, List[int]] = {}
        for index, request in enumerate(requests):
            gen_kwargs = dict(request.args[1] or {})
            ignored = sorted(set(gen_kwargs) - set(_READ_GEN_KWARGS) - set(_QUIET_GEN_KWARGS) - self._warned_keys)
            if ignored:
                logger.warning("dsl generate_until: ignoring the request's generation kwargs %s (decoding settings "
                               "come from --model_args)", ignored)
                self._warned_keys.update(ignored)
            key = json.dumps({k: gen_kwargs.get(k) for k in _READ_GEN_KWARGS}, sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        progress = tqdm(total=len(requests), desc="dsl generate_until", disable=disable_tqdm)
        for key, indices in groups.items():
            gen_kwargs = json.loads(key)
            stops = handle_stop_sequences(gen_kwargs.get("until"), eos=None)
            length = self.gen_length if self.gen_length is not None else self._request_length(gen_kwargs)
            if length >= self.max_length:
                raise ValueError(f"gen_length={length} leaves no room for a prompt in max_length={self.max_length}")
            prompts = {i: self._prompt(requests[i].args[0], length) for i in indices}
            order = sorted(indices, key=lambda i: -len(prompts[i]))  # similar lengths share a batch
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                for i, text in zip(chunk, self._generate([prompts[i] for i in chunk], chunk, length)):
                    results[i] = cut_at_stop(text, stops)
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
                progress.update(len(chunk))
        progress.close()
        return results

    def _prompt(self, context: str, length: int) -> List[int]:
        ids = self.tok_encode(context) or [self.prefix_token_id]
        room = self.max_length - length
        if len(ids) > room:
            logger.warning("dsl: prompt of %d tokens cut from the left to %d (max_length %d, gen_length %d)",
                           len(ids), room, self.max_length, length)
            ids = ids[-room:]
        return ids

    def _generate(self, prompts: List[List[int]], indices: List[int], length: int) -> List[str]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        settings = {"gen_length": length, "seed": [self.seed + i for i in indices], **self.generation_kwargs}
        out = self.model.generate(ids.to(self.device), attention_mask=mask.to(self.device), **settings)
        texts = []
        for row in out[:, width:].tolist():
            end = next((k for k, t in enumerate(row) if t in self.eos_ids), len(row))
            texts.append(self.tokenizer.decode(row[:end], skip_special_tokens=True))
        return texts
