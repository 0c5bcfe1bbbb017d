"""Tokenizers for the trainer: a local directory, a hub id the user named, or one built in code.

`builtin:byte-level` needs no files and no download, so tests and smoke runs on air-gapped machines can build a
tokenizer from nothing; `train_bpe_tokenizer` builds a small, real BPE tokenizer from local chat data. Both ship
with the same chat template, `FALLBACK_CHAT_TEMPLATE`, which is also what a tokenizer without a template of its
own is given.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, trainers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

BUILTIN_BYTE_LEVEL = "builtin:byte-level"
"""Tokenizer spec of the tokenizer built in code: 256 byte tokens plus `SPECIAL_TOKENS`."""

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|end|>"
"""Ends every turn and every generation: one token, so a model that learns to end its turn learns to stop."""
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS)

FALLBACK_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""The chat template used when a tokenizer has none (and shipped with the builtin and trained tokenizers).

Why: supervised fine-tuning needs *some* rendering of a conversation, and a base model's tokenizer often has no
template. This one is Zephyr-shaped and needs nothing but an eos token::

    <|bos|><|user|>\\nWhat is 2+2?<|end|><|assistant|>\\n4<|end|>

(bos only if the tokenizer has one; `<|end|>` stands for the tokenizer's eos token). Every turn ends with eos, so
the trained model emits eos at the end of its answer and generation stops there. Nothing follows eos within a turn,
and the generation prompt is exactly the assistant header, so an assistant turn's labelled span is its content
plus eos. The role markers are special tokens in the builtin and trained tokenizers and plain text elsewhere.
"""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class TokenizerError(ValueError):
    """A tokenizer spec that cannot be used (missing directory, unknown builtin, no template and no eos)."""


def load_tokenizer(spec: str | None, model_path: str | None, *, revision: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer named by `spec` (model.tokenizer), else the model's own (`model_path`: a directory or hub id).

    A directory is loaded with `local_files_only`, so a mistyped or unmounted path fails here instead of turning
    into a hub download; a hub id is only used because the user wrote one. The result always has a chat template
    (its own, or `FALLBACK_CHAT_TEMPLATE`), so checkpoints saved with it record the format the model was trained on.
    """
    source = spec if spec is not None else model_path
    if source is None:
        raise TokenizerError("no tokenizer: set model.tokenizer (a directory, hub id or builtin:byte-level)")
    if source.startswith("builtin:"):
        if source != BUILTIN_BYTE_LEVEL:
            raise TokenizerError(f"unknown builtin tokenizer {source!r}; the only one is {BUILTIN_BYTE_LEVEL!r}")
        return builtin_byte_level_tokenizer()
    if Path(source).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    elif _looks_like_hub_id(source):
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    else:
        raise TokenizerError(f"tokenizer directory {source!r} does not exist (and it is not a hub id)")
    tokenizer.chat_template = chat_template_for(tokenizer)
    return tokenizer


def _looks_like_hub_id(source: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything path-like (`/x`, `./x`, `a/b/c`) is a missing directory."""
    return _HUB_ID.match(source) is not None and not source.startswith(".")


def chat_template_for(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's own chat template (the default one if it has several), else `FALLBACK_CHAT_TEMPLATE`."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if isinstance(template, str) and template:
        return template
    if tokenizer.eos_token is None:
        raise TokenizerError(
            "the tokenizer has no chat template and no eos token, so turns cannot be ended; use a tokenizer with one"
        )
    return FALLBACK_CHAT_TEMPLATE


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that decides token ids: vocab/merges/normalizers, special tokens and chat template.

    The backend's padding and truncation settings are left out: transformers changes them in place when a call
    asks for padding or truncation, and they do not change how a text is split into tokens.
    """
    if isinstance(tokenizer, PreTrainedTokenizerFast):
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
        backend.pop("padding", None)
        backend.pop("truncation", None)
    else:
        backend = {"vocab": sorted(tokenizer.get_vocab().items())}
    identity = {
        "class": type(tokenizer).__name__,
        "backend": backend,
        "special_tokens": tokenizer.special_tokens_map,
        "chat_template": chat_template_for(tokenizer),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table, which the tokenizers ByteLevel pre-tokenizer and decoder use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around a tokenizers one, with our special tokens and the fallback template."""
    # TokenizersBackend.__init__ takes untyped *args/**kwargs; there is no typed constructor to call instead.
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS),
        chat_template=FALLBACK_CHAT_TEMPLATE,
    )


def builtin_byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """Token id b is byte b (0..255), then `SPECIAL_TOKENS`; no merges, so any text round-trips exactly.

    Byte-level means long sequences (one token per UTF-8 byte) but no files and no training: the right tokenizer for
    tests and tiny models, not for real runs.
    """
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return _wrap(backend)


def train_bpe_tokenizer(files: list[Path], vocab_size: int, out_dir: Path, *, max_lines: int | None = None) -> Path:
    """Train a byte-level BPE on the message contents of chat JSONL files and save it as a transformers directory.

    The result loads with `load_tokenizer(str(out_dir), None)` without network access and has the same special
    tokens and template as the builtin tokenizer. `max_lines` caps the lines read per file, to keep training fast.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_chat_texts(files, max_lines), trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    _wrap(backend).save_pretrained(str(out_dir))
    return out_dir


def _chat_texts(files: list[Path], max_lines: int | None) -> Iterator[str]:
    """The `content` of every message of every line of `{"messages": [...]}` JSONL files."""
    for path in files:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines):
                if max_lines is not None and number >= max_lines:
                    break
                if line.strip():
                    yield from (message["content"] for message in json.loads(line)["messages"])


__all__ = [
    "BUILTIN_BYTE_LEVEL",
    "EOS_TOKEN",
    "FALLBACK_CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TokenizerError",
    "builtin_byte_level_tokenizer",
    "chat_template_for",
    "load_tokenizer",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
]
