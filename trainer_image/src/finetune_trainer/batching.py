"""Effective batch -> per-rank micro-batches under a token budget, and their collation.

The effective batch is counted in SAMPLES per optimizer step (the paper's recipe, as in InstructLab training).
Each step's samples are spread over the ranks so that every rank gets a similar number of tokens, then packed
into micro-batches that each fit a max-tokens-per-GPU budget. Ranks run gradient-accumulation micro-steps in
lockstep (DDP/FSDP collectives), so every rank gets the same number of micro-steps; a rank with fewer batches gets
empty ones and must still take part in the collectives (forward/backward with zero loss weight).

Two pitfalls shape this module (ARCHITECTURE.md, "Known pitfalls"):

* Packed rows must not attend across samples. `collate_packed` returns position_ids that restart at 0 for every
  sample and NO attention_mask: transformers then builds a block-causal mask itself, but only when the model is
  also called with ``use_cache=False`` (with a KV cache or a 2D mask it silently falls back to plain causal
  attention over the whole row). `shift_labels` are shifted inside each sample, so no sample ever predicts the
  next sample's first token.
* Gradient accumulation must not average per-micro-batch means. The trainer sums the token cross-entropy of each
  micro-batch and divides by the loss-token count of the WHOLE effective batch over all ranks
  (`loss_token_count`, all-reduced), so the result does not depend on how samples fall into micro-batches.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, overload

import numpy as np
import numpy.typing as npt
import torch

from finetune_contract.names import IGNORE_INDEX

TokenIds = Sequence[int] | npt.NDArray[np.integer[Any]]
"""Token ids or labels of one sample: a list, or a view into a memory-mapped dataset."""


class SampleLike(Protocol):
    """What batching needs of `finetune_trainer.data.Sample` (typed structurally to avoid an import cycle).

    Read-only properties so a frozen dataclass with ``list[int]`` fields satisfies it. ``labels`` are NOT shifted:
    ``labels[t]`` is the target for token t itself (or -100 when it is not trained on).
    """

    @property
    def input_ids(self) -> TokenIds: ...

    @property
    def labels(self) -> TokenIds: ...


Lengths = Sequence[int] | npt.NDArray[np.integer[Any]]
"""Token count of each sample by sample index: a list, or an array (a memory-mapped dataset's lengths)."""


class StepBatches(Sequence[list[int]]):
    """The sample indices of every optimizer step over all epochs, made on demand (see `step_batches`).

    Holds one epoch's shuffled order as an int64 array at a time (8 bytes a sample), never every step's list.
    Indexing, slicing, iteration, len and equality behave like the list of lists it stands for.
    """

    def __init__(self, num_samples: int, effective_batch_size: int, epochs: int, seed: int) -> None:
        self.num_samples = num_samples
        self.effective_batch_size = effective_batch_size
        self.epochs = epochs
        self.seed = seed
        self.steps_per_epoch = -(-num_samples // effective_batch_size)
        self._epoch: tuple[int, npt.NDArray[np.int64]] | None = None

    def epoch_order(self, epoch: int) -> npt.NDArray[np.int64]:
        """Epoch `epoch`'s shuffle of all sample indices (cached for the epoch last asked for)."""
        if self._epoch is None or self._epoch[0] != epoch:
            order = list(range(self.num_samples))
            # A string seed is hashed with SHA-512 by `random`: stable across processes, platforms and Python versions.
            random.Random(f"finetune-batching:{self.seed}:{epoch}").shuffle(order)
            self._epoch = (epoch, np.array(order, dtype=np.int64))
        return self._epoch[1]

    def __len__(self) -> int:
        return self.steps_per_epoch * self.epochs

    @overload
    def __getitem__(self, step: int) -> list[int]: ...

    @overload
    def __getitem__(self, step: slice) -> list[list[int]]: ...

    def __getitem__(self, step: int | slice) -> list[int] | list[list[int]]:
        if isinstance(step, slice):
            return [self[i] for i in range(*step.indices(len(self)))]
        if step < 0:
            step += len(self)
        if not 0 <= step < len(self):
            raise IndexError(f"step {step} out of range for {len(self)} steps")
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.effective_batch_size
        indices: list[int] = self.epoch_order(epoch)[start : start + self.effective_batch_size].tolist()
        return indices

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(len(self)):
            yield self[step]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StepBatches):
            mine = (self.num_samples, self.effective_batch_size, self.epochs, self.seed)
            if mine == (other.num_samples, other.effective_batch_size, other.epochs, other.seed):
                return True
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == list(b) for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"StepBatches(num_samples={self.num_samples}, effective_batch_size={self.effective_batch_size}, "
            f"epochs={self.epochs}, seed={self.seed})"
        )


