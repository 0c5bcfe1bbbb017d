"""Tokenized samples as flat arrays: one file written once, memory-mapped by every rank, samples are views.

A dataset of n samples and T tokens is four arrays: ``input_ids`` (int32, T), ``loss_mask`` (bool, T: the token
is trained on, i.e. its label is its own id, else -100), ``offsets`` (int64, n+1: sample i is
``[offsets[i], offsets[i+1])``) and ``num_loss_tokens`` (int32, n: loss-counted tokens after the causal shift).
That is 5 bytes a token on disk and in the page cache, shared by all ranks on a node; a rank's private memory
holds only per-sample index arrays (a few bytes a sample), never per-token Python objects (54-77 bytes a token).

File layout (`write_tokenized` / `read_tokenized`): a 4 KiB header (magic, then JSON naming each array's dtype,
length and byte offset), then the arrays, each 64-byte aligned. The file is written to a temporary name and renamed
into place, so a reader sees either nothing or the whole file.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from finetune_contract.names import IGNORE_INDEX
from finetune_trainer.batching import TokenIds

MAGIC = b"FTTOKENS"
FORMAT_VERSION = 1
HEADER_BYTES = 4096
ALIGN = 64
ARRAYS = ("input_ids", "loss_mask", "offsets", "num_loss_tokens")


class Sample:
    """One tokenized conversation; labels are aligned with input_ids (not shifted), -100 where not trained on.

    Either lists (as `finetune_trainer.data.tokenize_conversation` returns them) or a position in a memory-mapped
    `TokenizedData` (as `SampleSet` hands them out): then the sample holds only that position and makes numpy views
    on access (int32 ids, zero-copy; int64 labels, made from the loss mask), so even a long-lived list of such samples
    (the eval split) costs a few dozen bytes a sample. Equality compares the token values, whatever the container.
    """

    __slots__ = ("_data", "_input_ids", "_labels", "_num_loss_tokens", "_position")

    def __init__(self, input_ids: TokenIds, labels: TokenIds, num_loss_tokens: int | None = None) -> None:
        self._input_ids = input_ids
        self._labels = labels
        self._num_loss_tokens = num_loss_tokens
        self._data: TokenizedData | None = None
        self._position = 0

    @classmethod
    def mapped(cls, data: TokenizedData, position: int) -> Sample:
        """Sample `position` of `data`, by reference."""
        sample = cls((), (), None)
        sample._data = data
        sample._position = position
        return sample

    @property
    def input_ids(self) -> TokenIds:
        if self._data is None:
            return self._input_ids
        offsets = self._data.offsets
        return self._data.input_ids[int(offsets[self._position]) : int(offsets[self._position + 1])]

    @property
    def labels(self) -> TokenIds:
        if self._data is None:
            return self._labels
        start, end = int(self._data.offsets[self._position]), int(self._data.offsets[self._position + 1])
        # int64 labels (what PyTorch's cross-entropy takes as targets); the ids stay a zero-copy int32 view.
        ids = self._data.input_ids[start:end].astype(np.int64)
        return np.where(self._data.loss_mask[start:end], ids, np.int64(IGNORE_INDEX))

    @property
    def num_loss_tokens(self) -> int:
        """Tokens that contribute to the loss: after the causal shift position 0 is never predicted."""
        if self._data is not None:
            return int(self._data.num_loss_tokens[self._position])
        if self._num_loss_tokens is None:
            labels = self._labels
            if isinstance(labels, np.ndarray):
                self._num_loss_tokens = int(np.count_nonzero(labels[1:] != IGNORE_INDEX))
            else:
                self._num_loss_tokens = sum(1 for label in labels[1:] if label != IGNORE_INDEX)
        return self._num_loss_tokens

    def __len__(self) -> int:
        return len(self.input_ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return _same(self.input_ids, other.input_ids) and _same(self.labels, other.labels)

    __hash__ = None  # type: ignore[assignment]  # mutable contents, like the dataclass it replaces

    def __repr__(self) -> str:
        return f"Sample(input_ids={list(self.input_ids)!r}, labels={list(self.labels)!r})"


def _same(a: TokenIds, b: TokenIds) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return list(a) == list(b)


@dataclass(frozen=True, eq=False)
class TokenizedData:
    """Every kept sample of a dataset as flat arrays (memory-mapped when read from a cache file)."""

    input_ids: npt.NDArray[np.int32]
    loss_mask: npt.NDArray[np.bool_]
    offsets: npt.NDArray[np.int64]
    num_loss_tokens: npt.NDArray[np.int32]
    dropped_too_long: int
    total_records: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def sample(self, position: int) -> Sample:
        return Sample.mapped(self, position)

    @classmethod
    def from_chunks(cls, chunks: Iterable[TokenChunk], dropped_too_long: int, total_records: int) -> TokenizedData:
        """In memory (no cache file): the chunks concatenated."""
        parts = list(chunks)
        lengths = np.concatenate([np.zeros(1, np.int64), *(chunk.lengths for chunk in parts)])
        return cls(
            input_ids=np.concatenate([np.zeros(0, np.int32), *(chunk.input_ids for chunk in parts)]),
            loss_mask=np.concatenate([np.zeros(0, np.bool_), *(chunk.loss_mask for chunk in parts)]),
            offsets=np.cumsum(lengths, dtype=np.int64),
            num_loss_tokens=np.concatenate([np.zeros(0, np.int32), *(chunk.num_loss_tokens for chunk in parts)]),
            dropped_too_long=dropped_too_long,
            total_records=total_records,
        )


@dataclass(frozen=True, eq=False)
class TokenChunk:
    """Consecutive kept samples, concatenated (what a tokenizing worker returns)."""

    input_ids: npt.NDArray[np.int32]
    loss_mask: npt.NDArray[np.bool_]
    lengths: npt.NDArray[np.int64]
    num_loss_tokens: npt.NDArray[np.int32]
    dropped_too_long: int

    @classmethod
    def of(cls, samples: Sequence[Sample], dropped_too_long: int) -> TokenChunk:
        lengths = np.fromiter((len(sample.input_ids) for sample in samples), np.int64, len(samples))
        size = int(lengths.sum())
        ids = np.fromiter((t for sample in samples for t in sample.input_ids), np.int32, size)
        labels = np.fromiter((t for sample in samples for t in sample.labels), np.int32, size)
        mask = labels != IGNORE_INDEX
        if not np.array_equal(labels[mask], ids[mask]):
            raise ValueError("a trained-on label differs from its token id; the flat format cannot store it")
        counts = np.fromiter((sample.num_loss_tokens for sample in samples), np.int32, len(samples))
        return cls(ids, mask, lengths, counts, dropped_too_long)


class SampleSet(Sequence[Sample]):
    """Some samples of a `TokenizedData` (`positions`: their sample numbers in it, an index array), as a read-only
    sequence of `Sample` views.

    Nothing per sample is built up front: ``lengths`` and ``num_loss_tokens`` are arrays, ``samples[i]`` makes the
    views on demand.
    """

    def __init__(self, data: TokenizedData, positions: npt.NDArray[np.int64] | None = None) -> None:
        self.data = data
        self.positions = (
            np.arange(len(data), dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
        )
        self._lengths: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return len(self.positions)

    @overload
    def __getitem__(self, position: int) -> Sample: ...

    @overload
    def __getitem__(self, position: slice) -> SampleSet: ...

    def __getitem__(self, position: int | slice) -> Sample | SampleSet:
        if isinstance(position, slice):
            return SampleSet(self.data, self.positions[position])
        return self.data.sample(int(self.positions[position]))

    def __iter__(self) -> Iterator[Sample]:
        for position in self.positions.tolist():
            yield self.data.sample(position)

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        """Token count of every sample, by position in this set."""
        if self._lengths is None:
            offsets = self.data.offsets
            self._lengths = offsets[self.positions + 1] - offsets[self.positions]
        return self._lengths

    @property
    def num_loss_tokens(self) -> npt.NDArray[np.int32]:
        return np.asarray(self.data.num_loss_tokens[self.positions])

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SampleSet({len(self)} samples, {self.num_tokens} tokens)"


# --- the file --------------------------------------------------------------------------------------------------


def _aligned(position: int) -> int:
    return -(-position // ALIGN) * ALIGN


class TokenizedWriter:
    """Streams chunks into a temporary file (token ids in place, the mask beside it), then `finish` completes the
    header and renames it to `path`. Memory: per-sample lengths and counts only, never all tokens at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        stem = f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}"
        self._main_path = path.with_name(stem + ".tmp")
        self._mask_path = path.with_name(stem + ".mask.tmp")
        self._main = self._main_path.open("wb")
        self._mask = self._mask_path.open("wb")
        self._main.write(b"\0" * HEADER_BYTES)
        self._tokens = 0
        self._lengths: list[npt.NDArray[np.int64]] = []
        self._counts: list[npt.NDArray[np.int32]] = []
        self.dropped_too_long = 0

    def add(self, chunk: TokenChunk) -> None:
        self._main.write(np.ascontiguousarray(chunk.input_ids, dtype=np.int32).tobytes())
        self._mask.write(np.ascontiguousarray(chunk.loss_mask, dtype=np.bool_).tobytes())
        self._tokens += len(chunk.input_ids)
        self._lengths.append(chunk.lengths)
        self._counts.append(chunk.num_loss_tokens)
        self.dropped_too_long += chunk.dropped_too_long

    @property
    def samples(self) -> int:
        return sum(len(lengths) for lengths in self._lengths)

    def finish(self, total_records: int) -> None:
        lengths = np.concatenate([np.zeros(1, np.int64), *self._lengths])
        offsets = np.cumsum(lengths, dtype=np.int64)
        counts = np.concatenate([np.zeros(0, np.int32), *self._counts]).astype(np.int32)
        layout: dict[str, Any] = {}
        position = HEADER_BYTES
        layout["input_ids"] = ["<i4", self._tokens, position]
        position = _aligned(position + 4 * self._tokens)
        self._mask.close()
        self._pad_to(position)
        layout["loss_mask"] = ["|b1", self._tokens, position]
        with self._mask_path.open("rb") as mask:
            shutil.copyfileobj(mask, self._main, 16 << 20)
        position = _aligned(position + self._tokens)
        for name, array in (("offsets", offsets), ("num_loss_tokens", counts)):
            self._pad_to(position)
            layout[name] = [array.dtype.str, len(array), position]
            self._main.write(array.tobytes())
            position = _aligned(position + array.nbytes)
        header = {
            "version": FORMAT_VERSION,
            "arrays": layout,
            "dropped_too_long": self.dropped_too_long,
            "total_records": total_records,
        }
        encoded = MAGIC + json.dumps(header).encode()
        if len(encoded) > HEADER_BYTES:
            raise ValueError("tokenized-data header too large")
        self._main.seek(0)
        self._main.write(encoded)
        self._main.flush()
        os.fsync(self._main.fileno())
        self._main.close()
        os.replace(self._main_path, self.path)
        self.close()

    def _pad_to(self, position: int) -> None:
        current = self._main.tell()
        if position > current:
            self._main.write(b"\0" * (position - current))

    def close(self) -> None:
        """Drop the temporary files (after `finish`, or on failure)."""
        self._main.close()
        self._mask.close()
        self._main_path.unlink(missing_ok=True)
        self._mask_path.unlink(missing_ok=True)


