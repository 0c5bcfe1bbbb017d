"""The supervised fine-tuning loop: setup / train / train_step / save_checkpoint / close.

The loss of an optimizer step is the token-weighted mean over the loss-counted tokens of the WHOLE effective
batch on all ranks: each micro-batch contributes its summed cross-entropy divided by that global count (times
the world size, because DDP and FSDP average gradients over ranks). So neither gradient accumulation nor the
number of ranks changes the loss or the gradient. The gradient norm logged is the pre-clip global L2 norm.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from finetune_contract import names
from finetune_contract.checkpoints import latest_checkpoint
from finetune_contract.records import StepRecord
from finetune_trainer import checkpoint as ckpt
from finetune_trainer.batching import (
    Lengths,
    collate_packed,
    collate_padded,
    loss_token_count,
    plan_step,
    step_batches,
)
from finetune_trainer.config import DatasetSpec, Recipe
from finetune_trainer.data import DataError, Sample, prepare_data
from finetune_trainer.distributed import World, all_reduce_sum, any_rank, close_world, init_world
from finetune_trainer.loss import causal_lm_loss
from finetune_trainer.metrics import MetricLogger, build_logger
from finetune_trainer.modeling import build_model, training_dtype, wrap_model
from finetune_trainer.optim import build_optimizer, learning_rate, set_learning_rate
from finetune_trainer.tokenizer import load_tokenizer


class NonFiniteError(RuntimeError):
    """Loss or gradient norm stayed NaN/Inf for too many consecutive steps."""


@dataclass(frozen=True)
class RunOptions:
    """How this process runs (not what it trains): from the environment, set by the operator or a test."""

    output_dir: Path
    metrics_port: int | None = None
    metrics_addr: str = "0.0.0.0"
    fault_nan_at_step: int | None = None
    """TEST-ONLY fault injection (FINETUNE_FAULT_NAN_AT_STEP): NaN weights from this step on, because NaN cannot be
    produced for real on CPU (fp32, LR capped at 1.0, non-finite updates skipped); the early-stopping e2e needs it."""

    @classmethod
    def from_env(cls, recipe: Recipe, env: dict[str, str] | None = None) -> RunOptions:
        source = dict(os.environ if env is None else env)
        port = source.get(names.ENV_METRICS_PORT)
        fault = source.get(names.ENV_FAULT_NAN_AT_STEP)
        return cls(
            output_dir=Path(source.get(names.ENV_OUTPUT_DIR, recipe.training.checkpoint.output_dir)),
            metrics_port=int(port) if port else None,
            metrics_addr=source.get(names.ENV_METRICS_ADDR, "0.0.0.0"),
            fault_nan_at_step=int(fault) if fault else None,
        )


@dataclass
class TrainingPhase:
    """One stretch of training with its own data and hyperparameters (stacked runs have exactly one)."""

    name: str
    datasets: Sequence[DatasetSpec]
    epochs: int
    learning_rate: float
    effective_batch_size: int
    samples: Sequence[Sample] = field(default_factory=list)
    lengths: Lengths = field(default_factory=list)
    steps: Sequence[list[int]] = field(default_factory=list)
    steps_per_epoch: int = 1


@dataclass(frozen=True)
class TrainResult:
    steps: int
    interrupted: bool
    final_path: Path | None
    losses: list[float]


class Trainer:
    def __init__(self, recipe: Recipe, options: RunOptions) -> None:
        self.recipe = recipe
        self.options = options
        self.stop_requested = False
        self.step = 0
        self.last_save = time.monotonic()  # a start (or a resume) counts as a save for checkpoint.intervalMinutes
        self.losses: list[float] = []
        self.eval_samples: list[Sample] = []

    # ----------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        training = self.recipe.training
        self.world: World = init_world()
        torch.manual_seed(training.seed)
        model = self.recipe.model
        self.tokenizer = load_tokenizer(model.tokenizer, model.path or model.name, revision=model.revision)
        self.phases = self._plan_phases()
        self.total_steps = sum(len(phase.steps) for phase in self.phases)
        if training.max_steps is not None:
            self.total_steps = min(self.total_steps, training.max_steps)
        self.dtype = training_dtype(self.recipe.model, self.world.device)
        self.hf_model = build_model(self.recipe.model, self.tokenizer, training.seed, training.padding_free)
        if training.parallelism.activation_checkpointing:  # recompute activations in backward: memory for compute
            self.hf_model.activation_checkpointing_enable()
        self.model = wrap_model(self.hf_model, self.world, training.parallelism.mode, self.dtype)
        self.optimizer = build_optimizer(self.model.parameters(), training, self.world.device)
        self.logger: MetricLogger = build_logger(
            self.world.rank,
            self.options.output_dir,
            self.options.metrics_port,
            self.total_steps,
            addr=self.options.metrics_addr,
        )
        self._resume()
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _plan_phases(self) -> list[TrainingPhase]:
        training = self.recipe.training
        if training.phases:
            phases = [
                TrainingPhase(
                    spec.name,
                    spec.datasets,
                    spec.epochs,
                    spec.learning_rate or training.learning_rate,
                    spec.effective_batch_size or training.effective_batch_size,
                )
                for spec in training.phases
            ]
        else:
            phases = [
                TrainingPhase(
                    "stacked",
                    self.recipe.data.datasets,
                    training.epochs,
                    training.learning_rate,
                    training.effective_batch_size,
                )
            ]
        for phase in phases:
            self._load_phase_data(phase)
        return phases

    def _load_phase_data(self, phase: TrainingPhase) -> None:
        data = self.recipe.data
        configured = self.recipe.data.cache_dir
        cache = Path(configured) if configured else self.options.output_dir / ".cache" / "data"
        prepared = prepare_data(
            phase.datasets,
            self.tokenizer,
            max_seq_len=data.max_seq_len,
            eval_fraction=data.eval_fraction,
            seed=self.recipe.training.seed,
            cache_dir=cache,
            rank=self.world.rank,
            world_size=self.world.size,
        )
        if not prepared.train:
            raise DataError(
                f"phase {phase.name}: no training samples left (dropped too long: {prepared.dropped_too_long})"
            )
        phase.samples = prepared.train
        phase.lengths = prepared.train.lengths
        phase.steps = step_batches(
            len(phase.samples), phase.effective_batch_size, phase.epochs, self.recipe.training.seed
        )
        phase.steps_per_epoch = math.ceil(len(phase.samples) / phase.effective_batch_size)
        self.eval_samples.extend(prepared.eval)
        if self.world.is_main:
            print(
                f"data phase={phase.name} samples={len(phase.samples)} eval={len(prepared.eval)} "
                f"dropped_too_long={prepared.dropped_too_long} steps={len(phase.steps)}",
                flush=True,
            )

    def _resume(self) -> None:
        point = latest_checkpoint(self.options.output_dir)
        if point is None:
            return
        state = ckpt.load_checkpoint(point, self.model, self.optimizer)
        self.step = int(state["step"])
        self.losses = list(state.get("losses", []))
        self.logger.log_event("resumed", step=self.step, checkpoint=str(point.path))

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    # ----------------------------------------------------------------------------------------------- train
    def schedule(self) -> Iterator[tuple[int, TrainingPhase, int, list[int]]]:
        """(global step, phase, epoch, sample indices) for every optimizer step of the run, in order."""
        step = 0
        for phase in self.phases:
            for index, indices in enumerate(phase.steps):
                if step >= self.total_steps:
                    return
                yield step, phase, index // phase.steps_per_epoch, indices
                step += 1

    def train(self) -> TrainResult:
        training = self.recipe.training
        interval = training.checkpoint.interval_steps
        previous_phase: str | None = None
        nonfinite_streak = 0
        for step, phase, epoch, indices in self.schedule():
            if step < self.step:
                previous_phase = phase.name
                continue
            if previous_phase is not None and phase.name != previous_phase:
                self.save_checkpoint()
                self.logger.log_event("phase_done", phase=previous_phase, step=self.step)
            previous_phase = phase.name
            if self.options.fault_nan_at_step is not None and step + 1 == self.options.fault_nan_at_step:
                self._inject_nan_fault()
            record = self.train_step(step, phase, epoch, indices)
            nonfinite_streak = 0 if record.finite else nonfinite_streak + 1
            if nonfinite_streak > self.recipe.training.max_non_finite_steps:
                raise NonFiniteError(
                    f"loss/grad norm non-finite for {nonfinite_streak} consecutive steps at step {self.step}"
                )
            checkpoint_now = self.step < self.total_steps and (
                (bool(interval) and self.step % interval == 0) or self.checkpoint_time_due()
            )
            if checkpoint_now:
                self.save_checkpoint()
            if self.step < self.total_steps and (checkpoint_now or self.eval_due(self.step)):
                self.evaluate()
            if any_rank(self.stop_requested, self.world.device):
                self.save_checkpoint()
                self.logger.log_event("interrupted", step=self.step)
                return TrainResult(self.step, True, None, self.losses)
        self.evaluate()
        final = ckpt.save_final(
            self.options.output_dir, self.model, self.hf_model, self.tokenizer, self.dtype, self.world.rank
        )
        self.logger.log_event("done", step=self.step, final=str(final))
        return TrainResult(self.step, False, final, self.losses)

    def train_step(self, step: int, phase: TrainingPhase, epoch: int, indices: list[int]) -> StepRecord:
        """One optimizer step over `indices` (the whole effective batch, all ranks)."""
        started = time.perf_counter()
        samples = phase.samples
        global_tokens = loss_token_count([samples[i] for i in indices])
        padded = not self.recipe.training.padding_free
        plan = plan_step(indices, phase.lengths, self.world.size, self.max_tokens, padded=padded)
        micro_batches = plan[self.world.rank]
        local_sum = 0.0
        for position, micro in enumerate(micro_batches):
            last = position == len(micro_batches) - 1
            with self._gradient_sync(last):
                summed = self._micro_step([samples[i] for i in micro], max(global_tokens, 1))
            local_sum += summed
        loss = all_reduce_sum(local_sum, self.world.device) / max(global_tokens, 1)
        grad_norm = self._clip()
        lr = learning_rate(
            step,
            self.total_steps,
            phase.learning_rate,
            self.recipe.training.warmup_steps,
            self.recipe.training.lr_scheduler,
        )
        set_learning_rate(self.optimizer, lr)
        if math.isfinite(grad_norm) and math.isfinite(loss):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step + 1
        self.losses.append(loss)
        record = StepRecord(
            step=self.step,
            total_steps=self.total_steps,
            loss=loss,
            grad_norm=grad_norm,
            learning_rate=lr,
            samples=len(indices),
            tokens=global_tokens,
            step_duration_seconds=time.perf_counter() - started,
            epoch=epoch,
            phase=phase.name,
            micro_steps=len(micro_batches),
            time=time.time(),
        )
        self.logger.log_step(record)
        return record

    def _inject_nan_fault(self) -> None:
        """TEST-ONLY (see RunOptions.fault_nan_at_step): poison one weight so loss and grad norm are NaN from now on."""
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))
        self.logger.log_event("fault_injected", step=self.step + 1, fault="nan-weights")

    @property
    def max_tokens(self) -> int:
        return self.recipe.training.max_tokens_per_gpu

    def _micro_step(self, samples: list[Sample], global_tokens: int) -> float:
        """Forward + backward of one micro-batch; returns its summed (unnormalised) cross-entropy.

        An empty micro-batch (a rank with nothing left this step) collates to one unlabelled placeholder token:
        it contributes zero but still joins the gradient collectives.
        """
        batch = self._collate(samples)
        labels = batch.pop("shift_labels")
        with self._autocast():
            summed = self._loss(batch, labels)
        (summed * (self.world.size / global_tokens)).backward()  # type: ignore[no-untyped-call]
        return float(summed.detach().item())

    def _loss(self, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Summed fp32 cross-entropy of one micro-batch; the LM head runs over chunks of tokens (finetune_trainer.loss)
        unless training.lossChunkTokens is 0 or the model type is not known to allow it."""
        return causal_lm_loss(self.model, self.hf_model, batch, labels, self.recipe.training.loss_chunk_tokens)

    def _collate(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        if self.recipe.training.padding_free:
            batch = collate_packed(samples)
            keep: tuple[str, ...] = ("input_ids", "position_ids", "shift_labels")
        else:
            batch = collate_padded(samples, self.tokenizer.pad_token_id or 0)
            keep = ("input_ids", "attention_mask", "position_ids", "shift_labels")
        return {key: batch[key].to(self.world.device) for key in keep}

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.world.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient all-reduce on all but the last micro-step (DDP no_sync / FSDP2 sync flag)."""
        no_sync = getattr(self.model, "no_sync", None)
        if no_sync is not None:
            return no_sync() if not last else contextlib.nullcontext()
        set_sync = getattr(self.model, "set_requires_gradient_sync", None)
        if set_sync is not None:
            set_sync(last)
        return contextlib.nullcontext()

    def _clip(self) -> float:
        """Pre-clip global gradient norm; a DTensor norm (FSDP2) is gathered, never read rank-locally."""
        max_norm = self.recipe.training.gradient_clipping or math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm.item())

    def eval_due(self, step: int) -> bool:
        every = self.recipe.training.eval_interval_steps
        return every is not None and step % every == 0

    def evaluate(self) -> float | None:
        """Token-weighted mean loss over the eval split, shared out over ranks."""
        if not self.eval_samples:
            return None
        self.model.eval()
        local = self.eval_samples[self.world.rank :: self.world.size]
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(local), 8):
                chunk = local[start : start + 8]
                batch = self._collate(chunk)
                labels = batch.pop("shift_labels")
                with self._autocast():
                    total += float(self._loss(batch, labels))
        self.model.train()
        tokens = loss_token_count(self.eval_samples)
        loss = all_reduce_sum(total, self.world.device) / max(tokens, 1)
        self.logger.log_eval(self.step, loss)
        return loss

    def checkpoint_time_due(self) -> bool:
        """checkpoint.intervalMinutes passed since the last save. Ranks' clocks differ and a save is collective,
        so the ranks agree (one scalar all-reduce a step, only when the interval is set)."""
        minutes = self.recipe.training.checkpoint.interval_minutes
        if not minutes:
            return False
        due = time.monotonic() - self.last_save >= minutes * 60
        return any_rank(due, self.world.device)

    def save_checkpoint(self) -> Path:
        self.last_save = time.monotonic()
        path = ckpt.save_checkpoint(
            self.options.output_dir,
            self.step,
            self.model,
            self.hf_model,
            self.tokenizer,
            self.optimizer,
            {"losses": self.losses},
            self.dtype,
            self.world.rank,
        )
        ckpt.prune_checkpoints(self.options.output_dir, self.recipe.training.checkpoint.keep_last, self.world.rank)
        self.logger.log_event("checkpoint", step=self.step, path=str(path))
        return path

    def close(self, synchronize: bool = False) -> None:
        """Release everything, the process group last. The model and optimizer go first: FSDP keeps the group
        and its last async work objects alive through them, and a gloo work object finalised after the group
        (at interpreter exit) aborts the process although training succeeded."""
        logger = getattr(self, "logger", None)
        if logger is not None:
            logger.close()
        for attribute in ("optimizer", "model", "hf_model"):
            self.__dict__.pop(attribute, None)
        gc.collect()
        close_world(synchronize)
