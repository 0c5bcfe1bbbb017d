"""The training recipe: model, data and training hyperparameters — one definition for operator and trainer.

The operator validates a FineTuneJob's recipe with these models and hands it to the trainer as JSON; the
trainer parses the same JSON with the same models. Defaults follow "Unveiling the Secret Recipe: A Guide For
Supervised Fine-Tuning Small LLMs" (Pareja et al., 2024) where it gives one: a large effective batch
(3,840 samples) with a low learning rate, a constant schedule without warmup, AdamW betas (0.9, 0.95), and
stacked training (all data at once). This module must never import torch: the operator image has none.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import Field, StringConstraints

from finetune_contract import names
from finetune_contract.schema import Rule, SpecModel, count_set

PAPER_EFFECTIVE_BATCH_SIZE = 3840

NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Path = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=r"^\S+$")]
HubId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][\w.\-/]*$")]


class DType(StrEnum):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class Attention(StrEnum):
    sdpa = "sdpa"
    eager = "eager"
    flash_attention_2 = "flash_attention_2"
    flex_attention = "flex_attention"


class DataFormat(StrEnum):
    messages = "messages"
    alpaca = "alpaca"
    sharegpt = "sharegpt"


class Strategy(StrEnum):
    stacked = "stacked"
    phased = "phased"


class Scheduler(StrEnum):
    constant = "constant"
    cosine = "cosine"
    linear = "linear"


class ModelSpec(SpecModel):
    """The base model to fine-tune: a hub id, a path in the container (e.g. a mounted PVC), or a config."""

    rules = (
        Rule(
            cel="(has(self.name) ? 1 : 0) + (has(self.path) ? 1 : 0) + (has(self.config) ? 1 : 0) == 1",
            holds=lambda m: count_set(m.name, m.path, m.config) == 1,
            message="exactly one of model.name, model.path and model.config must be set",
        ),
        Rule(
            cel="!has(self.config) || has(self.tokenizer)",
            holds=lambda m: m.config is None or m.tokenizer is not None,
            message="model.config builds an untrained model and needs model.tokenizer",
            field="tokenizer",
        ),
    )

    name: HubId | None = None
    """Hugging Face hub id of the model, e.g. ibm-granite/granite-3.1-2b-base (downloaded by the trainer)."""
    path: Path | None = None
    """Directory in the trainer container holding the model in Hugging Face format (e.g. on a mounted PVC)."""
    config: dict[str, Any] | None = None
    """A transformers config (with model_type) to build a randomly initialised model from, for tests."""
    tokenizer: Path | None = None
    """Tokenizer directory or hub id; defaults to the model's own."""
    revision: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    """Hub revision (branch, tag or commit) when model.name is used."""
    dtype: DType = DType.bfloat16
    """Dtype of the model weights during training."""
    attn_implementation: Attention = Attention.sdpa
    """Attention kernel. Packed (padding-free) batches stay exact with every choice; see the trainer docs."""


class DatasetSpec(SpecModel):
    """One training data source: a local file/directory (JSONL, JSON or Parquet), a saved dataset or a hub dataset."""

    rules = (
        Rule(
            cel="has(self.path) != has(self.name)",
            holds=lambda d: (d.path is None) != (d.name is None),
            message="exactly one of dataset path and name must be set",
        ),
    )

    path: Path | None = None
    """File or directory in the trainer container: JSONL, JSON or Parquet files, or a directory written by
    `datasets`' `save_to_disk`."""
    name: HubId | None = None
    """Hugging Face hub dataset id; only used when set explicitly."""
    format: DataFormat = DataFormat.messages
    """Record format: chat `messages`, alpaca (instruction/input/output) or sharegpt (conversations)."""
    split: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "train"
    """Split to read from a hub dataset or a saved DatasetDict."""


Datasets = Annotated[list[DatasetSpec], Field(min_length=1, max_length=64)]
LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]
BatchSize = Annotated[int, Field(ge=1, le=10_000_000)]