def step_batches(num_samples: int, effective_batch_size: int, epochs: int, seed: int) -> StepBatches:
    """The sample indices of every optimizer step over all epochs.

    Each epoch is a fresh shuffle seeded by (seed, epoch), cut into chunks of `effective_batch_size`; the last
    partial chunk of each epoch is kept, never dropped, so small datasets train on every sample. Being a pure
    function of its arguments, a resumed run finds its place by step number alone. The steps are made on demand,
    one epoch's order at a time (a million samples: about 0.5 s and 8 MB per epoch).
    """
    if num_samples < 0 or effective_batch_size < 1 or epochs < 0:
        raise ValueError(
            f"need num_samples >= 0, effective_batch_size >= 1, epochs >= 0; got {num_samples}, "
            f"{effective_batch_size}, {epochs}"
        )
    return StepBatches(num_samples, effective_batch_size, epochs, seed)


def plan_step(
    sample_indices: Sequence[int],
    lengths: Lengths,
    world_size: int,
    max_tokens: int,
    *,
    padded: bool = False,
) -> list[list[list[int]]]:
    """Split one optimizer step's samples into ``plan[rank][micro_step] = [sample indices]``.

    1. Longest-processing-time first across ranks: samples by decreasing length, each to the rank with the fewest
       tokens so far. The busiest rank then exceeds the idlest by at most one sample's length.
    2. First-fit-decreasing into micro-batches within each rank (the fewest micro-steps a simple greedy finds);
       for packed batches, the same number of micro-batches is then evened out when that lowers the largest one,
       because in lockstep every micro-step costs as much as the largest micro-batch across ranks.
    3. Every rank is padded with empty micro-batches to the same count (collectives must line up).

    The budget `max_tokens` bounds the sum of lengths of a micro-batch, or with ``padded=True`` the padded tensor
    size (rows x longest row). `lengths` is indexed by sample index (a list or an array). Deterministic:
    independent of the order of `sample_indices`. Largest micro-batches come first, so an out-of-memory shows on
    the first micro-step. Costs O(k log k) in the step's k samples, nothing in the dataset's size.
    """
    if world_size < 1 or max_tokens < 1:
        raise ValueError(f"need world_size >= 1 and max_tokens >= 1; got {world_size}, {max_tokens}")
    indices = [int(index) for index in sample_indices]
    if isinstance(lengths, np.ndarray):
        values = lengths[np.asarray(indices, dtype=np.int64)].tolist() if indices else []
    else:
        values = [int(lengths[index]) for index in indices]
    sizes: dict[int, int] = dict(zip(indices, values, strict=True))
    for index in indices:
        if sizes[index] > max_tokens:
            raise ValueError(
                f"sample {index} has {sizes[index]} tokens, more than max_tokens={max_tokens}; "
                "the data layer must drop or truncate it"
            )
    order = sorted(indices, key=lambda index: (-sizes[index], index))
    per_rank = [
        _pack_rank(members, sizes, max_tokens, padded) for members in _split_across_ranks(order, sizes, world_size)
    ]
    micro_steps = max(len(batches) for batches in per_rank)
    return [batches + [[] for _ in range(micro_steps - len(batches))] for batches in per_rank]


def _split_across_ranks(order: Sequence[int], lengths: Mapping[int, int], world_size: int) -> list[list[int]]:
    """LPT: each sample (longest first) goes to the least-loaded rank; ties go to the lowest rank."""
    loads = [(0, rank) for rank in range(world_size)]
    members: list[list[int]] = [[] for _ in range(world_size)]
    for index in order:
        load, rank = heapq.heappop(loads)
        members[rank].append(index)
        heapq.heappush(loads, (load + lengths[index], rank))
    return members


