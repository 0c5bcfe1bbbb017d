"""Training data: load records, convert them to chat messages, tokenize with assistant-only labels, cache.

Local JSONL / JSON (array) / Parquet files or directories of them, a dataset saved with `datasets`'
`save_to_disk`, or a hub dataset when the recipe names one. Saved and hub datasets are read through `datasets`
(memory-mapped Arrow), Parquet files by pyarrow a batch of rows at a time (a 1M-record file is never held as Python
objects); JSON Lines and JSON arrays keep their own reader, because Arrow's JSON reader unifies the records' schema
(a key one record has appears as null in the others) and reports a bad line by its position in a block, while ours
names file and line and passes each record through exactly as written.
Every record becomes {role, content} messages (formats `messages`, `alpaca`, `sharegpt`); bad data is a `DataError`
naming file, line, record and rule, which the entry point turns into exit code 2. Tokenizing runs once, on a pool
of worker processes (one per available core, output order independent of it): rank 0 writes a flat-array cache file
(`finetune_trainer.tokenized`: tmp + rename, then a done marker) and the other ranks poll for the marker with a long
timeout instead of waiting in a collective whose default timeout big datasets exceed. Every rank then memory-maps
the file: samples are views, so per-rank memory does not grow with the dataset.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import numpy.typing as npt
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from finetune_contract.names import IGNORE_INDEX
from finetune_trainer import __version__
from finetune_trainer.config import DatasetSpec
from finetune_trainer.tokenized import Sample, SampleSet, TokenChunk, TokenizedData, TokenizedWriter, read_tokenized
from finetune_trainer.tokenizer import chat_template_for, tokenizer_fingerprint

"""Label of tokens that are not trained on (PyTorch cross-entropy's default ignore_index)."""
CACHE_VERSION = 2
"""Bump when loading or tokenizing changes what a cache file holds; part of the cache key."""
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
PARQUET_BATCH_ROWS = 1024
SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")
"""Files `datasets`' `save_to_disk` writes at the top of a saved Dataset / DatasetDict directory."""
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]


class DataError(ValueError):
    """The data cannot be used as given; the message names the file, line/record and the rule broken."""


@dataclass(frozen=True)
class PreparedData:
    """The tokenized samples, split into train and eval, and what was dropped on the way."""

    train: SampleSet
    eval: SampleSet
    dropped_too_long: int
    total_records: int
    cache_path: Path | None


# --- loading -------------------------------------------------------------------------------------------------


def load_messages(spec: DatasetSpec) -> list[Messages]:
    """Every record of the dataset as a validated conversation; raises DataError on the first bad record."""
    return list(iter_messages(spec))


def iter_messages(spec: DatasetSpec) -> Iterator[Messages]:
    """`load_messages` one record at a time (a big dataset is never held as Python objects all at once).

    An unknown format is reported at once, not on the first record."""
    convert = _CONVERTERS.get(str(spec.format))
    if convert is None:
        known = ", ".join(_CONVERTERS)
        raise DataError(f"{_describe(spec)}: unknown format {str(spec.format)!r}; expected one of {known}")
    return (_checked(origin, convert(origin, record)) for origin, record in _records(spec))


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
    inside = {parent for f in files for parent in f.parents if parent != path and parent.is_relative_to(path)}
    for saved in sorted(inside):
        if is_saved_dataset(saved):  # its state.json would otherwise be read as training records
            raise DataError(f"{path}: {saved} is a saved dataset (save_to_disk); give it a dataset entry of its own")
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
    path = Path(spec.path)
    if is_saved_dataset(path):
        yield from _saved_records(path, spec.split)
        return
    for file in data_files(path):
        yield from _file_records(file)


def is_saved_dataset(path: Path) -> bool:
    """A directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (read whole, not as files)."""
    return path.is_dir() and any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS)


