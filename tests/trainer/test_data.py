"""Data loading, formats, assistant-only labels, dropping, eval split and the rank-0 cache, on the shared data."""

from __future__ import annotations

import json
import multiprocessing
import queue
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerBase

from finetune_trainer import data as data_module
from finetune_trainer.config import DataFormat, DatasetSpec
from finetune_trainer.data import (
    IGNORE_INDEX,
    DataError,
    PreparedData,
    Sample,
    cache_key,
    load_messages,
    prepare_data,
    split_eval,
    tokenize_conversation,
)
from finetune_trainer.tokenizer import BUILTIN_BYTE_LEVEL, builtin_byte_level_tokenizer, load_tokenizer
from tests.trainer.conftest import (
    FASTCHAT_CHAT,
    FASTCHAT_SHAREGPT,
    GSM8K_TEST_CHAT,
    SELF_INSTRUCT_CHAT,
    SELF_INSTRUCT_SEED,
    TAXONOMY_CHAT,
)

Messages = list[dict[str, str]]

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_lines(path: Path) -> list[Messages]:
    """The messages of a chat JSONL file, read independently of the code under test."""
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def labelled_runs(sample: Sample) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of trained-on positions."""
    runs: list[tuple[int, int]] = []
    for position, label in enumerate(sample.labels):
        if label == IGNORE_INDEX:
            continue
        if runs and runs[-1][1] == position:
            runs[-1] = (runs[-1][0], position + 1)
        else:
            runs.append((position, position + 1))
    return runs


def six_message_fastchat_conversation() -> Messages:
    conversations = load_messages(DatasetSpec(path=str(FASTCHAT_SHAREGPT), format="sharegpt"))
    return next(messages for messages in conversations if len(messages) == 6)


# --- formats -------------------------------------------------------------------------------------------------


def test_messages_format_reads_the_gsm8k_chat_file(shared_data: Path) -> None:
    loaded = load_messages(DatasetSpec(path=str(GSM8K_TEST_CHAT)))
    assert loaded == chat_lines(GSM8K_TEST_CHAT)


def test_sharegpt_matches_the_upstream_chat_conversion(shared_data: Path) -> None:
    loaded = load_messages(DatasetSpec(path=str(FASTCHAT_SHAREGPT), format="sharegpt"))
    assert loaded == chat_lines(FASTCHAT_CHAT)
    assert {len(messages) for messages in loaded} == {2, 4, 6}


def test_alpaca_matches_the_self_instruct_chat_conversion(shared_data: Path, tmp_path: Path) -> None:
    alpaca = []
    for line in SELF_INSTRUCT_SEED.read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        instance = task["instances"][0]
        alpaca.append(
            {
                "instruction": task["instruction"].strip(),
                "input": instance["input"].strip(),
                "output": instance["output"].strip(),
            }
        )
    loaded = load_messages(DatasetSpec(path=str(write_jsonl(tmp_path / "alpaca.jsonl", alpaca)), format="alpaca"))
    assert loaded == chat_lines(SELF_INSTRUCT_CHAT)
    assert any("\n\n" in messages[0]["content"] for messages in loaded)


def test_directory_mixes_jsonl_json_and_parquet_in_path_order(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    shutil.copy(FASTCHAT_CHAT, tmp_path / "a" / "fastchat.jsonl")
    self_instruct = [{"messages": messages} for messages in chat_lines(SELF_INSTRUCT_CHAT)]
    (tmp_path / "b.json").write_text(json.dumps(self_instruct), encoding="utf-8")
    taxonomy = [json.loads(line) for line in TAXONOMY_CHAT.read_text(encoding="utf-8").splitlines()]
    pq.write_table(pa.Table.from_pylist(taxonomy), tmp_path / "c.parquet")
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / ".hidden.jsonl").write_text("not json either\n")
    loaded = load_messages(DatasetSpec(path=str(tmp_path)))
    expected = chat_lines(FASTCHAT_CHAT) + chat_lines(SELF_INSTRUCT_CHAT) + [r["messages"] for r in taxonomy]
    assert loaded == expected


def test_hub_dataset_is_read_only_when_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import datasets  # type: ignore[import-untyped]

    calls: list[tuple[str, str]] = []
    records = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]

    def load_dataset(name: str, *, split: str) -> list[dict[str, Any]]:
        calls.append((name, split))
        return records

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert load_messages(DatasetSpec(name="org/chat", split="validation")) == [records[0]["messages"]]
    assert calls == [("org/chat", "validation")]
    load_messages(DatasetSpec(path=str(write_jsonl(tmp_path / "local.jsonl", records))))
    assert calls == [("org/chat", "validation")]


USER = {"role": "user", "content": "q"}
ANSWER = {"role": "assistant", "content": "a"}
GOOD = json.dumps({"messages": [USER, ANSWER]})
ROBOT = json.dumps({"messages": [USER, {"role": "robot", "content": "x"}]})
BOT = json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]})


def messages_line(*messages: Any) -> str:
    return json.dumps({"messages": list(messages)})


@pytest.mark.parametrize(
    ("data_format", "lines", "fragments"),
    [
        ("messages", [GOOD, "", '{"messages": [oops'], [":3:", "malformed JSON"]),
        ("messages", [GOOD, ROBOT], [":2 (record 1)", "message 1", "unknown role 'robot'"]),
        ("messages", [messages_line()], ["record 0", "empty conversation"]),
        ("messages", [messages_line(USER)], ["no assistant message"]),
        ("messages", [messages_line(ANSWER, USER, ANSWER)], ["starts with an assistant message"]),
        ("messages", [messages_line({"role": "user", "content": 3}, ANSWER)], ["'content' must be a str"]),
        ("messages", [messages_line({"content": "x"}, ANSWER)], ["message 0", "missing key 'role'"]),
        ("messages", ["[1, 2]"], ["must be a JSON object"]),
        ("messages", [json.dumps({"conversations": []})], ["missing key 'messages'"]),
        ("alpaca", [json.dumps({"instruction": "do it", "input": ""})], ["record 0", "missing key 'output'"]),
        ("sharegpt", [BOT], ["turn 1", "unknown role (from) 'bot'"]),
    ],
)
def test_bad_records_are_data_errors_naming_file_line_and_rule(
    tmp_path: Path, data_format: str, lines: list[str], fragments: list[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_messages(DatasetSpec(path=str(path), format=data_format))
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_unknown_format_and_bad_paths_are_data_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ok.jsonl", [{"messages": [USER, ANSWER]}])
    with pytest.raises(DataError, match="unknown format 'csv'"):
        load_messages(
            DatasetSpec.model_construct(path=str(path), name=None, format=cast(DataFormat, "csv"), split="train")
        )
    with pytest.raises(DataError, match="no such file"):
        load_messages(DatasetSpec(path=str(tmp_path / "missing.jsonl")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        load_messages(DatasetSpec(path=str(tmp_path / "empty")))
    (tmp_path / "object.json").write_text('{"messages": []}')
    with pytest.raises(DataError, match="array of records"):
        load_messages(DatasetSpec(path=str(tmp_path / "object.json")))
    assert issubclass(DataError, ValueError)


# --- assistant-only labels -----------------------------------------------------------------------------------


def test_labels_match_a_piecewise_encoding_token_by_token(byte_tokenizer: PreTrainedTokenizerBase) -> None:
    """Byte-level ids do not merge across pieces, so encoding the template's pieces one by one is an oracle."""
    messages = six_message_fastchat_conversation()
    pieces: list[tuple[str, bool]] = [("<|bos|>", False)]
    for message in messages:
        header = f"<|{message['role']}|>\n"
        if message["role"] == "assistant":
            pieces += [(header, False), (message["content"] + "<|end|>", True)]
        else:
            pieces.append((header + message["content"] + "<|end|>", False))
    expected_ids: list[int] = []
    expected_labels: list[int] = []
    for text, trained in pieces:
        ids = byte_tokenizer.encode(text, add_special_tokens=False)
        expected_ids += ids
        expected_labels += ids if trained else [IGNORE_INDEX] * len(ids)
    sample = tokenize_conversation(byte_tokenizer, messages)
    assert sample.input_ids == expected_ids
    for position, (label, expected) in enumerate(zip(sample.labels, expected_labels, strict=True)):
        assert label == expected, f"position {position}"