def write_tokenized(path: Path, chunks: Iterable[TokenChunk], total_records: int) -> None:
    """All chunks to `path`, atomically."""
    writer = TokenizedWriter(path)
    try:
        for chunk in chunks:
            writer.add(chunk)
        writer.finish(total_records)
    finally:
        writer.close()


def read_tokenized(path: Path | str) -> TokenizedData:
    """The arrays of a tokenized-data file, memory-mapped read-only (pages are shared through the page cache)."""
    path = Path(path)
    with path.open("rb") as stream:
        head = stream.read(HEADER_BYTES)
    if not head.startswith(MAGIC):
        raise ValueError(f"{path}: not a tokenized-data file")
    header = json.loads(head[len(MAGIC) :].rstrip(b"\0"))
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: tokenized-data format {header.get('version')}, expected {FORMAT_VERSION}")
    arrays: dict[str, Any] = {}
    for name in ARRAYS:
        dtype, count, offset = header["arrays"][name]
        if count == 0:
            arrays[name] = np.zeros(0, dtype=dtype)
        else:
            arrays[name] = np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=(count,))
    return TokenizedData(
        input_ids=arrays["input_ids"],
        loss_mask=arrays["loss_mask"],
        offsets=arrays["offsets"],
        num_loss_tokens=arrays["num_loss_tokens"],
        dropped_too_long=int(header["dropped_too_long"]),
        total_records=int(header["total_records"]),
    )


__all__ = [
    "Sample",
    "SampleSet",
    "TokenChunk",
    "TokenizedData",
    "TokenizedWriter",
    "read_tokenized",
    "write_tokenized",
]
