"""Tokenizers built without downloads: the builtin byte-level one, a BPE trained on the shared data, directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from finetune_trainer.tokenizer import (
    BUILTIN_BYTE_LEVEL,
    EOS_TOKEN,
    FALLBACK_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TokenizerError,
    builtin_byte_level_tokenizer,
    chat_template_for,
    load_tokenizer,
    tokenizer_fingerprint,
)
from tests.trainer.conftest import BPE_VOCAB_SIZE, SHARED_DATA

UNICODE_TEXT = "Ωmega ñandú, 東京 and an emoji 😀\ttab\nnew line  two spaces"


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def test_builtin_is_built_without_files_and_maps_bytes_to_ids() -> None:
    tokenizer = load_tokenizer(BUILTIN_BYTE_LEVEL, None)
    assert encode(tokenizer, UNICODE_TEXT) == list(UNICODE_TEXT.encode("utf-8"))
    assert tokenizer.decode(encode(tokenizer, UNICODE_TEXT)) == UNICODE_TEXT
    assert len(tokenizer) == 256 + len(SPECIAL_TOKENS)
    special_ids = [encode(tokenizer, token) for token in SPECIAL_TOKENS]
    assert all(len(ids) == 1 and ids[0] >= 256 for ids in special_ids)
    assert len({ids[0] for ids in special_ids}) == len(SPECIAL_TOKENS)
    assert tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.pad_token is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_builtin_template_renders_the_documented_shape(byte_tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    rendered = str(byte_tokenizer.apply_chat_template(messages, tokenize=False))
    assert rendered == "<|bos|><|system|>\nBe brief.<|end|><|user|>\nWhat is 2+2?<|end|><|assistant|>\n4<|end|>"
    prompt = str(byte_tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True))
    assert rendered.startswith(prompt)
    assert prompt.endswith("<|end|><|assistant|>\n")


def test_builtin_survives_save_and_reload(byte_tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    byte_tokenizer.save_pretrained(str(tmp_path))
    reloaded = load_tokenizer(str(tmp_path), None)
    assert encode(reloaded, UNICODE_TEXT) == encode(byte_tokenizer, UNICODE_TEXT)
    assert reloaded.chat_template == FALLBACK_CHAT_TEMPLATE
    assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(byte_tokenizer)


def test_trained_bpe_loads_from_its_directory(bpe_tokenizer: PreTrainedTokenizerBase) -> None:
    assert len(bpe_tokenizer) == BPE_VOCAB_SIZE
    assert bpe_tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert all(len(encode(bpe_tokenizer, token)) == 1 for token in SPECIAL_TOKENS)
    assert bpe_tokenizer.eos_token == EOS_TOKEN
    # Characters never seen in training still round-trip: the alphabet is all 256 bytes.
    assert bpe_tokenizer.decode(encode(bpe_tokenizer, UNICODE_TEXT)) == UNICODE_TEXT


def test_trained_bpe_compresses_text_it_was_not_trained_on(bpe_tokenizer: PreTrainedTokenizerBase) -> None:
    held_out = (SHARED_DATA / "gsm8k" / "train-00000-of-00002.chat.jsonl").read_text(encoding="utf-8")[:50_000]
    ids = encode(bpe_tokenizer, held_out)
    assert bpe_tokenizer.decode(ids) == held_out
    # A 2k-vocab BPE on English must at least halve the byte count (byte-level would be 1 token per byte).
    assert len(ids) < len(held_out.encode("utf-8")) / 2


def test_model_path_is_the_default_and_spec_wins(bpe_tokenizer_dir: Path) -> None:
    from_model = load_tokenizer(None, str(bpe_tokenizer_dir))
    assert len(from_model) == BPE_VOCAB_SIZE
    overridden = load_tokenizer(BUILTIN_BYTE_LEVEL, str(bpe_tokenizer_dir))
    assert len(overridden) == 256 + len(SPECIAL_TOKENS)


@pytest.mark.parametrize("source", ["/nonexistent/tokenizer", "./missing-tokenizer", "relative/dir/tokenizer"])
def test_missing_directory_fails_without_asking_the_hub(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hub(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"hub lookup for {args}")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_hub)
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(source, None)


def test_hub_id_is_only_used_when_named_and_gets_a_template(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def from_hub(*args: Any, **kwargs: Any) -> PreTrainedTokenizerBase:
        calls.append((args, kwargs))
        untemplated = builtin_byte_level_tokenizer()
        untemplated.chat_template = None
        return untemplated

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", from_hub)
    tokenizer = load_tokenizer("org/model", None, revision="v1")
    assert calls == [(("org/model",), {"revision": "v1"})]
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE


@pytest.mark.parametrize(
    ("spec", "model_path", "message"),
    [("builtin:word-level", None, "unknown builtin"), (None, None, "no tokenizer")],
)
def test_unusable_specs_are_tokenizer_errors(spec: str | None, model_path: str | None, message: str) -> None:
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(spec, model_path)


def test_own_template_is_kept_and_fallback_only_fills_a_gap(byte_tokenizer: PreTrainedTokenizerBase) -> None:
    own = "{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    byte_tokenizer.chat_template = own
    assert chat_template_for(byte_tokenizer) == own
    byte_tokenizer.chat_template = {"default": own, "tool_use": "{{ tools }}"}
    assert chat_template_for(byte_tokenizer) == own
    byte_tokenizer.chat_template = None
    assert chat_template_for(byte_tokenizer) == FALLBACK_CHAT_TEMPLATE


def test_no_template_and_no_eos_is_refused(byte_tokenizer: PreTrainedTokenizerBase) -> None:
    byte_tokenizer.chat_template = None
    byte_tokenizer.eos_token = None
    with pytest.raises(TokenizerError, match="no eos token"):
        chat_template_for(byte_tokenizer)


def test_fingerprint_tracks_what_decides_token_ids(
    byte_tokenizer: PreTrainedTokenizerBase, bpe_tokenizer: PreTrainedTokenizerBase
) -> None:
    before = tokenizer_fingerprint(byte_tokenizer)
    assert before == tokenizer_fingerprint(builtin_byte_level_tokenizer())
    # transformers stores padding/truncation settings in the backend during a call; they must not matter.
    byte_tokenizer(["a b", "c"], padding=True, truncation=True, max_length=2)
    assert tokenizer_fingerprint(byte_tokenizer) == before
    assert tokenizer_fingerprint(bpe_tokenizer) != before
    byte_tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    assert tokenizer_fingerprint(byte_tokenizer) != before
