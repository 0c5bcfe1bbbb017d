"""The summed token cross-entropy of a causal LM, computed in chunks of tokens: full logits never exist.

Today's path, `model(**batch).logits` then `cross_entropy(logits.float())`, holds the [tokens, vocab] logits in
fp32 (and their gradient in backward): 8 GiB for 16,384 tokens and a 128k vocabulary. Here the LM head runs
inside a custom autograd function over chunks of the loss-counted tokens: forward keeps one chunk's fp32
logits at a time and saves only the hidden states; backward recomputes each chunk's logits and turns them into
the gradients of the hidden states and of the head's weight (and bias) in place, chunk by chunk.

How the hidden states get there: while the wrapped model runs, the causal LM's output head (`lm_head`) is given
a forward that computes this loss instead of logits, so the model's `.logits` comes back as the summed loss.
Everything still happens inside the top-level forward call of whatever wraps the model: DDP prepares its
reducer and all-reduces the head's gradient like any other; FSDP2 has the root's parameters unsharded (and in
its compute dtype) while the head runs and reduce-scatters their gradients as usual; a tied embedding is the
same parameter, so its two gradients add up as they do today. This is only done for model types whose
causal-LM forward uses the head's output unchanged as the logits (`CHUNKABLE_MODEL_TYPES`; e.g. Gemma 2's
logit soft-capping is not); any other model takes today's full-logits path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from finetune_contract.names import IGNORE_INDEX

CHUNKABLE_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "olmo2", "smollm3", "gemma2", "gemma3_text"}
)
"""Model types whose causal-LM forward is `logits = self.lm_head(hidden_states)` and nothing else done to the
logits (Gemma 2/3 only without final logit soft-capping, checked in `chunkable`)."""


def full_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Today's path: the summed fp32 cross-entropy of materialised logits ([..., vocab]) against labels ([...])."""
    return F.cross_entropy(
        logits.float().flatten(0, -2), labels.flatten().long(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def chunkable(model: torch.nn.Module) -> bool:
    """Whether `model` (the unwrapped transformers causal LM) can take the chunked path."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in CHUNKABLE_MODEL_TYPES:
        return False
    if getattr(config, "final_logit_softcapping", None) is not None:
        return False
    get_head = getattr(model, "get_output_embeddings", None)
    return callable(get_head) and type(get_head()) is torch.nn.Linear


def causal_lm_loss(
    model: torch.nn.Module,
    hf_model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    labels: torch.Tensor,
    chunk_tokens: int,
) -> torch.Tensor:
    """The summed cross-entropy of `model(**batch)` against `labels` (already shifted, IGNORE_INDEX not counted).

    `model` is what runs (maybe DDP- or FSDP2-wrapped), `hf_model` the transformers causal LM inside it. With
    `chunk_tokens` > 0 and a chunkable model, at most `chunk_tokens` tokens' logits exist at a time; otherwise
    the full logits are materialised as before. Differentiable either way (call it under no_grad to evaluate).
    """
    if chunk_tokens <= 0 or not chunkable(hf_model):
        return full_loss(model(**batch, use_cache=False).logits, labels)
    head = hf_model.get_output_embeddings()  # type: ignore[operator]
    with _head_computes_loss(head, labels, chunk_tokens):
        loss: torch.Tensor = model(**batch, use_cache=False).logits
    return loss


@contextlib.contextmanager
def _head_computes_loss(head: torch.nn.Linear, labels: torch.Tensor, chunk_tokens: int) -> Iterator[None]:
    """While inside, calling `head` on hidden states [..., hidden] returns their summed loss against `labels`."""

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        # The head's attributes are read at call time: under FSDP2 they are the unsharded (compute-dtype) tensors.
        return chunked_cross_entropy(hidden, head.weight, head.bias, labels, chunk_tokens)

    if "forward" in head.__dict__:
        raise RuntimeError("the output head's forward is already replaced (nested chunked loss?)")
    head.forward = forward  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        del head.forward


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    chunk_tokens: int,
) -> torch.Tensor:
    """Summed fp32 cross-entropy of `hidden @ weight.T + bias` against `labels`, `chunk_tokens` tokens at a time.

    hidden: [..., hidden] with labels' leading shape; weight: [vocab, hidden]. Only the loss-counted tokens are
    projected (an ignored token's gradient is zero anyway). Returns a 0-d fp32 tensor.
    """
    if chunk_tokens <= 0:
        raise ValueError("chunk_tokens must be positive")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1).to(device=flat_hidden.device, dtype=torch.long)
    if flat_labels.shape[0] != flat_hidden.shape[0]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden states {tuple(hidden.shape)}")
    counted = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
    selected = flat_hidden.index_select(0, counted)
    targets = flat_labels.index_select(0, counted)
    loss: torch.Tensor = _ChunkedCrossEntropy.apply(selected, weight, bias, targets, chunk_tokens)
    return loss


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype today's `lm_head` would use: autocast's when it is on, else the weight's."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _chunk_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """One chunk's logits in `dtype` (as the head computes them), upcast to fp32."""
    logits = hidden.to(dtype) @ weight.t()
    if bias is not None:
        logits = logits + bias.to(dtype)
    return logits.float()


def _exp_shifted_(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: logits [rows, vocab] become exp(logits - rowmax); returns (rowmax, row sums), both [rows, 1].
    No second [rows, vocab] tensor is made (log_softmax and logsumexp would make one)."""
    row_max = logits.amax(-1, keepdim=True)
    sums = logits.sub_(row_max).exp_().sum(-1, keepdim=True)
    return row_max, sums


def _summed_cross_entropy_(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum(logsumexp(logits) - logits[target]) over the rows; overwrites `logits`."""
    target_logits = logits.gather(1, targets.unsqueeze(1))
    row_max, sums = _exp_shifted_(logits)
    return (row_max + sums.log() - target_logits).sum()


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """softmax(logits) over the last dimension, in place."""
    _, sums = _exp_shifted_(logits)
    return logits.div_(sums)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Forward: summed loss, chunk by chunk, saving only the inputs. Backward: recompute each chunk's logits."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_tokens: int,
    ) -> torch.Tensor:
        dtype = _compute_dtype(hidden, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            cast_weight = weight.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], chunk_tokens):
                stop = start + chunk_tokens
                logits = _chunk_logits(hidden[start:stop], cast_weight, bias, dtype)
                total += _summed_cross_entropy_(logits, targets[start:stop])
                del logits
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.dtype = dtype
        ctx.chunk_tokens = chunk_tokens
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets = ctx.saved_tensors
        dtype: torch.dtype = ctx.dtype
        chunk_tokens: int = ctx.chunk_tokens
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # Gradients of the head accumulate in fp32 over chunks (as one matmul would), cast once at the end.
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = (
            torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias and bias is not None else None
        )
        scale = grad_total.float()
        with torch.autocast(hidden.device.type, enabled=False):
            cast_weight = weight.to(dtype)
            for start in range(0, hidden.shape[0], chunk_tokens):
                stop = start + chunk_tokens
                chunk = hidden[start:stop].to(dtype)
                # d(sum CE)/d logits = softmax(logits) - onehot(target), computed in place on the fp32 logits.
                grad_logits = _softmax_(_chunk_logits(chunk, cast_weight, bias, dtype))
                rows = torch.arange(grad_logits.shape[0], device=grad_logits.device)
                grad_logits[rows, targets[start:stop]] -= 1.0
                grad_logits.mul_(scale)
                cast_grad = grad_logits.to(dtype)
                del grad_logits
                if grad_hidden is not None:
                    grad_hidden[start:stop] = (cast_grad @ cast_weight).to(hidden.dtype)
                if grad_weight is not None:
                    if cast_grad.dtype == torch.float32:
                        grad_weight.addmm_(cast_grad.t(), chunk)
                    else:
                        grad_weight += (cast_grad.t() @ chunk).float()
                if grad_bias is not None:
                    grad_bias += cast_grad.float().sum(0)
                del cast_grad
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
        )