def test_labelled_spans_are_the_assistant_turns(any_tokenizer: PreTrainedTokenizerBase) -> None:
    messages = six_message_fastchat_conversation()
    sample = tokenize_conversation(any_tokenizer, messages)
    assert sample.input_ids == any_tokenizer.apply_chat_template(messages, return_dict=False)
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(sample.labels, sample.input_ids, strict=True))
    runs = labelled_runs(sample)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [any_tokenizer.decode(sample.input_ids[a:b]) for a, b in runs] == [f"{x}<|end|>" for x in answers]
    # The unlabelled gaps are exactly the prompts: bos, user turns and the assistant headers.
    previous_ends = [0, *(end for _, end in runs[:-1])]
    gaps = [
        any_tokenizer.decode(sample.input_ids[end:start]) for end, (start, _) in zip(previous_ends, runs, strict=True)
    ]
    prompts = [f"<|user|>\n{m['content']}<|end|><|assistant|>\n" for m in messages if m["role"] == "user"]
    assert gaps == ["<|bos|>" + prompts[0], *prompts[1:]]
    assert runs[-1][1] == len(sample.input_ids)
    assert sample.num_loss_tokens == sum(b - a for a, b in runs)


def test_template_with_system_turn_and_text_after_the_end_token(bpe_tokenizer: PreTrainedTokenizerBase) -> None:
    bpe_tokenizer.chat_template = CHATML
    messages = [{"role": "system", "content": "You are terse."}, *six_message_fastchat_conversation()[:4]]
    sample = tokenize_conversation(bpe_tokenizer, messages)
    decoded = [bpe_tokenizer.decode(sample.input_ids[a:b]) for a, b in labelled_runs(sample)]
    assert decoded == [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]


