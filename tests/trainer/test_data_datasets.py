"""Parquet files and saved datasets read through `datasets`: the same records, streamed, and clear errors."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import datasets  # type: ignore[import-untyped]
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from finetune_trainer.config import DatasetSpec
from finetune_trainer.data import DataError, cache_key, iter_messages, load_messages
from finetune_trainer.tokenizer import builtin_byte_level_tokenizer
from tests.trainer.conftest import GSM8K_TEST_CHAT, TAXONOMY_CHAT


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_parquet_with_many_row_groups_reads_every_record_in_order(shared_data: Path, tmp_path: Path) -> None:
    records = records_of(GSM8K_TEST_CHAT)
    path = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=100)
    assert pq.ParquetFile(path).num_row_groups > 10
    assert load_messages(DatasetSpec(path=str(path))) == [r["messages"] for r in records]


@pytest.mark.parametrize("copies", [20, 80])
def test_parquet_is_streamed_in_bounded_memory(shared_data: Path, tmp_path: Path, copies: int) -> None:
    """Reading every record holds about one batch of rows (Arrow buffers and Python objects both), whatever the
    file's size: the old reader built the whole table and a Python list of every record; `datasets`' streaming
    reader holds the whole file's bytes."""
    records = records_of(GSM8K_TEST_CHAT) * copies
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=1000)
    del records
    size = path.stat().st_size
    arrow_before = arrow_peak = pa.total_allocated_bytes()
    count = 0
    tracemalloc.start()
    try:
        for _ in iter_messages(DatasetSpec(path=str(path))):
            count += 1
            if count % 500 == 0:
                arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 1319 * copies
    bound = 8 * 2**20  # one 1,024-row batch of these records is ~1.5 MB of Python objects, ~1.7 MB of Arrow
    assert python_peak < bound, f"{python_peak:,} bytes of Python objects reading a {size:,}-byte file"
    assert arrow_peak - arrow_before < bound, f"{arrow_peak - arrow_before:,} Arrow bytes reading {size:,}"


def test_saved_dataset_and_dataset_dict_are_read_at_the_split(shared_data: Path, tmp_path: Path) -> None:
    test_records = records_of(GSM8K_TEST_CHAT)[:200]
    taxonomy = records_of(TAXONOMY_CHAT)
    single = tmp_path / "single"
    datasets.Dataset.from_list(test_records).save_to_disk(str(single))
    assert load_messages(DatasetSpec(path=str(single))) == [r["messages"] for r in test_records]

    both = tmp_path / "dict"
    splits = {"train": datasets.Dataset.from_list(taxonomy), "test": datasets.Dataset.from_list(test_records)}
    datasets.DatasetDict(splits).save_to_disk(str(both))
    assert load_messages(DatasetSpec(path=str(both))) == [r["messages"] for r in taxonomy]
    assert load_messages(DatasetSpec(path=str(both), split="test")) == [r["messages"] for r in test_records]
    with pytest.raises(DataError) as caught:
        load_messages(DatasetSpec(path=str(both), split="validation"))
    assert str(both) in str(caught.value)
    assert "no split 'validation' (splits: test, train)" in str(caught.value)


def test_saved_dataset_records_are_validated_like_file_records(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3
    rows.append({"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "boop"}]})
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    with pytest.raises(DataError) as caught:
        load_messages(DatasetSpec(path=str(saved)))
    assert f"{saved} (split train) record 3" in str(caught.value)
    assert "robot" in str(caught.value)


def test_unreadable_parquet_and_saved_dataset_are_data_errors(shared_data: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError) as caught:
        load_messages(DatasetSpec(path=str(garbage)))
    assert f"{garbage}: not a readable Parquet file" in str(caught.value)

    records = records_of(GSM8K_TEST_CHAT)
    truncated = tmp_path / "truncated.parquet"
    pq.write_table(pa.Table.from_pylist(records), truncated, row_group_size=100)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_messages(DatasetSpec(path=str(truncated)))

    saved = tmp_path / "saved"
    datasets.Dataset.from_list(records[:50]).save_to_disk(str(saved))
    next(saved.glob("data-*.arrow")).unlink()
    with pytest.raises(DataError) as caught:
        load_messages(DatasetSpec(path=str(saved)))
    assert f"{saved} (split train): not a readable saved dataset" in str(caught.value)


def test_a_saved_dataset_inside_a_data_directory_is_refused_by_name(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    (tmp_path / "a.jsonl").write_text(json.dumps(rows[0]) + "\n")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError) as caught:
        load_messages(DatasetSpec(path=str(tmp_path)))
    assert f"{tmp_path / 'saved'} is a saved dataset" in str(caught.value)


def test_cache_key_of_a_saved_dataset_follows_its_contents_and_split(shared_data: Path, tmp_path: Path) -> None:
    tokenizer = builtin_byte_level_tokenizer()
    records = records_of(GSM8K_TEST_CHAT)
    first, copy, changed = tmp_path / "first", tmp_path / "copy", tmp_path / "changed"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:100])}).save_to_disk(str(first))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:100])}).save_to_disk(str(copy))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:101])}).save_to_disk(str(changed))

    def key(path: Path, split: str = "train") -> str:
        return cache_key([DatasetSpec(path=str(path), split=split)], tokenizer, 512)

    assert key(first) == key(copy)
    assert key(first) != key(changed)
    assert key(first) != key(first, split="test")
