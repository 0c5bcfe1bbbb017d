"""Tokenized data at scale: the flat memory-mapped cache gives the same samples as before, per-rank memory does not
grow with the dataset, parallel tokenizing equals serial, and a bad record is still named when workers tokenize."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

from finetune_trainer import data as data_module
from finetune_trainer.batching import plan_step, step_batches
from finetune_trainer.config import DatasetSpec
from finetune_trainer.data import (
    IGNORE_INDEX,
    DataError,
    Sample,
    available_cpus,
    load_messages,
    prepare_data,
    tokenize_conversation,
)
from finetune_trainer.tokenized import SampleSet, TokenChunk, read_tokenized, write_tokenized
from tests.trainer.conftest import FASTCHAT_SHAREGPT, GSM8K_TEST_CHAT, TAXONOMY_CHAT
from tests.trainer.test_data import old_split_eval, write_jsonl

SPECS = (
    DatasetSpec(path=str(FASTCHAT_SHAREGPT), format="sharegpt"),
    DatasetSpec(path=str(GSM8K_TEST_CHAT)),
    DatasetSpec(path=str(TAXONOMY_CHAT)),
)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 32 records, so that the shared data makes enough chunks for the worker pool to be used."""
    monkeypatch.setattr(data_module, "TOKENIZE_CHUNK", 32)


def old_prepare(
    specs: tuple[DatasetSpec, ...], tokenizer: PreTrainedTokenizerBase, max_seq_len: int, fraction: float, seed: int
) -> tuple[list[Sample], list[Sample], int, int]:
    """What prepare_data returned before the flat cache: every record tokenized in order, long ones dropped, then
    the list-of-objects eval split."""
    kept, dropped, total = [], 0, 0
    for spec in specs:
        for messages in load_messages(spec):
            total += 1
            sample = tokenize_conversation(tokenizer, messages)
            if len(sample.input_ids) > max_seq_len:
                dropped += 1
            else:
                kept.append(sample)
    train, held_out = old_split_eval(kept, fraction, seed)
    return train, held_out, dropped, total


def as_lists(samples: Any) -> list[tuple[list[int], list[int]]]:
    return [(np.asarray(s.input_ids).tolist(), np.asarray(s.labels).tolist()) for s in samples]


@pytest.mark.usefixtures("shared_data", "small_chunks")
def test_flat_cache_gives_the_samples_the_list_code_gave(
    bpe_tokenizer: PreTrainedTokenizerBase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options: dict[str, Any] = {"max_seq_len": 600, "eval_fraction": 0.05, "seed": 11}
    train, held_out, dropped, total = old_prepare(SPECS, bpe_tokenizer, 600, 0.05, 11)
    assert dropped > 0
    with caplog.at_level(logging.INFO, logger="finetune_trainer.data"):
        cached = prepare_data(SPECS, bpe_tokenizer, cache_dir=tmp_path / "cache", num_proc=2, **options)
    assert "on 2 processes" in caplog.text  # the worker pool really ran
    in_memory = prepare_data(SPECS, bpe_tokenizer, cache_dir=None, num_proc=1, **options)
    for prepared in (cached, in_memory):
        assert as_lists(prepared.train) == as_lists(train)
        assert as_lists(prepared.eval) == as_lists(held_out)
        assert (prepared.dropped_too_long, prepared.total_records) == (dropped, total)
        assert prepared.train.lengths.tolist() == [len(s.input_ids) for s in train]
        assert prepared.train.num_loss_tokens.tolist() == [s.num_loss_tokens for s in train]
    assert isinstance(cached.train.data.input_ids, np.memmap)
    sample = cached.train[3]
    assert isinstance(sample.input_ids, np.ndarray)
    assert sample == train[3]
    assert sample.num_loss_tokens == train[3].num_loss_tokens
    assert cached == prepare_data(SPECS, bpe_tokenizer, cache_dir=tmp_path / "cache", num_proc=2, **options)


@pytest.mark.usefixtures("shared_data", "small_chunks")
def test_parallel_tokenizing_writes_the_serial_bytes(byte_tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    options: dict[str, Any] = {"max_seq_len": 1024, "eval_fraction": 0.1, "seed": 0}
    serial = prepare_data(SPECS, byte_tokenizer, cache_dir=tmp_path / "one", num_proc=1, **options)
    parallel = prepare_data(SPECS, byte_tokenizer, cache_dir=tmp_path / "two", num_proc=2, **options)
    assert serial.cache_path is not None
    assert parallel.cache_path is not None
    assert serial.cache_path.name == parallel.cache_path.name
    assert serial.cache_path.read_bytes() == parallel.cache_path.read_bytes()
    assert (serial.train, serial.eval) == (parallel.train, parallel.eval)


def conversation(index: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"q{index}"}, {"role": "assistant", "content": f"a{index}"}]}