def test_template_that_rewrites_earlier_turns_is_refused(byte_tokenizer: PreTrainedTokenizerBase) -> None:
    byte_tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}[LAST]{% endif %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    )
    with pytest.raises(DataError, match="prefix"):
        tokenize_conversation(byte_tokenizer, six_message_fastchat_conversation())


TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="<"), max_size=30)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4), st.booleans(), TEXT)
def test_any_conversation_labels_exactly_its_answers(turns: list[tuple[str, str]], system: bool, prompt: str) -> None:
    tokenizer = builtin_byte_level_tokenizer()
    messages = [{"role": "system", "content": prompt}] if system else []
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    sample = tokenize_conversation(tokenizer, messages)
    labelled = [token for token in sample.labels if token != IGNORE_INDEX]
    expected = "".join(answer + "<|end|>" for _, answer in turns)
    assert tokenizer.decode(labelled) == expected
    assert sample.num_loss_tokens == len(labelled)


def test_slow_tokenizers_are_refused_because_labels_need_offsets() -> None:
    with pytest.raises(TypeError, match="not a fast tokenizer"):
        tokenize_conversation(cast(PreTrainedTokenizerBase, object()), [USER, ANSWER])


def test_num_loss_tokens_counts_after_the_causal_shift() -> None:
    assert Sample(input_ids=[5, 6, 7, 8], labels=[5, IGNORE_INDEX, 7, 8]).num_loss_tokens == 2
    assert Sample(input_ids=[5, 6], labels=[IGNORE_INDEX, IGNORE_INDEX]).num_loss_tokens == 0


# --- prepare: drop, split, cache ------------------------------------------------------------------------------


def prepare(path: Path, tokenizer: PreTrainedTokenizerBase, cache_dir: Path | None, **kwargs: Any) -> PreparedData:
    options: dict[str, Any] = {"max_seq_len": 4096, "eval_fraction": 0.0, "seed": 0, **kwargs}
    return prepare_data([DatasetSpec(path=str(path))], tokenizer, cache_dir=cache_dir, **options)


def contents(prepared: PreparedData) -> tuple[list[Sample], list[Sample], int, int]:
    """Everything but where it was cached."""
    return prepared.train, prepared.eval, prepared.dropped_too_long, prepared.total_records


