"""Checkpoints that resume exactly and are never half-read.

A checkpoint (its layout and discovery: finetune_contract.checkpoints) is a directory per step holding the model
in Hugging Face format (safetensors, in the training dtype), the tokenizer, and `trainer_state.pt` (optimizer,
step, RNG states; the LR is a function of the step). It is written under a temporary name and renamed into place
only when complete, with a `COMPLETE` marker inside: a pod killed mid-write leaves a `.tmp` directory that resume
ignores and the next save removes.

State dicts are gathered with torch.distributed.checkpoint's full-state-dict API, which works the same for a
single process, DDP and FSDP2 (DTensor shards are gathered, never saved rank-locally).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from finetune_contract.checkpoints import (
    CHECKPOINT_PREFIX,
    COMPLETE_MARKER,
    FINAL_DIR,
    ResumePoint,
    checkpoint_dirs,
    checkpoint_name,
    latest_checkpoint,
)

STATE_FILE = "trainer_state.pt"


def _full_options(**extra: Any) -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: Path,
    step: int,
    model: torch.nn.Module,
    hf_model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    dtype: torch.dtype,
    rank: int,
) -> Path:
    """Gather full state on every rank (collective), write it from rank 0 atomically. Returns the final path."""
    model_state = get_model_state_dict(model, options=_full_options())
    optim_state = get_optimizer_state_dict(model, optimizer, options=_full_options())
    target = output_dir / checkpoint_name(step)
    if rank == 0:
        tmp = output_dir / f"{checkpoint_name(step)}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            save_hf(tmp, hf_model, tokenizer, model_state, dtype)
            state = {"step": step, "optimizer": optim_state, "rng": rng_state()}
            torch.save({**state, **extra}, tmp / STATE_FILE)
            (tmp / COMPLETE_MARKER).write_text(f"{step}\n")
            _fsync_dir(tmp)
        except (OSError, RuntimeError) as error:
            shutil.rmtree(tmp, ignore_errors=True)  # give the space back; the previous checkpoint stays the newest
            raise _write_failure(output_dir, step, error) from error
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        _fsync_dir(output_dir)
    _barrier()
    return target


LOW_SPACE_BYTES = 64 * 1024 * 1024
"""Free space under which a failed write is reported as a full disk."""


def _write_failure(output_dir: Path, step: int, error: BaseException) -> BaseException:
    """A full disk said in words: torch.save reports ENOSPC as "enforce fail ... unexpected pos"."""
    free = shutil.disk_usage(output_dir).free
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or free < LOW_SPACE_BYTES:
        newest = latest_checkpoint(output_dir)
        kept = f"{newest.path.name} stays the newest complete one" if newest else "no checkpoint was complete"
        return OSError(
            errno.ENOSPC,
            f"the disk under {output_dir} is full ({free:,} bytes free) while writing the checkpoint of step "
            f"{step}; the partial copy was removed and {kept} ({type(error).__name__}: {error})",
        )
    return error


def save_hf(path: Path, hf_model: Any, tokenizer: Any, model_state: dict[str, Any], dtype: torch.dtype) -> None:
    """Hugging Face format in the training dtype (a bf16 run is not upcast to fp32 on disk)."""
    state = {key: value.to(dtype) if value.is_floating_point() else value for key, value in model_state.items()}
    hf_model.save_pretrained(path, state_dict=state, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def save_final(
    output_dir: Path, model: torch.nn.Module, hf_model: Any, tokenizer: Any, dtype: torch.dtype, rank: int
) -> Path:
    """The final model, HF format only, in `final/` (atomic like checkpoints)."""
    model_state = get_model_state_dict(model, options=_full_options())
    target = output_dir / FINAL_DIR
    if rank == 0:
        tmp = output_dir / f"{FINAL_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_hf(tmp, hf_model, tokenizer, model_state, dtype)
        (tmp / COMPLETE_MARKER).write_text("final\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    _barrier()
    return target


def load_checkpoint(point: ResumePoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG from a checkpoint (every rank reads the full state).

    The learning rate needs no state: it is a pure function of the step. Weights missing from the safetensors
    files are tied ones (e.g. lm_head = embeddings) and are left to the tie, hence strict=False.
    """
    from safetensors.torch import load_file

    state = torch.load(point.path / STATE_FILE, map_location="cpu", weights_only=False)
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(point.path.glob("*.safetensors")):
        weights.update(load_file(shard))
    current = get_model_state_dict(model, options=_full_options())
    restored: dict[str, Any] = {
        key: weights[key].to(value.dtype)
        for key, value in current.items()
        if key in weights and isinstance(value, torch.Tensor)
    }
    set_model_state_dict(model, restored, options=StateDictOptions(full_state_dict=True, strict=False))
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    set_rng_state(state["rng"])
    return dict(state)


def prune_checkpoints(output_dir: Path, keep_last: int, rank: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, and stale temporary directories."""
    if rank != 0:
        return []
    removed = [path for _, path in checkpoint_dirs(output_dir)[:-keep_last]]
    removed += [path for path in output_dir.glob(f"{CHECKPOINT_PREFIX}*.tmp") if path.is_dir()]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