class DataSpec(SpecModel):
    """Training data and how it is tokenized."""

    datasets: Annotated[list[DatasetSpec], Field(max_length=64)] = []
    """Data sources, all mixed together (stacked training). Phased training lists data per phase instead."""
    max_seq_len: int = Field(default=4096, ge=16, le=1_048_576)
    """Samples longer than this many tokens are dropped (and counted), never truncated."""
    eval_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Fraction of the samples held out for evaluation loss."""
    cache_dir: Path | None = None
    """Where tokenized data is cached and reused across runs (default: <checkpoint.outputDir>/.cache/data). On
    multi-node jobs it must be storage every node sees: rank 0 writes it, the other ranks read it."""


class PhaseSpec(SpecModel):
    """One phase of phased training; unset hyperparameters are taken from the training section."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=63)]
    """Phase name, for logs and metrics."""
    datasets: Datasets
    """Data of this phase."""
    epochs: int = Field(default=1, ge=1, le=1000)
    """Passes over this phase's data."""
    learning_rate: LearningRate | None = None
    """Learning rate of this phase; defaults to training.learningRate."""
    effective_batch_size: BatchSize | None = None
    """Samples per optimizer step in this phase; defaults to training.effectiveBatchSize."""


class CheckpointSpec(SpecModel):
    """Where and how often checkpoints are written."""

    interval_steps: int = Field(default=0, ge=0, le=10_000_000)
    """Save every this many optimizer steps; 0 saves only at the end (and on SIGTERM)."""
    interval_minutes: float = Field(default=0.0, ge=0.0, le=10_080.0)
    """Also save once this many minutes have passed since the last save (or the start), so a preemption or a lost
    node costs at most that much training whatever a step takes; 0 disables."""
    output_dir: Path = "/output"
    """Directory in the container for checkpoints and the metrics JSONL (mount a PVC to keep them)."""
    keep_last: int = Field(default=2, ge=1, le=1000)
    """Number of most recent intermediate checkpoints kept; the final model is always kept."""


class ParallelMode(StrEnum):
    auto = "auto"
    ddp = "ddp"
    fsdp = "fsdp"


class ParallelismSpec(SpecModel):
    """How the model is spread over the GPUs; the recipe's numbers do not depend on it."""

    mode: ParallelMode = ParallelMode.auto
    """auto: FSDP2 (sharded) on GPUs, DDP on CPU; ddp: a full replica per GPU; fsdp: FSDP2 always."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass: less GPU memory for ~30% more compute (7B on 8 GPUs)."""