def test_overlong_samples_are_dropped_and_counted_never_truncated(
    shared_data: Path, bpe_tokenizer: PreTrainedTokenizerBase
) -> None:
    every = [tokenize_conversation(bpe_tokenizer, messages) for messages in chat_lines(FASTCHAT_CHAT)]
    lengths = sorted(len(sample.input_ids) for sample in every)
    limit = lengths[len(lengths) // 2]
    prepared = prepare(FASTCHAT_CHAT, bpe_tokenizer, None, max_seq_len=limit)
    assert prepared.total_records == len(every)
    assert prepared.dropped_too_long == sum(1 for length in lengths if length > limit) > 0
    assert prepared.train == [sample for sample in every if len(sample.input_ids) <= limit]
    assert any(len(sample.input_ids) == limit for sample in prepared.train)
    assert prepared.eval == []
    assert prepared.cache_path is None


def old_split_eval(samples: list[Sample], eval_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """The list-of-objects split the index-array one replaced, kept as its oracle."""
    count = round(eval_fraction * len(samples))
    if eval_fraction > 0 and len(samples) > 1:
        count = min(max(count, 1), len(samples) - 1)
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:count])
    train = [sample for index, sample in enumerate(samples) if index not in held_out]
    return train, [samples[index] for index in sorted(held_out)]


def test_eval_split_is_seeded_disjoint_and_complete() -> None:
    train, held_out = split_eval(200, 0.1, seed=7)
    assert len(held_out) == 20
    assert sorted([*train.tolist(), *held_out.tolist()]) == list(range(200))
    assert list(train) == sorted(train)
    assert list(held_out) == sorted(held_out)
    assert all(np.array_equal(a, b) for a, b in zip(split_eval(200, 0.1, seed=7), (train, held_out), strict=True))
    assert not np.array_equal(split_eval(200, 0.1, seed=8)[1], held_out)
    assert len(split_eval(2, 0.01, seed=0)[1]) == 1
    assert len(split_eval(2, 0.99, seed=0)[0]) == 1
    assert split_eval(200, 0.0, seed=0)[0].tolist() == list(range(200))
    assert split_eval(0, 0.5, seed=0)[0].tolist() == []


@pytest.mark.parametrize(("n", "fraction", "seed"), [(200, 0.1, 7), (37, 0.3, 1), (2, 0.01, 0), (5, 0.0, 3)])
def test_eval_split_chooses_what_the_list_split_chose(n: int, fraction: float, seed: int) -> None:
    samples = [Sample(input_ids=[0, index], labels=[IGNORE_INDEX, index]) for index in range(n)]
    train, held_out = split_eval(n, fraction, seed)
    old_train, old_held_out = old_split_eval(samples, fraction, seed)
    assert [samples[i] for i in train] == old_train
    assert [samples[i] for i in held_out] == old_held_out


@pytest.fixture
def small_chat(shared_data: Path, tmp_path: Path) -> Path:
    """The first 40 fastchat conversations: enough to cache, quick to tokenize."""
    (tmp_path / "data").mkdir()
    return write_jsonl(tmp_path / "data" / "chat.jsonl", [{"messages": m} for m in chat_lines(FASTCHAT_CHAT)[:40]])


def forbid_tokenizing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any) -> Sample:
        raise AssertionError("tokenized although the cache should have been used")

    monkeypatch.setattr(data_module, "tokenize_conversation", fail)


def test_cache_is_written_once_and_hit_afterwards(
    small_chat: Path, byte_tokenizer: PreTrainedTokenizerBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = prepare(small_chat, byte_tokenizer, cache, eval_fraction=0.25, seed=3)
    assert first.cache_path is not None
    assert first.cache_path.is_file()
    assert first.cache_path.with_name(first.cache_path.name + ".done").is_file()
    assert contents(first) == contents(prepare(small_chat, byte_tokenizer, None, eval_fraction=0.25, seed=3))
    forbid_tokenizing(monkeypatch)
    assert prepare(small_chat, byte_tokenizer, cache, eval_fraction=0.25, seed=3) == first
    # The same bytes elsewhere are the same data.
    copy = shutil.copy(small_chat, tmp_path / "elsewhere.jsonl")
    assert prepare(Path(copy), byte_tokenizer, cache, eval_fraction=0.25, seed=3) == first


def change_data(path: Path, tokenizer: PreTrainedTokenizerBase) -> tuple[Path, PreTrainedTokenizerBase, int]:
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps({"messages": [USER, ANSWER]}) + "\n")
    return path, tokenizer, 4096


def change_tokenizer(path: Path, tokenizer: PreTrainedTokenizerBase) -> tuple[Path, PreTrainedTokenizerBase, int]:
    tokenizer.chat_template = CHATML
    return path, tokenizer, 4096


def change_max_seq_len(path: Path, tokenizer: PreTrainedTokenizerBase) -> tuple[Path, PreTrainedTokenizerBase, int]:
    return path, tokenizer, 300


