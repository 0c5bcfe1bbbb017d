"""Chunked cross-entropy (finetune_trainer.loss) against today's full-logits path, on CPU in fp32.

Same summed loss and same gradient of every parameter (tied and untied output heads), padded and padding-free
batches, chunk sizes that do and do not divide the token count; and the largest tensor the chunked path ever
creates (forward and backward, seen through a TorchDispatchMode) is one chunk's logits, never the full ones.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

from finetune_contract.names import IGNORE_INDEX
from finetune_trainer.distributed import close_world
from finetune_trainer.loss import causal_lm_loss, chunkable, chunked_cross_entropy, full_loss

VOCAB = 300


def tiny_llama(tied: bool, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
    )
    model = LlamaForCausalLM(config).float()
    model.train()
    return model


def padded_batch(vocab: int = VOCAB) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Two rows, the second padded; prompt tokens and padding ignored."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (2, 13), generator=generator)
    attention_mask = torch.ones(2, 13, dtype=torch.long)
    attention_mask[1, 9:] = 0
    input_ids[1, 9:] = 0
    position_ids = torch.arange(13).repeat(2, 1)
    labels = torch.full((2, 13), IGNORE_INDEX)
    labels[0, 4:12] = input_ids[0, 5:13]
    labels[1, 2:8] = input_ids[1, 3:9]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    return batch, labels


def packed_batch(vocab: int = VOCAB) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Three samples (lengths 7, 5, 11) packed into one row with restarting position ids."""
    generator = torch.Generator().manual_seed(2)
    lengths = (7, 5, 11)
    input_ids = torch.randint(0, vocab, (1, sum(lengths)), generator=generator)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    labels = torch.full((1, sum(lengths)), IGNORE_INDEX)
    start = 0
    for n in lengths:
        labels[0, start + 2 : start + n - 1] = input_ids[0, start + 3 : start + n]
        start += n
    return {"input_ids": input_ids, "position_ids": position_ids}, labels


def loss_and_grads(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor, chunk_tokens: int
) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = causal_lm_loss(model, model, batch, labels, chunk_tokens)
    (loss * 0.37).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == len(list(model.parameters())), "every parameter gets a gradient"
    return float(loss.detach()), grads


def assert_same(full: tuple[float, dict[str, torch.Tensor]], chunked: tuple[float, dict[str, torch.Tensor]]) -> None:
    assert chunked[0] == pytest.approx(full[0], rel=1e-5, abs=1e-6)
    assert chunked[1].keys() == full[1].keys()
    for name, grad in full[1].items():
        torch.testing.assert_close(chunked[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("chunk_tokens", [1, 3, 7, 14, 1000])
def test_chunked_matches_full_loss_and_every_gradient(tied: bool, layout: str, chunk_tokens: int) -> None:
    model = tiny_llama(tied)
    assert chunkable(model)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    batch, labels = padded_batch() if layout == "padded" else packed_batch()
    # 14 loss-counted tokens (padded) / 17 (packed): 1 and 7 divide one of them, 3 neither, 1000 exceeds both.
    full = loss_and_grads(model, batch, labels, 0)
    chunked = loss_and_grads(model, batch, labels, chunk_tokens)
    assert full[0] > 0
    assert_same(full, chunked)
    assert "forward" not in model.lm_head.__dict__, "the head's forward is restored"


def test_no_counted_token_gives_zero_loss_and_zero_gradients_everywhere() -> None:
    """An empty rank's placeholder micro-batch: loss 0, yet every parameter still gets a (zero) gradient."""
    model = tiny_llama(tied=False)
    batch, labels = packed_batch()
    labels = torch.full_like(labels, IGNORE_INDEX)
    full = loss_and_grads(model, batch, labels, 0)
    chunked = loss_and_grads(model, batch, labels, 4)
    assert full[0] == chunked[0] == 0.0
    assert all(not grad.any() for grad in chunked[1].values())
    assert_same(full, chunked)


def test_a_single_token() -> None:
    model = tiny_llama(tied=True)
    batch = {"input_ids": torch.tensor([[5]]), "position_ids": torch.tensor([[0]])}
    labels = torch.tensor([[17]])
    assert_same(loss_and_grads(model, batch, labels, 0), loss_and_grads(model, batch, labels, 1))
    assert_same(loss_and_grads(model, batch, labels, 0), loss_and_grads(model, batch, labels, 8))


@pytest.mark.parametrize("chunk_tokens", [1, 4, 5, 64])
def test_chunked_cross_entropy_with_bias_and_ignored_runs(chunk_tokens: int) -> None:
    """Directly on a head with a bias; the ignored tokens come in runs longer than a chunk."""
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 10, 8, generator=generator, requires_grad=True)
    weight = torch.randn(50, 8, generator=generator, requires_grad=True)
    bias = torch.randn(50, generator=generator, requires_grad=True)
    labels = torch.randint(0, 50, (3, 10), generator=generator)
    labels[0, :] = IGNORE_INDEX
    labels[1, 2:9] = IGNORE_INDEX
    expected = full_loss(torch.nn.functional.linear(hidden, weight, bias), labels)
    expected_grads = torch.autograd.grad(expected, (hidden, weight, bias))
    got = chunked_cross_entropy(hidden, weight, bias, labels, chunk_tokens)
    got_grads = torch.autograd.grad(got, (hidden, weight, bias))
    torch.testing.assert_close(got, expected)
    for a, b in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b)
    narrow = chunked_cross_entropy(hidden, weight, bias, labels.int(), chunk_tokens)  # int32 labels work too
    torch.testing.assert_close(narrow, expected)