def _pack_rank(order: Sequence[int], lengths: Mapping[int, int], max_tokens: int, padded: bool) -> list[list[int]]:
    """First-fit-decreasing of one rank's samples (given longest first), evened out for packed batches."""
    bins = _first_fit_decreasing(order, lengths, max_tokens, padded)
    if padded or len(bins) < 2:
        return bins  # padded: FFD keeps similar lengths together, which is what saves padding
    even = _even_out(order, lengths, len(bins))
    if max(_tokens(b, lengths) for b in even) < max(_tokens(b, lengths) for b in bins):
        return sorted(even, key=lambda b: -_tokens(b, lengths))
    return bins


def _first_fit_decreasing(
    order: Sequence[int], lengths: Mapping[int, int], max_tokens: int, padded: bool
) -> list[list[int]]:
    bins: list[list[int]] = []
    loads: list[int] = []
    for index in order:
        for slot, members in enumerate(bins):
            # Samples arrive longest first, so members[0] is a padded micro-batch's row length.
            cost = (len(members) + 1) * lengths[members[0]] if padded else loads[slot] + lengths[index]
            if cost <= max_tokens:
                members.append(index)
                loads[slot] += lengths[index]
                break
        else:
            bins.append([index])
            loads.append(lengths[index])
    return bins


def _even_out(order: Sequence[int], lengths: Mapping[int, int], count: int) -> list[list[int]]:
    """LPT into a fixed number of micro-batches (the caller keeps it only if its largest one shrinks)."""
    loads = [(0, slot) for slot in range(count)]
    bins: list[list[int]] = [[] for _ in range(count)]
    for index in order:
        load, slot = heapq.heappop(loads)
        bins[slot].append(index)
        heapq.heappush(loads, (load + lengths[index], slot))
    return bins


def _tokens(members: Sequence[int], lengths: Mapping[int, int] | Lengths) -> int:
    return sum(int(lengths[index]) for index in members)


def _shifted_labels(labels: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Target of position t = label of token t+1 of the SAME sample; the last position predicts nothing."""
    if not len(labels):
        return labels
    shifted = np.empty_like(labels)
    shifted[:-1] = labels[1:]
    shifted[-1] = IGNORE_INDEX
    return shifted


def _arrays(sample: SampleLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(input_ids, labels) as int64 arrays (lists or memory-mapped views alike), checked to be aligned."""
    input_ids = np.asarray(sample.input_ids, dtype=np.int64)
    labels = np.asarray(sample.labels, dtype=np.int64)
    if len(input_ids) != len(labels):
        raise ValueError(f"input_ids ({len(input_ids)}) and labels ({len(labels)}) differ in length")
    return input_ids, labels


def collate_packed(samples: Sequence[SampleLike]) -> dict[str, torch.Tensor]:
    """Padding-free: all samples concatenated into one row of T tokens.

    Returns input_ids, position_ids (restarting at 0 per sample) and shift_labels, each ``[1, T]``; cu_seqlens
    (int32 ``[n+1]``, cumulative sample boundaries) and max_length (0-d, longest sample) for flash-attention varlen
    (transformers calls these cu_seq_lens_q/k and max_length_q/k). Deliberately NO attention_mask: a 2D mask on a
    packed row makes transformers fall back to causal attention across samples. Call the model with
    ``use_cache=False``.

    An empty list (a rank's idle micro-step, see `plan_step`) gives one placeholder token (id 0, label -100): the
    rank must still run forward and backward so DDP/FSDP collectives line up, a zero-length row crashes the model,
    and this row adds exactly zero loss and zero gradient.
    """
    if not samples:
        return _placeholder_row()
    pairs = [_arrays(sample) for sample in samples]
    lengths = np.array([len(ids) for ids, _ in pairs], dtype=np.int64)
    input_ids = np.concatenate([ids for ids, _ in pairs])
    shift_labels = np.concatenate([_shifted_labels(labels) for _, labels in pairs])
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    position_ids = np.arange(len(input_ids), dtype=np.int64) - starts
    cu_seqlens = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)]).astype(np.int32)
    return {
        "input_ids": torch.from_numpy(input_ids).unsqueeze(0),
        "position_ids": torch.from_numpy(position_ids).unsqueeze(0),
        "shift_labels": torch.from_numpy(shift_labels).unsqueeze(0),
        "cu_seqlens": torch.from_numpy(cu_seqlens),
        "max_length": torch.tensor(int(lengths.max()), dtype=torch.long),
    }