def _file_records(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix == ".jsonl":
        yield from _jsonl_records(path)
    elif path.suffix == ".json":
        yield from ((f"{path} record {index}", record) for index, record in enumerate(_read_json(path)))
    elif path.suffix == ".parquet":
        yield from _parquet_records(path)
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


def _parquet_records(path: Path) -> Iterator[tuple[str, Any]]:
    """A Parquet file read a batch of rows at a time from a memory map, without pre-buffering: memory stays at one
    batch whatever the file's size. (`datasets`' streaming Parquet reader was measured holding the whole file's
    bytes as Python objects — 77 MB for a 77 MB file — so it is not used here.)"""
    import pyarrow.parquet as pq  # type: ignore[import-untyped]  # pyarrow ships no type information

    def stream() -> Iterator[Any]:
        with pq.ParquetFile(path, memory_map=True, pre_buffer=False) as parquet:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                yield from batch.to_pylist()

    yield from _named_records(f"{path}", "not a readable Parquet file", stream)


def _saved_records(path: Path, split: str) -> Iterator[tuple[str, Any]]:
    """A `save_to_disk` directory, memory-mapped by `datasets`; a DatasetDict is read at the dataset's `split`."""
    import datasets  # type: ignore[import-untyped]

    def stream() -> Iterator[Any]:
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                known = ", ".join(sorted(loaded))
                message = f"saved dataset has no split {split!r} (splits: {known}); set the dataset's split"
                raise DataError(f"{path}: {message}")
            loaded = loaded[split]
        return iter(loaded)

    yield from _named_records(f"{path} (split {split})", "not a readable saved dataset", stream)


def _named_records(origin: str, failure: str, open_stream: Callable[[], Iterator[Any]]) -> Iterator[tuple[str, Any]]:
    """Records of a `datasets` reader named `<origin> record <i>`; a reading failure (a truncated file, a bad footer,
    a missing shard) is a DataError naming the source and the record it stopped at, never a pyarrow traceback."""
    index = 0
    stream: Iterator[Any] | None = None
    try:
        stream = open_stream()
        for index, record in enumerate(stream):  # index is reported when reading fails
            yield f"{origin} record {index}", record
    except DataError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as error:  # pyarrow's ArrowException subclasses these
        raise DataError(f"{origin}: {failure} (at record {index}): {error}") from None
    finally:
        close = getattr(stream, "close", None)
        if callable(close):
            close()


def _hub_records(name: str, split: str) -> Iterator[tuple[str, Any]]:
    """A hub dataset's records; only reached when the recipe names the dataset (DatasetSpec.name)."""
    import datasets

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
        # The whole conversation when this is its last message: the same render, done once.
        through = full if index == len(messages) - 1 else _render(tokenizer, template, messages[: index + 1], False)
        if not (through.startswith(before) and full.startswith(through)):
            raise DataError(
                f"the chat template does not render message {index} as a prefix of the conversation (it rewrites "
                "earlier turns or ignores add_generation_prompt), so assistant tokens cannot be located"
            )
        end = len(through.rstrip())
        spans.append((len(before), end if end > len(before) else len(through)))
    return full, spans


# --- preparing: tokenize (in parallel), drop, cache, split ---------------------------------------------------------


TOKENIZE_CHUNK = 512
"""Records per task handed to a tokenizing worker: large enough to amortise the hand-over, small enough to balance."""
PARALLEL_MIN_CHUNKS = 8
"""Fewer chunks than this are tokenized in this process: starting spawned workers (each imports transformers) costs
seconds, more than a few thousand records take to tokenize."""
PROGRESS_INTERVAL_S = 30.0


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU set (`os.sched_getaffinity`), lowered to the container's CPU quota
    (cgroup v2 ``cpu.max``) when one is set, since a pod with a CPU limit but no CPU set sees every core of the node
    and each tokenizing worker costs memory (it imports transformers)."""
    try:
        cores = max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        cores = max(os.cpu_count() or 1, 1)
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(math.ceil(int(quota) / int(period)), 1))
    except (OSError, ValueError):
        pass
    return cores


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
    num_proc: int | None = None,
) -> PreparedData:
    """Tokenized train/eval samples; over-long samples are dropped and counted, never truncated.

    With a cache_dir, rank 0 tokenizes (or reuses a cache keyed by data, tokenizer, max_seq_len and code version)
    into one flat-array file, and every rank (rank 0 too, after writing) memory-maps it: the samples are views, so a
    rank's private memory does not grow with the dataset (the pages are shared through the page cache). Without a
    cache_dir every rank tokenizes for itself and keeps the flat arrays in memory (5 bytes a token, no per-token
    Python objects). Tokenizing runs on `num_proc` worker processes (default: every core this process may use);
    the order of the samples does not depend on it.
    """
    if not datasets:
        raise DataError("no datasets given")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    processes = available_cpus() if num_proc is None else max(num_proc, 1)
    cache_path = None
    if cache_dir is None:
        total, chunks = 0, []
        for item in _tokenize_all(datasets, tokenizer, max_seq_len, processes):
            if isinstance(item, int):
                total = item
            else:
                chunks.append(item)
        data = TokenizedData.from_chunks(chunks, sum(chunk.dropped_too_long for chunk in chunks), total)
    else:
        cache_path = cache_dir / f"tokenized-{cache_key(datasets, tokenizer, max_seq_len)}.tokens"
        if rank == 0 and not _cache_complete(cache_path):
            _write_cache(cache_path, _tokenize_all(datasets, tokenizer, max_seq_len, processes))
        else:
            _wait_for(cache_path, wait_timeout_s, rank)
        prepared = load_prepared(cache_path, eval_fraction, seed)
        logger.info("rank %d: mapped %d tokenized samples from %s", rank, len(prepared.train.data), cache_path)
        return prepared
    return _split(data, eval_fraction, seed, None)


def load_prepared(cache_path: Path, eval_fraction: float, seed: int) -> PreparedData:
    """A complete cache file memory-mapped and split, as `prepare_data` returns it once the cache exists."""
    return _split(read_tokenized(cache_path), eval_fraction, seed, cache_path)


def _split(data: TokenizedData, eval_fraction: float, seed: int, cache_path: Path | None) -> PreparedData:
    train, held_out = split_eval(len(data), eval_fraction, seed)
    return PreparedData(
        SampleSet(data, train), SampleSet(data, held_out), data.dropped_too_long, data.total_records, cache_path
    )


def _tokenize_all(
    datasets: Sequence[DatasetSpec], tokenizer: PreTrainedTokenizerBase, max_seq_len: int, num_proc: int
) -> Iterator[TokenChunk | int]:
    """The kept samples in data order as chunks, then the number of records (an int, last).

    Records are read and validated here (errors name file, line and record) and tokenized in chunks of
    `TOKENIZE_CHUNK` records, by a pool of `num_proc` spawned workers when there are at least `PARALLEL_MIN_CHUNKS`
    chunks (results are taken in submission order, so the output does not depend on the pool), else in this process.
    Spawned workers import the main module, so a script calling this must guard its entry point
    (``if __name__ == "__main__":``), as the trainer's does.
    """
    jobs = _jobs(datasets)
    first = list(itertools.islice(jobs, PARALLEL_MIN_CHUNKS))
    total = dropped = 0
    started = last_log = time.monotonic()
    if num_proc > 1 and len(first) >= PARALLEL_MIN_CHUNKS:
        context = multiprocessing.get_context("spawn")  # never fork: the trainer may hold threads, CUDA, gloo
        pool = context.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer, max_seq_len))
        results: Iterator[tuple[TokenChunk, int]] = pool.imap(_tokenize_job, itertools.chain(first, jobs))
    else:
        pool = None
        results = (_tokenize_chunk(tokenizer, max_seq_len, job) for job in itertools.chain(first, jobs))
    try:
        for chunk, records in results:
            total += records
            dropped += chunk.dropped_too_long
            yield chunk
            now = time.monotonic()
            if now - last_log >= PROGRESS_INTERVAL_S:
                last_log = now
                rate = total / (now - started)
                logger.info("tokenizing: %d records so far (%.0f records/s, %d processes)", total, rate, num_proc)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    elapsed = time.monotonic() - started
    logger.info(
        "tokenized %d records in %.1fs on %d processes, dropped %d longer than max_seq_len=%d",
        total,
        elapsed,
        num_proc if pool is not None else 1,
        dropped,
        max_seq_len,
    )
    yield total


Job = tuple[str, int, list[Messages]]
"""(dataset description for errors, index of the first record within its dataset, conversations)."""


def _jobs(datasets: Sequence[DatasetSpec]) -> Iterator[Job]:
    for spec in datasets:
        description = _describe(spec)
        batch: list[Messages] = []
        first = 0
        for index, messages in enumerate(iter_messages(spec)):
            if not batch:
                first = index
            batch.append(messages)
            if len(batch) >= TOKENIZE_CHUNK:
                yield description, first, batch
                batch = []
        if batch:
            yield description, first, batch


def _tokenize_chunk(tokenizer: PreTrainedTokenizerBase, max_seq_len: int, job: Job) -> tuple[TokenChunk, int]:
    """(kept samples of the job, number of records); a record that cannot be tokenized is a DataError naming it."""
    description, first, conversations = job
    kept: list[Sample] = []
    dropped = 0
    for index, messages in enumerate(conversations, start=first):
        try:
            sample = tokenize_conversation(tokenizer, messages)
        except (DataError, jinja2.TemplateError) as error:
            raise DataError(f"{description} record {index}: {error}") from None
        if len(sample.input_ids) > max_seq_len:
            dropped += 1
        else:
            kept.append(sample)
    return TokenChunk.of(kept, dropped), len(conversations)


_worker: tuple[PreTrainedTokenizerBase, int] | None = None


def _init_worker(tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> None:
    global _worker
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process per core already
    _worker = (tokenizer, max_seq_len)


def _tokenize_job(job: Job) -> tuple[TokenChunk, int]:
    if _worker is None:
        raise RuntimeError("tokenizing worker was not initialised")
    return _tokenize_chunk(_worker[0], _worker[1], job)


def split_eval(
    num_samples: int, eval_fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train indices, held-out indices), both ascending: round(eval_fraction * n) samples held out (at least one
    when the fraction is positive and n > 1), chosen by a seeded shuffle (the same choice as ever)."""
    count = round(eval_fraction * num_samples)
    if eval_fraction > 0 and num_samples > 1:
        count = min(max(count, 1), num_samples - 1)
    if count <= 0:
        return np.arange(num_samples, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = list(range(num_samples))
    random.Random(seed).shuffle(order)
    held_out = np.sort(np.array(order[:count], dtype=np.int64))
    del order
    keep = np.ones(num_samples, dtype=np.bool_)
    keep[held_out] = False
    return np.flatnonzero(keep).astype(np.int64), held_out


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
    path = Path(spec.path)
    if is_saved_dataset(path):  # every file of it (arrow shards, state, info) and the split it is read at
        files = sorted(f for f in path.rglob("*") if f.is_file())
        digests = [f"{f.relative_to(path)}:{_file_digest(f)}" for f in files]
        return {"format": str(spec.format), "saved": digests, "split": spec.split}
    return {"format": str(spec.format), "files": [_file_digest(f) for f in data_files(path)]}


def _file_digest(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


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


def _write_cache(cache_path: Path, produced: Iterator[TokenChunk | int]) -> None:
    """Stream the chunks into the flat-array file (tmp + rename); the done marker only after the data is in place."""
    writer = TokenizedWriter(cache_path)
    try:
        total = 0
        for item in produced:
            if isinstance(item, int):
                total = item
            else:
                writer.add(item)
        samples, dropped = writer.samples, writer.dropped_too_long
        writer.finish(total)
    finally:
        writer.close()
    meta = {"samples": samples, "dropped_too_long": dropped, "total_records": total, "version": CACHE_VERSION}
    _atomic_write(_done_marker(cache_path), lambda stream: stream.write(json.dumps(meta).encode()))
    logger.info("wrote %d tokenized samples to %s", samples, cache_path)


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
    "SampleSet",
    "available_cpus",
    "cache_key",
    "data_files",
    "iter_messages",
    "load_messages",
    "load_prepared",
    "prepare_data",
    "split_eval",
    "tokenize_conversation",
]