class TrainingSpec(SpecModel):
    """Hyperparameters. Defaults are the paper's recipe: large batch, low constant LR, no warmup."""

    rules = (
        Rule(
            cel="self.strategy != 'phased' || (has(self.phases) && size(self.phases) >= 2)",
            holds=lambda t: t.strategy != Strategy.phased or len(t.phases) >= 2,
            message="strategy phased needs at least 2 phases",
            field="phases",
        ),
        Rule(
            cel="self.strategy != 'stacked' || !has(self.phases) || size(self.phases) == 0",
            holds=lambda t: t.strategy != Strategy.stacked or not t.phases,
            message="phases are only allowed with strategy phased",
            field="phases",
        ),
        Rule(
            cel="!has(self.maxSteps) || self.warmupSteps < self.maxSteps",
            holds=lambda t: t.max_steps is None or t.warmup_steps < t.max_steps,
            message="warmupSteps must be smaller than maxSteps",
            field="warmupSteps",
        ),
    )

    strategy: Strategy = Strategy.stacked
    """stacked: all data at once (as good as phased, simpler); phased: one phase after the other."""
    phases: Annotated[list[PhaseSpec], Field(max_length=16)] = []
    """The phases, in order, for strategy phased."""
    effective_batch_size: BatchSize = PAPER_EFFECTIVE_BATCH_SIZE
    """Samples per optimizer step across all GPUs and accumulation steps (the paper: 3840)."""
    max_tokens_per_gpu: int = Field(default=16384, ge=16, le=10_000_000)
    """Token budget of one micro-batch on one GPU; accumulation steps are added as needed."""
    learning_rate: LearningRate = 2e-5
    """Peak learning rate (AdamW). Large batches train better with low rates."""
    lr_scheduler: Scheduler = Scheduler.constant
    """Learning-rate schedule after warmup; constant does as well as cosine."""
    warmup_steps: int = Field(default=0, ge=0, le=10_000_000)
    """Linear warmup steps; the paper finds warmup can be dropped."""
    epochs: int = Field(default=1, ge=1, le=1000)
    """Passes over the data (stacked strategy)."""
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    """Stop after this many optimizer steps, overriding epochs."""
    adam_betas: Annotated[list[Annotated[float, Field(ge=0.0, lt=1.0)]], Field(min_length=2, max_length=2)] = [
        0.9,
        0.95,
    ]
    """AdamW (beta1, beta2)."""
    adam_epsilon: float = Field(default=1e-8, gt=0.0, le=1.0)
    """AdamW epsilon."""
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    """AdamW decoupled weight decay."""
    gradient_clipping: float = Field(default=1.0, ge=0.0, le=1e6)
    """Clip the global gradient L2 norm to this value; 0 disables clipping."""
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    """Seed for model init, data order and sampling."""
    checkpoint: CheckpointSpec = CheckpointSpec()
    """Checkpointing."""
    parallelism: ParallelismSpec = ParallelismSpec()
    """Data parallelism and activation checkpointing."""
    loss_chunk_tokens: int = Field(default=2048, ge=0, le=10_000_000)
    """Compute the loss this many tokens at a time, so a micro-batch's full [tokens, vocabulary] fp32 logits and
    their gradient never exist (8 GiB each for 16,384 tokens and a 128k vocabulary); 0 materialises them."""
    padding_free: bool = True
    """Pack each micro-batch's samples into one row (no padding tokens); false pads them to a rectangle."""
    max_non_finite_steps: int = Field(default=3, ge=0, le=1_000_000)
    """Consecutive steps with NaN/Inf loss or gradient norm (skipped, not applied) before the trainer exits 3."""
    eval_interval_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    """Also compute the eval loss every this many steps (default: at checkpoints and at the end); a sweep scoring
    on eval loss needs it at its rungs."""


class Recipe(SpecModel):
    """What to train and how: the part of a FineTuneJob that the trainer receives."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.training.strategy == 'phased' || (has(self.data.datasets) && size(self.data.datasets) >= 1)",
            holds=lambda r: r.training.strategy == Strategy.phased or len(r.data.datasets) >= 1,
            message="data.datasets needs at least one dataset (phased training lists them per phase)",
            field="data",
        ),
        Rule(
            cel="self.training.maxTokensPerGpu >= self.data.maxSeqLen",
            holds=lambda r: r.training.max_tokens_per_gpu >= r.data.max_seq_len,
            message="training.maxTokensPerGpu must be at least data.maxSeqLen, or the longest samples never fit",
            field="training",
        ),
    )

    model: ModelSpec
    """The base model."""
    data: DataSpec
    """Training data."""
    training: TrainingSpec = TrainingSpec()
    """Hyperparameters; defaults are the paper's recipe."""


def recipe_json(recipe: Recipe) -> str:
    """The compact JSON handed to the trainer; defaults written out, so operator and trainer cannot disagree."""
    return json.dumps(recipe.to_wire(), separators=(",", ":"), sort_keys=True)


def parse_recipe(text: str) -> Recipe:
    """Parse the operator's hand-over with the same model and rules the operator validated it with."""
    return Recipe.model_validate_json(text, strict=True)


def recipe_from_env(env: dict[str, str] | None = None) -> Recipe:
    """The recipe from FINETUNE_RECIPE; a missing variable is a recipe error, reported like one."""
    source = os.environ if env is None else env
    text = source.get(names.ENV_RECIPE)
    if text is None:
        raise ValueError(f"{names.ENV_RECIPE} is not set: the trainer needs the recipe as JSON")
    return parse_recipe(text)


__all__ = [
    "Attention",
    "CheckpointSpec",
    "DType",
    "DataFormat",
    "DataSpec",
    "DatasetSpec",
    "ModelSpec",
    "ParallelMode",
    "ParallelismSpec",
    "PhaseSpec",
    "Recipe",
    "Scheduler",
    "Strategy",
    "TrainingSpec",
    "parse_recipe",
    "recipe_from_env",
    "recipe_json",
]
