"""Training data: load records, convert them to chat messages, tokenize with assistant-only labels, cache.

Local JSONL / JSON (array) / Parquet files or directories of them; a hub dataset only when the recipe names one.
Every record becomes {role, content} messages (formats `messages`, `alpaca`, `sharegpt`); bad data is a `DataError`
naming file, line, record and rule, which the entry point turns into exit code 2. Tokenizing runs once: rank 0
writes a cache file (tmp + rename, then a done marker) and the other ranks poll for the marker with a long timeout
instead of waiting in a collective whose default timeout big datasets exceed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from finetune_contract.names import IGNORE_INDEX
from finetune_trainer import __version__
from finetune_trainer.config import DatasetSpec
from finetune_trainer.tokenizer import chat_template_for, tokenizer_fingerprint

"""Label of tokens that are not trained on (PyTorch cross-entropy's default ignore_index)."""
CACHE_VERSION = 1
"""Bump when loading or tokenizing changes what a cache file holds; part of the cache key."""
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]


class DataError(ValueError):
    """The data cannot be used as given; the message names the file, line/record and the rule broken."""


@dataclass(frozen=True)
class Sample:
    """One tokenized conversation; labels are aligned with input_ids (not shifted), -100 where not trained on."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_loss_tokens(self) -> int:
        """Tokens that contribute to the loss: after the causal shift position 0 is never predicted."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass(frozen=True)
class PreparedData:
    """The tokenized samples, split into train and eval, and what was dropped on the way."""

    train: list[Sample]
    eval: list[Sample]
    dropped_too_long: int
    total_records: int
    cache_path: Path | None


# --- loading -------------------------------------------------------------------------------------------------


def load_messages(spec: DatasetSpec) -> list[Messages]:
    """Every record of the dataset as a validated conversation; raises DataError on the first bad record."""
    convert = _CONVERTERS.get(str(spec.format))
    if convert is None:
        known = ", ".join(_CONVERTERS)
        raise DataError(f"{_describe(spec)}: unknown format {str(spec.format)!r}; expected one of {known}")
    return [_checked(origin, convert(origin, record)) for origin, record in _records(spec)]


def _describe(spec: DatasetSpec) -> str:
    return f"hub dataset {spec.name} (split {spec.split})" if spec.name is not None else str(spec.path)


def data_files(path: Path) -> list[Path]:
    """The data file itself, or the data files under a directory (recursively, sorted, hidden ones skipped)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or directory")
    files = sorted(
        f
        for f in path.rglob("*")
        if f.is_file() and f.suffix in DATA_SUFFIXES and not any(p.startswith(".") for p in f.relative_to(path).parts)
    )
    if not files:
        raise DataError(f"{path}: directory holds no {', '.join(DATA_SUFFIXES)} files")
    return files


def _records(spec: DatasetSpec) -> Iterator[tuple[str, Any]]:
    """(origin, raw record) pairs; origin is what an error message names."""
    if spec.name is not None:
        yield from _hub_records(spec.name, spec.split)
        return
    if spec.path is None:
        raise DataError("dataset has neither path nor name")
    for path in data_files(Path(spec.path)):
        yield from _file_records(path)


def _file_records(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix == ".jsonl":
        yield from _jsonl_records(path)
    elif path.suffix == ".json":
        yield from ((f"{path} record {index}", record) for index, record in enumerate(_read_json(path)))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq  # type: ignore[import-untyped]  # pyarrow ships no type information

        yield from ((f"{path} record {i}", record) for i, record in enumerate(pq.read_table(path).to_pylist()))
    else:
        raise DataError(f"{path}: unsupported file type; expected one of {', '.join(DATA_SUFFIXES)}")


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    index = 0
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    message = f"malformed JSON line ({error.msg}, column {error.colno})"
                    raise DataError(f"{path}:{number}: {message}") from None
                yield f"{path}:{number} (record {index})", record
                index += 1
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 ({error.reason} after record {index})") from None


def _read_json(path: Path) -> list[Any]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: malformed JSON ({error})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: a .json data file must hold an array of records, not {type(records).__name__}")
    return records


def _hub_records(name: str, split: str) -> Iterator[tuple[str, Any]]:
    """A hub dataset's records; only reached when the recipe names the dataset (DatasetSpec.name)."""
    import datasets  # type: ignore[import-untyped]  # datasets ships no type information; heavy, so imported late

    try:
        dataset = datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"hub dataset {name} (split {split}): cannot be loaded: {error}") from error
    yield from ((f"hub dataset {name} (split {split}) record {i}", record) for i, record in enumerate(dataset))


# --- formats -------------------------------------------------------------------------------------------------


def _field(origin: str, record: Any, key: str, kind: type, *, required: bool = True) -> Any:
    """record[key], checked to be of `kind`; None when optional and absent."""
    if not isinstance(record, dict):
        raise DataError(f"{origin}: a record must be a JSON object, not {type(record).__name__}")
    value = record.get(key)
    if value is None:
        if required:
            raise DataError(f"{origin}: missing key {key!r}")
        return None
    if not isinstance(value, kind):
        raise DataError(f"{origin}: {key!r} must be a {kind.__name__}, not {type(value).__name__}")
    return value


