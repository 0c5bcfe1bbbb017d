"""Tests for finetune_trainer.batching: step plans, micro-batch packing, collation, and loss equality on a real model.

The model tests use a tiny random LlamaForCausalLM on CPU in fp32: a packed row must give the same summed token
cross-entropy (and the same gradients) as the samples one by one and as a padded batch, and the known pitfalls
(KV cache or 2D mask on a packed row, averaging micro-batch means) must visibly change the result.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional
from transformers import LlamaConfig, LlamaForCausalLM

from finetune_trainer.batching import (
    IGNORE_INDEX,
    collate_packed,
    collate_padded,
    loss_token_count,
    packing_efficiency,
    plan_step,
    step_batches,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GSM8K_SHARD = SHARED_DATA / "gsm8k" / "train-00000-of-00002.chat.jsonl"

VOCAB = 300
LOSS_RTOL = 1e-5  # fp32 summed CE over a few hundred tokens; exact packing measures ~1e-7
GRAD_RTOL = 1e-5  # global grad norm
GRAD_ATOL = 1e-5  # per-element gradient difference (measured up to 2e-6)
LEAK_MIN_RTOL = 1e-4  # a leak must move the loss well beyond fp32 noise to count as one


@dataclass(frozen=True)
class _Sample:
    input_ids: list[int]
    labels: list[int]


def _samples(lengths: Sequence[int], seed: int = 0) -> list[_Sample]:
    """Random tokens; the first third of each sample is an untrained prompt (-100), the rest trains on itself."""
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(VOCAB) for _ in range(n)]
        prompt = n // 3
        out.append(_Sample(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


# ---------------------------------------------------------------------------------------------------------- plan_step

plan_inputs = st.integers(min_value=1, max_value=200).flatmap(
    lambda max_tokens: st.tuples(
        st.lists(st.integers(min_value=0, max_value=max_tokens), min_size=0, max_size=60),
        st.integers(min_value=1, max_value=9),
        st.just(max_tokens),
        st.booleans(),
    )
)


def _check_plan(plan: list[list[list[int]]], indices: Sequence[int], lengths: Sequence[int], world_size: int) -> None:
    assert len(plan) == world_size
    assert len({len(rank) for rank in plan}) == 1, "ranks must run the same number of micro-steps"
    placed = [i for rank in plan for micro in rank for i in micro]
    assert sorted(placed) == sorted(indices), "every index exactly once"
    rank_tokens = [sum(lengths[i] for micro in rank for i in micro) for rank in plan]
    longest = max((lengths[i] for i in indices), default=0)
    assert max(rank_tokens) - min(rank_tokens) <= longest


@settings(max_examples=300, deadline=None)
@given(plan_inputs)
def test_plan_step_properties(case: tuple[list[int], int, int, bool]) -> None:
    lengths, world_size, max_tokens, padded = case
    indices = list(range(len(lengths)))
    plan = plan_step(indices, lengths, world_size, max_tokens, padded=padded)
    _check_plan(plan, indices, lengths, world_size)
    for rank in plan:
        for micro in rank:
            if padded:
                assert len(micro) * max((lengths[i] for i in micro), default=0) <= max_tokens
            else:
                assert sum(lengths[i] for i in micro) <= max_tokens
    # Deterministic, and independent of the order the step's indices come in.
    assert plan_step(indices[::-1], lengths, world_size, max_tokens, padded=padded) == plan


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=40), st.integers(1, 4))
def test_plan_step_uses_no_more_micro_steps_than_one_sample_each(lengths: list[int], world_size: int) -> None:
    plan = plan_step(range(len(lengths)), lengths, world_size, max_tokens=50)
    samples_per_rank = max(len([i for micro in rank for i in micro]) for rank in plan)
    assert len(plan[0]) <= samples_per_rank


def test_plan_step_more_ranks_than_samples_gives_idle_ranks_empty_micro_steps() -> None:
    lengths = [5, 9]
    plan = plan_step([0, 1], lengths, world_size=4, max_tokens=10)
    _check_plan(plan, [0, 1], lengths, 4)
    assert [len(rank) for rank in plan] == [1, 1, 1, 1]
    assert sum(1 for rank in plan if rank == [[]]) == 2


def test_plan_step_single_sample() -> None:
    assert plan_step([7], [0] * 7 + [12], world_size=1, max_tokens=12) == [[[7]]]


def test_plan_step_empty_step_has_no_micro_steps_anywhere() -> None:
    assert plan_step([], [3, 4], world_size=3, max_tokens=10) == [[], [], []]


def test_plan_step_rejects_a_sample_over_budget_naming_it() -> None:
    with pytest.raises(ValueError, match=r"sample 2 has 11 tokens"):
        plan_step([0, 1, 2], [3, 4, 11], world_size=2, max_tokens=10)


@pytest.mark.parametrize(("world_size", "max_tokens"), [(0, 10), (1, 0)])
def test_plan_step_rejects_bad_arguments(world_size: int, max_tokens: int) -> None:
    with pytest.raises(ValueError, match="world_size"):
        plan_step([0], [1], world_size, max_tokens)


def test_plan_step_splits_a_rank_into_several_micro_steps_when_the_budget_requires() -> None:
    lengths = [6] * 10  # 60 tokens on 2 ranks = 30 each; budget 12 fits two samples -> 3 micro-steps per rank
    plan = plan_step(range(10), lengths, world_size=2, max_tokens=12)
    assert [len(rank) for rank in plan] == [3, 3]
    assert all(sum(lengths[i] for i in micro) <= 12 for rank in plan for micro in rank)


def test_plan_step_last_partial_batch_of_an_epoch_is_planned() -> None:
    lengths = [((i * 37) % 90) + 10 for i in range(23)]
    steps = step_batches(len(lengths), effective_batch_size=8, epochs=1, seed=3)
    assert [len(s) for s in steps] == [8, 8, 7]
    for step in steps:
        _check_plan(plan_step(step, lengths, world_size=3, max_tokens=150), step, lengths, 3)


# ------------------------------------------------------------------------------------------------------- step_batches


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 60), st.integers(1, 25), st.integers(0, 3), st.integers(-5, 5))
def test_step_batches_cover_each_sample_once_per_epoch(num: int, batch: int, epochs: int, seed: int) -> None:
    steps = step_batches(num, batch, epochs, seed)
    per_epoch = -(-num // batch)  # ceil: the last partial chunk is kept
    assert len(steps) == per_epoch * epochs
    for epoch in range(epochs):
        chunk = steps[epoch * per_epoch : (epoch + 1) * per_epoch]
        assert all(len(step) == batch for step in chunk[:-1])
        assert sorted(i for step in chunk for i in step) == list(range(num))
    assert steps == step_batches(num, batch, epochs, seed)


def test_step_batches_keep_the_last_partial_step() -> None:
    steps = step_batches(10, effective_batch_size=4, epochs=1, seed=0)
    assert [len(s) for s in steps] == [4, 4, 2]


def test_step_batches_batch_larger_than_dataset_is_one_step_per_epoch() -> None:
    steps = step_batches(3, effective_batch_size=3840, epochs=2, seed=0)
    assert [sorted(s) for s in steps] == [[0, 1, 2], [0, 1, 2]]


def test_step_batches_order_depends_on_seed_and_epoch() -> None:
    first, second = step_batches(50, 50, epochs=2, seed=1)
    assert first != second
    assert step_batches(50, 50, 1, seed=1) != step_batches(50, 50, 1, seed=2)


def test_step_batches_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="effective_batch_size"):
        step_batches(10, 0, 1, 0)


# ---------------------------------------------------------------------------------------------------------- collation


def test_collate_packed_layout() -> None:
    a, b = _Sample([10, 11, 12], [IGNORE_INDEX, 11, 12]), _Sample([20, 21], [20, 21])
    batch = collate_packed([a, b])
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # Position 2 (a's last token) must not be trained to predict b's first token 20.
    assert batch["shift_labels"].tolist() == [[11, 12, IGNORE_INDEX, 21, IGNORE_INDEX]]
    assert batch["cu_seqlens"].dtype == torch.int32
    assert batch["cu_seqlens"].tolist() == [0, 3, 5]
    assert int(batch["max_length"]) == 3


def test_collate_padded_layout() -> None:
    a, b = _Sample([10, 11, 12], [IGNORE_INDEX, 11, 12]), _Sample([20], [20])
    batch = collate_padded([a, b], pad_token_id=299)
    assert batch["input_ids"].tolist() == [[10, 11, 12], [20, 299, 299]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["shift_labels"].tolist() == [[11, 12, IGNORE_INDEX], [IGNORE_INDEX] * 3]
    assert batch["position_ids"][:, :1].tolist() == [[0], [0]]


def test_collate_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        collate_packed([_Sample([1, 2], [1])])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(IGNORE_INDEX, 5), min_size=1, max_size=12), min_size=1, max_size=6))
def test_loss_token_count_matches_both_collations(label_rows: list[list[int]]) -> None:
    samples = [_Sample([0] * len(row), row) for row in label_rows]
    count = loss_token_count(samples)
    assert count == int((collate_packed(samples)["shift_labels"] != IGNORE_INDEX).sum())
    assert count == int((collate_padded(samples, 0)["shift_labels"] != IGNORE_INDEX).sum())


# ------------------------------------------------------------------------------------------------ packing_efficiency


def test_packing_efficiency_definitions() -> None:
    lengths = [4, 2, 3, 1]
    batches = [[0, 1], [2, 3], []]  # 10 real tokens
    # packed: 3 micro-steps x capacity (largest micro-batch = 6, or the budget) slots
    assert packing_efficiency(batches, lengths, padded=False) == pytest.approx(10 / (3 * 6))
    assert packing_efficiency(batches, lengths, padded=False, max_tokens=8) == pytest.approx(10 / (3 * 8))
    # padded: rows x longest row per micro-batch = 2*4 + 2*3 + 0
    assert packing_efficiency(batches, lengths, padded=True) == pytest.approx(10 / (8 + 6))
    assert packing_efficiency([], lengths, padded=True) == 1.0


def _gsm8k_byte_lengths() -> list[int]:
    """Byte count of the concatenated message contents: a tokenizer-free stand-in for token length."""
    lengths = []
    with GSM8K_SHARD.open(encoding="utf-8") as lines:
        for line in lines:
            messages = json.loads(line)["messages"]
            lengths.append(len("".join(m["content"] for m in messages).encode()))
    return lengths


@pytest.mark.skipif(not GSM8K_SHARD.exists(), reason=f"shared data not present: {GSM8K_SHARD}")
def test_packing_efficiency_on_gsm8k() -> None:
    # The paper's 3,840-sample effective batch on 8 GPUs, budget 16,384 (byte-)tokens per micro-batch.
    lengths = _gsm8k_byte_lengths()
    world_size, budget = 8, 16384
    packed: list[list[int]] = []  # every rank's micro-batches of every step, idle ones included
    padded: list[list[int]] = []
    for step in step_batches(len(lengths), 3840, epochs=1, seed=0):
        packed += [micro for rank in plan_step(step, lengths, world_size, budget) for micro in rank]
        padded += [micro for rank in plan_step(step, lengths, world_size, budget, padded=True) for micro in rank]
    packed_efficiency = packing_efficiency(packed, lengths, padded=False, max_tokens=budget)
    padded_efficiency = packing_efficiency(padded, lengths, padded=True)
    print(f"GSM8K packed {packed_efficiency:.4f} padded {padded_efficiency:.4f} (budget {budget}, {world_size} ranks)")
    assert packed_efficiency >= 0.95
    assert packed_efficiency > padded_efficiency


# --------------------------------------------------------------------------------------- equality on a real tiny model


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request: pytest.FixtureRequest) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        attn_implementation=request.param,
    )
    tiny = LlamaForCausalLM(config)
    assert tiny.dtype == torch.float32
    assert tiny.config._attn_implementation == request.param
    assert tiny.config.use_cache, "the leak test relies on the default use_cache=True"
    tiny.eval()  # no dropout either way; eval keeps it explicit
    return tiny


def _summed_ce(logits: torch.Tensor, shift_labels: torch.Tensor) -> torch.Tensor:
    flat = logits.float().reshape(-1, logits.shape[-1])
    return functional.cross_entropy(flat, shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def _packed_loss(model: LlamaForCausalLM, samples: Sequence[_Sample], **kwargs: object) -> torch.Tensor:
    batch = collate_packed(samples)
    kwargs.setdefault("use_cache", False)
    logits = model(batch["input_ids"], position_ids=batch["position_ids"], **kwargs).logits
    return _summed_ce(logits, batch["shift_labels"])


def _padded_loss(model: LlamaForCausalLM, samples: Sequence[_Sample]) -> torch.Tensor:
    batch = collate_padded(samples, pad_token_id=0)
    out = model(
        batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], use_cache=False
    )
    return _summed_ce(out.logits, batch["shift_labels"])


def _per_sample_loss(model: LlamaForCausalLM, samples: Sequence[_Sample]) -> torch.Tensor:
    return torch.stack([_packed_loss(model, [s]) for s in samples]).sum()


def _value(loss: torch.Tensor) -> float:
    return float(loss.detach())


def _grads(model: LlamaForCausalLM, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _global_norm(grads: Sequence[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


SAMPLE_LENGTHS = [7, 23, 40, 3, 31, 16, 2, 28]


def test_packed_equals_per_sample_and_padded_loss_and_grads(model: LlamaForCausalLM) -> None:
    samples = _samples(SAMPLE_LENGTHS)
    reference = _per_sample_loss(model, samples)
    reference_grads = _grads(model, reference)
    for name, loss in [("packed", _packed_loss(model, samples)), ("padded", _padded_loss(model, samples))]:
        assert _value(loss) == pytest.approx(_value(reference), rel=LOSS_RTOL), name
        grads = _grads(model, loss)
        assert _global_norm(grads) == pytest.approx(_global_norm(reference_grads), rel=GRAD_RTOL), name
        for got, want in zip(grads, reference_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=GRAD_ATOL)


@pytest.mark.parametrize(
    "pitfall",
    [
        pytest.param({"use_cache": True}, id="kv-cache-active"),
        pytest.param({"attention_mask": "ones"}, id="2d-mask-on-packed-row"),
    ],
)
def test_packed_row_leaks_attention_with_cache_or_2d_mask(model: LlamaForCausalLM, pitfall: dict[str, object]) -> None:
    """Documents the pitfall on this transformers version: the block-causal mask silently disappears."""
    samples = _samples(SAMPLE_LENGTHS)
    reference = _value(_per_sample_loss(model, samples))
    kwargs = dict(pitfall)
    if kwargs.get("attention_mask") == "ones":
        kwargs["attention_mask"] = torch.ones((1, sum(SAMPLE_LENGTHS)), dtype=torch.long)
    with torch.no_grad():
        leaked = _value(_packed_loss(model, samples, **kwargs))
    assert abs(leaked - reference) / reference > LEAK_MIN_RTOL


def test_loss_does_not_depend_on_micro_batch_split(model: LlamaForCausalLM) -> None:
    """Sum over all ranks' micro-batches of (summed CE / global loss tokens) = whole-batch token-mean loss."""
    samples = _samples(SAMPLE_LENGTHS, seed=1)
    lengths = [len(s.input_ids) for s in samples]
    total_tokens = loss_token_count(samples)  # what the trainer all-reduces over the effective batch
    whole = _per_sample_loss(model, samples) / total_tokens
    whole_grads = _grads(model, whole)
    mean_of_means = []
    for world_size, budget in [(1, 200), (1, 45), (2, 60), (3, 40)]:
        plan = plan_step(range(len(samples)), lengths, world_size, budget)
        model.zero_grad(set_to_none=True)
        accumulated = 0.0
        micro_means = []
        for micro in (m for rank in plan for m in rank):  # includes idle ranks' empty micro-batches
            chosen = [samples[i] for i in micro]
            loss = _packed_loss(model, chosen)
            (loss / total_tokens).backward()
            accumulated += _value(loss) / total_tokens
            if chosen:
                micro_means.append(_value(loss) / loss_token_count(chosen))
        assert accumulated == pytest.approx(_value(whole), rel=LOSS_RTOL), (world_size, budget)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
        assert _global_norm(grads) == pytest.approx(_global_norm(whole_grads), rel=GRAD_RTOL), (world_size, budget)
        if len(micro_means) > 1:
            mean_of_means.append(sum(micro_means) / len(micro_means))
    # The gradient-accumulation bias: averaging micro-batch means weights short micro-batches too much.
    assert any(abs(m - _value(whole)) / _value(whole) > LEAK_MIN_RTOL for m in mean_of_means)


@pytest.mark.parametrize("padded", [False, True])
def test_empty_micro_batch_runs_and_contributes_nothing(model: LlamaForCausalLM, padded: bool) -> None:
    loss = _padded_loss(model, []) if padded else _packed_loss(model, [])
    grads = _grads(model, loss)
    assert _value(loss) == 0.0
    assert _global_norm(grads) == 0.0
    assert loss_token_count([]) == 0