def _placeholder_row() -> dict[str, torch.Tensor]:
    zero = torch.zeros((1, 1), dtype=torch.long)
    return {
        "input_ids": zero,
        "position_ids": zero.clone(),
        "shift_labels": torch.full((1, 1), IGNORE_INDEX, dtype=torch.long),
        "cu_seqlens": torch.tensor([0, 1], dtype=torch.int32),
        "max_length": torch.tensor(1, dtype=torch.long),
    }


def collate_padded(samples: Sequence[SampleLike], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``[B, L]`` batch for attention implementations without packed support.

    shift_labels are -100 on padding and on each row's last real token, so padding never enters the loss.
    position_ids are 0..L-1 in every row (real tokens of a right-padded row are at 0..n-1; the padding's are unused).
    An empty list gives one attended placeholder token (label -100), for the reason given in `collate_packed`.
    """
    if not samples:
        one = torch.ones((1, 1), dtype=torch.long)
        return {
            "input_ids": one * pad_token_id,
            "attention_mask": one,
            "position_ids": one * 0,
            "shift_labels": one * IGNORE_INDEX,
        }
    pairs = [_arrays(sample) for sample in samples]
    rows, width = len(pairs), max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    shift_labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, labels) in enumerate(pairs):
        n = len(ids)
        input_ids[row, :n] = torch.from_numpy(ids)
        attention_mask[row, :n] = 1
        shift_labels[row, :n] = torch.from_numpy(_shifted_labels(labels))
    position_ids = torch.arange(width, dtype=torch.long).expand(rows, width).clone()
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "shift_labels": shift_labels,
    }


def packing_efficiency(
    micro_batches: Sequence[Sequence[int]],
    lengths: Lengths,
    padded: bool,
    max_tokens: int | None = None,
) -> float:
    """Real tokens / token slots paid for, in [0, 1].

    * padded: slots = sum over micro-batches of rows x longest row (the tensor actually computed).
    * packed: there is no padding, the waste is lockstep: every micro-step costs as much as the capacity, i.e.
      ``max_tokens`` when given (what memory was provisioned for), else the largest micro-batch passed in.
      slots = number of micro-batches x capacity. Pass every rank's micro-batches, empty ones included (idle
      micro-steps are waste).

    Returns 1.0 when there are no slots at all (nothing was wasted).
    """
    real = sum(_tokens(members, lengths) for members in micro_batches)
    if padded:
        slots = sum(len(members) * max((int(lengths[i]) for i in members), default=0) for members in micro_batches)
    else:
        capacity = (
            max_tokens if max_tokens is not None else max((_tokens(m, lengths) for m in micro_batches), default=0)
        )
        slots = len(micro_batches) * capacity
    return real / slots if slots else 1.0


def loss_token_count(samples: Sequence[SampleLike]) -> int:
    """Number of shift_labels != -100 in these samples (as collated by either collate function).

    The trainer all-reduces this over the whole effective batch and all ranks and divides each micro-batch's
    SUMMED cross-entropy by it; averaging per-micro-batch means instead over-weights short micro-batches.
    A sample's precomputed ``num_loss_tokens`` (`finetune_trainer.data.Sample`) is used when it has one.
    """
    total = 0
    for sample in samples:
        counted = getattr(sample, "num_loss_tokens", None)
        if counted is None:
            counted = np.count_nonzero(np.asarray(sample.labels[1:], dtype=np.int64) != IGNORE_INDEX)
        total += int(counted)
    return total