RAISING_TEMPLATE = (
    "{% for m in messages %}{% if m['content'] == 'POISON' %}{{ raise_exception('poisoned content') }}{% endif %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.mark.usefixtures("small_chunks")
def test_a_bad_record_mid_file_is_named_when_workers_tokenize(
    byte_tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    records = [conversation(i) for i in range(600)]
    records[437]["messages"][1]["content"] = "POISON"
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    byte_tokenizer.chat_template = RAISING_TEMPLATE
    spec = DatasetSpec(path=str(path))
    options: dict[str, Any] = {"max_seq_len": 4096, "eval_fraction": 0.0, "seed": 0, "num_proc": 2}
    with pytest.raises(DataError) as caught:
        prepare_data([spec], byte_tokenizer, cache_dir=tmp_path / "cache", **options)
    assert f"{path} record 437: poisoned content" in str(caught.value)
    assert not list((tmp_path / "cache").glob("*.done"))
    assert not list((tmp_path / "cache").glob(".*tmp"))  # no temporary file is left behind
    # A malformed line in the middle is read in this process; its error names file and line as ever.
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[437] = '{"messages": [oops'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:438: malformed JSON"):
        prepare_data([spec], byte_tokenizer, cache_dir=None, **options)


# --- memory ----------------------------------------------------------------------------------------------------

TOKENS_PER_SAMPLE = 64
LIST_BYTES_PER_TOKEN = 54
"""What the list representation cost (two lists of Python ints per sample, ids and labels), measured before."""

LOAD_AND_USE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from finetune_trainer.batching import plan_step, step_batches
    from finetune_trainer.data import split_eval
    from finetune_trainer.tokenized import SampleSet, read_tokenized

    def anon_kib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))

    before = anon_kib()
    data = read_tokenized(sys.argv[1])
    train, held_out = split_eval(len(data), 0.01, 0)
    samples = SampleSet(data, train)
    lengths = samples.lengths
    steps = step_batches(len(samples), 64, 1, 0)
    for step in steps[:5]:
        plan_step(step, lengths, 2, 4096)
    checksum = int(data.input_ids.sum(dtype=np.int64)) + int(samples.num_loss_tokens.sum())  # every page read
    labelled = sum(int(samples[i].labels[-1]) for i in range(0, len(samples), 97))
    print(json.dumps({"anon_kib": anon_kib() - before, "samples": len(samples), "checksum": checksum}))
    """
)


def synthetic_cache(path: Path, samples: int) -> Path:
    rng = np.random.default_rng(samples)
    ids = rng.integers(0, 32000, samples * TOKENS_PER_SAMPLE, dtype=np.int32)
    mask = rng.random(samples * TOKENS_PER_SAMPLE) < 0.5
    lengths = np.full(samples, TOKENS_PER_SAMPLE, dtype=np.int64)
    counts = mask.reshape(samples, TOKENS_PER_SAMPLE)[:, 1:].sum(axis=1).astype(np.int32)
    write_tokenized(path, [TokenChunk(ids, mask, lengths, counts, 0)], samples)
    return path


def private_growth_kib(path: Path) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_USE, str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    )
    growth: int = json.loads(result.stdout.strip().splitlines()[-1])["anon_kib"]
    return growth


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
def test_private_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    """Loading 8N samples instead of N (and splitting, planning, reading every token) grows a process's private
    (anonymous) memory by a few bytes a sample; the list representation grew by ~54 bytes a token, which here is
    over 300 MB. The token pages are file-backed and shared by all ranks through the page cache."""
    n = 12_500
    small = private_growth_kib(synthetic_cache(tmp_path / "small.tokens", n))
    large = private_growth_kib(synthetic_cache(tmp_path / "large.tokens", 8 * n))
    extra_tokens = 7 * n * TOKENS_PER_SAMPLE
    list_growth_kib = extra_tokens * LIST_BYTES_PER_TOKEN // 1024
    bound_kib = 16 * 1024
    assert large - small < bound_kib < list_growth_kib / 10, (small, large, list_growth_kib)


def test_sample_set_views_match_the_arrays(tmp_path: Path) -> None:
    path = synthetic_cache(tmp_path / "data.tokens", 50)
    data = read_tokenized(path)
    subset = SampleSet(data, np.array([3, 7, 49]))
    assert len(subset) == 3
    assert subset.lengths.tolist() == [TOKENS_PER_SAMPLE] * 3
    sample = subset[1]
    ids = np.asarray(data.input_ids[7 * TOKENS_PER_SAMPLE : 8 * TOKENS_PER_SAMPLE])
    mask = np.asarray(data.loss_mask[7 * TOKENS_PER_SAMPLE : 8 * TOKENS_PER_SAMPLE])
    assert np.array_equal(sample.input_ids, ids)
    assert np.array_equal(sample.labels, np.where(mask, ids, IGNORE_INDEX))
    assert sample.num_loss_tokens == int(mask[1:].sum())
    assert subset[1:].positions.tolist() == [7, 49]
    assert [s.num_loss_tokens for s in subset] == subset.num_loss_tokens.tolist()


def test_an_empty_dataset_file_reads_back_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.tokens"
    write_tokenized(path, [], 3)
    data = read_tokenized(path)
    assert len(data) == 0
    assert data.total_records == 3
    assert list(SampleSet(data)) == []


# --- planning at scale -----------------------------------------------------------------------------------------


def test_plan_step_takes_lengths_as_an_array_with_the_same_plan() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 2048, 5000)
    steps = step_batches(len(lengths), 256, 2, seed=5)
    for step in (steps[0], steps[len(steps) - 1]):
        for padded in (False, True):
            as_array = plan_step(step, lengths, 4, 4096, padded=padded)
            assert as_array == plan_step(step, lengths.tolist(), 4, 4096, padded=padded)


def test_step_batches_are_made_lazily_and_match_the_list_construction() -> None:
    import random

    steps = step_batches(1000, 64, 3, seed=9)
    expected: list[list[int]] = []
    for epoch in range(3):
        order = list(range(1000))
        random.Random(f"finetune-batching:9:{epoch}").shuffle(order)
        expected.extend(order[start : start + 64] for start in range(0, 1000, 64))
    assert steps == expected
    assert list(steps) == expected
    assert steps[-1] == expected[-1]
    assert steps[10:20] == expected[10:20]
    with pytest.raises(IndexError):
        steps[len(expected)]


def test_available_cpus_is_the_cpu_set_lowered_to_the_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert available_cpus(tmp_path / "missing") == affinity
    cpu_max.write_text("max 100000\n")
    assert available_cpus(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")
    assert available_cpus(cpu_max) == 1  # half a core still gets one worker
    cpu_max.write_text(f"{100000 * affinity + 1} 100000\n")
    assert available_cpus(cpu_max) == affinity  # the quota never raises it above the CPU set
