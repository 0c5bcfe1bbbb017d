"""Shared fixtures of the trainer tests: the real shared data and tokenizers built locally from it.

Nothing here downloads anything: the hub is switched to offline mode before transformers is imported, the
byte-level tokenizer is built in code, and the BPE tokenizer is trained on the shared data once per session.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from finetune_trainer.tokenizer import builtin_byte_level_tokenizer, load_tokenizer, train_bpe_tokenizer
from tests.manifests import SHARED_DATA

FASTCHAT_SHAREGPT = SHARED_DATA / "fastchat" / "dummy_conversation.json"
FASTCHAT_CHAT = SHARED_DATA / "fastchat" / "dummy_conversation.chat.jsonl"
GSM8K_TEST_CHAT = SHARED_DATA / "gsm8k" / "test.chat.jsonl"
SELF_INSTRUCT_SEED = SHARED_DATA / "self_instruct" / "seed_tasks.jsonl"
SELF_INSTRUCT_CHAT = SHARED_DATA / "self_instruct" / "seed_tasks.chat.jsonl"
TAXONOMY_CHAT = SHARED_DATA / "instructlab_taxonomy" / "taxonomy_seed.chat.jsonl"

BPE_VOCAB_SIZE = 2048
BPE_TRAINING_FILES = (FASTCHAT_CHAT, SELF_INSTRUCT_CHAT, GSM8K_TEST_CHAT)
"""Small on purpose (about 1 MiB): training takes well under a second. gsm8k train is left out for held-out checks."""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data directory; a missing checkout is an error, not a skip, so CI cannot pass without the data."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.fail(f"shared data not found at {SHARED_DATA}; check out the shared data next to the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer trained on the shared chat data, saved as a transformers directory."""
    return train_bpe_tokenizer(list(BPE_TRAINING_FILES), BPE_VOCAB_SIZE, tmp_path_factory.mktemp("bpe-tokenizer"))


@pytest.fixture
def bpe_tokenizer(bpe_tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    """A fresh load per test, so a test may change it (template, padding) without touching the others."""
    return load_tokenizer(str(bpe_tokenizer_dir), None)


@pytest.fixture
def byte_tokenizer() -> PreTrainedTokenizerBase:
    """The builtin byte-level tokenizer: token id b is byte b, then the special tokens."""
    return builtin_byte_level_tokenizer()


@pytest.fixture(params=["byte-level", "bpe"])
def any_tokenizer(
    request: pytest.FixtureRequest, byte_tokenizer: PreTrainedTokenizerBase, bpe_tokenizer_dir: Path
) -> PreTrainedTokenizerBase:
    """Each locally built tokenizer in turn."""
    if request.param == "byte-level":
        return byte_tokenizer
    return load_tokenizer(str(bpe_tokenizer_dir), None)