def _from_messages(origin: str, record: Any) -> Messages:
    messages = []
    for index, message in enumerate(_field(origin, record, "messages", list)):
        where = f"{origin} message {index}"
        role = _field(where, message, "role", str)
        if role not in ROLES:
            raise DataError(f"{where}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        messages.append({"role": role, "content": _field(where, message, "content", str)})
    return messages


def _from_alpaca(origin: str, record: Any) -> Messages:
    instruction = _field(origin, record, "instruction", str)
    extra = _field(origin, record, "input", str, required=False)
    output = _field(origin, record, "output", str)
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _from_sharegpt(origin: str, record: Any) -> Messages:
    messages = []
    for index, turn in enumerate(_field(origin, record, "conversations", list)):
        where = f"{origin} turn {index}"
        speaker = _field(where, turn, "from", str)
        if speaker not in SHAREGPT_ROLES:
            raise DataError(f"{where}: unknown role (from) {speaker!r}; expected one of {', '.join(SHAREGPT_ROLES)}")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": _field(where, turn, "value", str)})
    return messages


_CONVERTERS: dict[str, Callable[[str, Any], Messages]] = {
    "messages": _from_messages,
    "alpaca": _from_alpaca,
    "sharegpt": _from_sharegpt,
}


def _checked(origin: str, messages: Messages) -> Messages:
    """Rules every format shares: something to train on, and a prompt before the first answer."""
    if not messages:
        raise DataError(f"{origin}: empty conversation")
    if messages[0]["role"] == "assistant":
        raise DataError(f"{origin}: conversation starts with an assistant message, which has no prompt")
    if not any(message["role"] == "assistant" for message in messages):
        raise DataError(f"{origin}: no assistant message, so nothing to train on")
    return messages


# --- tokenizing ----------------------------------------------------------------------------------------------


def tokenize_conversation(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> Sample:
    """The conversation rendered by the chat template and tokenized once; labels only on assistant turns.

    Assistant turn i is the text between `template(messages[:i], add_generation_prompt=True)` and
    `template(messages[:i+1])`: its content plus the end-of-turn token (so the model learns to stop), without
    whitespace the template puts after that token. A token is labelled when its first character lies in such a span.
    This needs no `{% generation %}` markers, only a template that renders a conversation's prefixes as prefixes of
    the whole, which is checked for every sample (templates that rewrite earlier turns are refused).
    """
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; labels need its character offsets")
    text, spans = _render_with_spans(tokenizer, chat_template_for(tokenizer), messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoding["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for position, (start, _end) in enumerate(encoding["offset_mapping"]):
        if any(first <= start < last for first, last in spans):
            labels[position] = input_ids[position]
    return Sample(input_ids=input_ids, labels=labels)


def _render(tokenizer: PreTrainedTokenizerBase, template: str, messages: Messages, prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=prompt)
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
    return text


def _render_with_spans(
    tokenizer: PreTrainedTokenizerBase, template: str, messages: Messages
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans [start, end) of its assistant turns."""
    full = _render(tokenizer, template, messages, False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, template, messages[:index], True)
        through = _render(tokenizer, template, messages[: index + 1], False)
        if not (through.startswith(before) and full.startswith(through)):
            raise DataError(
                f"the chat template does not render message {index} as a prefix of the conversation (it rewrites "
                "earlier turns or ignores add_generation_prompt), so assistant tokens cannot be located"
            )
        end = len(through.rstrip())
        spans.append((len(before), end if end > len(before) else len(through)))
    return full, spans


# --- preparing: tokenize, drop, cache, split --------------------------------------------------------------------


def prepare_data(
    datasets: Sequence[DatasetSpec],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_seq_len: int,
    eval_fraction: float,
    seed: int,
    cache_dir: Path | None,
    rank: int = 0,
    world_size: int = 1,
    wait_timeout_s: float = 3600,
) -> PreparedData:
    """Tokenized train/eval samples; over-long samples are dropped and counted, never truncated.

    With a cache_dir, rank 0 tokenizes (or reuses a cache keyed by data, tokenizer, max_seq_len and code version)
    and the other ranks wait for its done marker; without one, every rank tokenizes for itself.
    """
    if not datasets:
        raise DataError("no datasets given")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    cache_path = None
    if cache_dir is None:
        samples, dropped, total = _tokenize_all(datasets, tokenizer, max_seq_len)
    else:
        cache_path = cache_dir / f"tokenized-{cache_key(datasets, tokenizer, max_seq_len)}.npz"
        if rank == 0 and not _cache_complete(cache_path):
            samples, dropped, total = _tokenize_all(datasets, tokenizer, max_seq_len)
            _write_cache(cache_path, samples, dropped, total)
        else:
            _wait_for(cache_path, wait_timeout_s, rank)
            samples, dropped, total = _read_cache(cache_path)
            logger.info("rank %d: read %d tokenized samples from %s", rank, len(samples), cache_path)
    train, held_out = split_eval(samples, eval_fraction, seed)
    return PreparedData(train, held_out, dropped, total, cache_path)


def _tokenize_all(
    datasets: Sequence[DatasetSpec], tokenizer: PreTrainedTokenizerBase, max_seq_len: int
) -> tuple[list[Sample], int, int]:
    """(kept samples, number dropped as longer than max_seq_len, number of records)."""
    samples: list[Sample] = []
    dropped = total = 0
    for spec in datasets:
        for index, messages in enumerate(load_messages(spec)):
            total += 1
            try:
                sample = tokenize_conversation(tokenizer, messages)
            except (DataError, jinja2.TemplateError) as error:
                raise DataError(f"{_describe(spec)} record {index}: {error}") from error
            if len(sample.input_ids) > max_seq_len:
                dropped += 1
            else:
                samples.append(sample)
    logger.info("tokenized %d records, dropped %d longer than max_seq_len=%d", total, dropped, max_seq_len)
    return samples, dropped, total


def split_eval(samples: list[Sample], eval_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out round(eval_fraction * n) samples (at least one when the fraction is positive and n > 1), chosen by
    a seeded shuffle; both parts keep the data's order."""
    count = round(eval_fraction * len(samples))
    if eval_fraction > 0 and len(samples) > 1:
        count = min(max(count, 1), len(samples) - 1)
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:count])
    train = [sample for index, sample in enumerate(samples) if index not in held_out]
    return train, [samples[index] for index in sorted(held_out)]


def cache_key(datasets: Sequence[DatasetSpec], tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> str:
    """sha256 of everything the tokenized samples depend on: each dataset's file contents (or hub id and split)
    and format, the tokenizer's identity (vocab, special tokens, chat template), max_seq_len and code version."""
    identity = {
        "cache_version": CACHE_VERSION,
        "code_version": __version__,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_seq_len": max_seq_len,
        "datasets": [_dataset_identity(spec) for spec in datasets],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _dataset_identity(spec: DatasetSpec) -> dict[str, Any]:
    """File contents rather than names or mtimes: a copy elsewhere hits, an edit in place misses."""
    if spec.name is not None:
        return {"format": str(spec.format), "hub": spec.name, "split": spec.split}
    if spec.path is None:
        raise DataError("dataset has neither path nor name")
    digests = []
    for path in data_files(Path(spec.path)):
        with path.open("rb") as stream:
            digests.append(hashlib.file_digest(stream, "sha256").hexdigest())
    return {"format": str(spec.format), "files": digests}


def _done_marker(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".done")


def _cache_complete(cache_path: Path) -> bool:
    return _done_marker(cache_path).exists() and cache_path.exists()


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write to a unique temporary file in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_cache(cache_path: Path, samples: list[Sample], dropped: int, total: int) -> None:
    """The samples as flat int32 arrays plus lengths; the done marker is written only after the data is in place."""
    lengths = np.array([len(sample.input_ids) for sample in samples], dtype=np.int64)
    size = int(lengths.sum())
    input_ids = np.fromiter(chain.from_iterable(sample.input_ids for sample in samples), np.int32, size)
    labels = np.fromiter(chain.from_iterable(sample.labels for sample in samples), np.int32, size)
    counts = np.array([dropped, total], dtype=np.int64)

    def write(stream: Any) -> None:
        np.savez(stream, lengths=lengths, input_ids=input_ids, labels=labels, counts=counts)

    _atomic_write(cache_path, write)
    meta = {"samples": len(samples), "dropped_too_long": dropped, "total_records": total, "version": CACHE_VERSION}
    _atomic_write(_done_marker(cache_path), lambda stream: stream.write(json.dumps(meta).encode()))
    logger.info("wrote %d tokenized samples to %s", len(samples), cache_path)


def _read_cache(cache_path: Path) -> tuple[list[Sample], int, int]:
    with np.load(cache_path, allow_pickle=False) as arrays:
        bounds = np.cumsum(arrays["lengths"])[:-1]
        ids = np.split(arrays["input_ids"], bounds) if len(arrays["lengths"]) else []
        labels = np.split(arrays["labels"], bounds) if len(arrays["lengths"]) else []
        dropped, total = (int(count) for count in arrays["counts"])
    samples = [Sample(input_ids=i.tolist(), labels=y.tolist()) for i, y in zip(ids, labels, strict=True)]
    return samples, dropped, total


def _wait_for(cache_path: Path, timeout_s: float, rank: int) -> None:
    """Poll for rank 0's done marker (a file, not a collective, so no NCCL/gloo timeout applies)."""
    deadline = time.monotonic() + timeout_s
    interval = 0.05
    while not _cache_complete(cache_path):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            marker = _done_marker(cache_path)
            raise TimeoutError(f"rank {rank} waited {timeout_s:g}s for {marker}: rank 0 has not finished tokenizing")
        time.sleep(min(interval, remaining))
        interval = min(interval * 2, 2.0)


__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "PreparedData",
    "Sample",
    "cache_key",
    "data_files",
    "load_messages",
    "prepare_data",
    "split_eval",
    "tokenize_conversation",
]