def test_evaluation_under_no_grad_matches() -> None:
    model = tiny_llama(tied=False)
    batch, labels = padded_batch()
    with torch.no_grad():
        full = causal_lm_loss(model, model, batch, labels, 0)
        chunked = causal_lm_loss(model, model, batch, labels, 5)
    assert float(chunked) == pytest.approx(float(full), rel=1e-6)


def test_the_head_is_restored_when_the_forward_fails() -> None:
    model = tiny_llama(tied=False)
    batch, labels = packed_batch()
    with pytest.raises(ValueError, match="do not match"):
        causal_lm_loss(model, model, batch, labels[:, :-1], 4)
    assert "forward" not in model.lm_head.__dict__
    assert model(**batch).logits.shape == (1, labels.shape[1], VOCAB)


def test_models_that_change_their_logits_take_the_full_path() -> None:
    model = tiny_llama(tied=False)
    model.config.final_logit_softcapping = 30.0
    assert not chunkable(model)
    model.config.final_logit_softcapping = None
    model.config.model_type = "cohere"  # scales its logits after the head
    assert not chunkable(model)


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op returns (forward and backward alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


@pytest.mark.parametrize("chunk_tokens", [0, 16])
def test_no_tensor_as_large_as_the_full_logits(chunk_tokens: int) -> None:
    """The full path creates [tokens, vocab] tensors; the chunked one at most [chunk, vocab] ones (or the head's
    [vocab, hidden] weight gradient)."""
    vocab = 4096
    model = tiny_llama(tied=True, vocab=vocab)
    tokens = 96
    generator = torch.Generator().manual_seed(4)
    batch = {
        "input_ids": torch.randint(0, vocab, (1, tokens), generator=generator),
        "position_ids": torch.arange(tokens).unsqueeze(0),
    }
    labels = torch.randint(0, vocab, (1, tokens), generator=generator)
    mode = LargestTensor()
    with mode:
        causal_lm_loss(model, model, batch, labels, chunk_tokens).backward()
    if chunk_tokens == 0:
        assert mode.largest >= tokens * vocab
    else:
        hidden = model.config.hidden_size  # the head's weight and its gradient are [vocab, hidden]
        assert mode.largest <= max(chunk_tokens, hidden) * vocab < tokens * vocab
        assert mode.largest >= hidden * vocab  # only backward makes one: the mode did see the backward


def test_with_activation_checkpointing() -> None:
    model = tiny_llama(tied=True)
    model.activation_checkpointing_enable()
    batch, labels = packed_batch()
    assert_same(loss_and_grads(model, batch, labels, 0), loss_and_grads(model, batch, labels, 3))


def _wrapped_rank(rank: int, mode: str, tied: bool, init_file: str) -> None:
    """One of two gloo ranks: chunked vs full under DDP or FSDP2 (every parameter's full gradient after sync)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    clean = False
    try:
        model = tiny_llama(tied)
        wrapped: torch.nn.Module
        if mode == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in model.model.layers:
                fully_shard(layer)
            wrapped = fully_shard(model)
        else:
            wrapped = torch.nn.parallel.DistributedDataParallel(model)
        batch, labels = packed_batch()
        half = labels.shape[1] // 2
        rows = slice(0, half) if rank == 0 else slice(half, None)
        batch = {key: value[:, rows] for key, value in batch.items()}
        labels = labels[:, rows]
        results = []
        for chunk_tokens in (0, 3):
            wrapped.zero_grad(set_to_none=True)
            loss = causal_lm_loss(wrapped, model, batch, labels, chunk_tokens)
            loss.backward()
            grads = {}
            for name, param in model.named_parameters():
                assert param.grad is not None, name
                grad = param.grad
                grads[name] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad.clone()
            results.append((float(loss.detach()), grads))
        assert_same(results[0], results[1])
        clean = True
    finally:
        # The trainer's teardown (finetune_trainer.distributed.close_world): FSDP's modules hold the group's last
        # gloo work objects, so they go first; then, after a clean run, both ranks meet before leaving the group.
        # Without this, a rank sometimes aborted at exit ("terminate called without an active exception").
        model = wrapped = None
        gc.collect()
        close_world(synchronize=clean)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_ddp_and_fsdp2_match_the_full_path(mode: str, tied: bool, tmp_path) -> None:
    """The head runs inside the wrapped forward: DDP's all-reduce and FSDP2's unsharded (DTensor) parameters and
    reduce-scatter see the same gradients as with full logits, tied embedding included."""
    import torch.multiprocessing as mp

    mp.spawn(_wrapped_rank, args=(mode, tied, str(tmp_path / "init")), nprocs=2, join=True)