Change = Callable[[Path, PreTrainedTokenizerBase], tuple[Path, PreTrainedTokenizerBase, int]]


@pytest.mark.parametrize("change", [change_data, change_tokenizer, change_max_seq_len])
def test_changed_data_tokenizer_or_length_misses_the_cache(
    change: Change, small_chat: Path, byte_tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    before = prepare(small_chat, byte_tokenizer, cache)
    path, tokenizer, max_seq_len = change(small_chat, byte_tokenizer)
    after = prepare(path, tokenizer, cache, max_seq_len=max_seq_len)
    assert after.cache_path != before.cache_path
    assert contents(after) == contents(prepare(path, tokenizer, None, max_seq_len=max_seq_len))
    assert after.train != before.train or after.dropped_too_long != before.dropped_too_long


def test_cache_key_covers_the_format(small_chat: Path, byte_tokenizer: PreTrainedTokenizerBase) -> None:
    as_messages = cache_key([DatasetSpec(path=str(small_chat))], byte_tokenizer, 4096)
    as_sharegpt = cache_key([DatasetSpec(path=str(small_chat), format="sharegpt")], byte_tokenizer, 4096)
    assert as_messages != as_sharegpt


def test_rank0_rebuilds_a_cache_file_without_its_done_marker(
    small_chat: Path, byte_tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    key = cache_key([DatasetSpec(path=str(small_chat))], byte_tokenizer, 4096)
    cache.mkdir()
    (cache / f"tokenized-{key}.tokens").write_bytes(b"half-written by a killed pod")
    prepared = prepare(small_chat, byte_tokenizer, cache)
    assert prepared.cache_path == cache / f"tokenized-{key}.tokens"
    assert prepared.train == prepare(small_chat, byte_tokenizer, None).train


def test_other_ranks_time_out_when_rank0_never_writes(
    small_chat: Path, byte_tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"rank 1 waited .*\.done"):
        prepare(small_chat, byte_tokenizer, tmp_path / "cache", rank=1, world_size=2, wait_timeout_s=0.3)
    assert time.monotonic() - start >= 0.3


def _rank1(path: str, cache_dir: str, ready: Any, results: Any) -> None:
    """Rank 1 in its own process: must wait for rank 0's cache and must not tokenize anything itself."""
    from finetune_trainer import data

    def fail(*args: Any) -> Sample:
        raise AssertionError("rank 1 tokenized")

    data.tokenize_conversation = fail  # type: ignore[assignment]
    tokenizer = load_tokenizer(BUILTIN_BYTE_LEVEL, None)
    ready.set()
    prepared = data.prepare_data(
        [DatasetSpec(path=path)],
        tokenizer,
        max_seq_len=4096,
        eval_fraction=0.25,
        seed=3,
        cache_dir=Path(cache_dir),
        rank=1,
        world_size=2,
        wait_timeout_s=120,
    )
    results.put((prepared, time.time()))


def receive(results: Any, process: Any, timeout_s: float) -> Any:
    """The child's result, failing as soon as the child dies without one instead of after the whole timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=0.2)
        except queue.Empty:
            if not process.is_alive() and results.empty():
                raise AssertionError(f"rank 1 exited with code {process.exitcode} and no result") from None
    raise AssertionError(f"rank 1 gave no result within {timeout_s}s")


def test_rank1_waits_for_rank0_and_reads_the_same_cache(
    small_chat: Path, byte_tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    rank1 = context.Process(target=_rank1, args=(str(small_chat), str(cache), ready, results))
    rank1.start()
    try:
        assert ready.wait(timeout=120), "rank 1 did not start"
        time.sleep(0.5)
        assert rank1.is_alive(), "rank 1 finished before rank 0 wrote the cache"
        assert not cache.exists() or not list(cache.glob("*.done"))
        rank0 = prepare(small_chat, byte_tokenizer, cache, rank=0, world_size=2, eval_fraction=0.25, seed=3)
        from_rank1, finished_at = receive(results, rank1, 120)
    finally:
        rank1.join(timeout=120)
        if rank1.is_alive():
            rank1.kill()
    assert rank1.exitcode == 0
    assert from_rank1 == rank0
    assert rank0.cache_path is not None
    assert finished_at >= rank0.cache_path.with_name(rank0.cache_path.name + ".done").stat().st_mtime
    assert rank0.train
    assert rank0.eval
