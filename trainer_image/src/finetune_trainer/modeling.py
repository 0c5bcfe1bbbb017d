"""Build the model (from a hub id, a local path, or a config) and wrap it for the world it runs in.

Parameters are kept in fp32 and the forward runs in the recipe's dtype on GPUs (autocast for one process/DDP,
FSDP2's mixed-precision policy for sharded runs), so optimizer updates are not lost to bf16 rounding; on CPU
everything is fp32. Checkpoints are written in the recipe's dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from finetune_trainer import attention
from finetune_trainer.config import Attention, DType, ModelSpec, ParallelMode
from finetune_trainer.distributed import World

_DTYPES = {DType.bfloat16: torch.bfloat16, DType.float16: torch.float16, DType.float32: torch.float32}


def training_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    """The recipe's dtype on GPUs; fp32 on CPU (bf16 matmuls on CPU are slow and lossy)."""
    return _DTYPES[spec.dtype] if device.type == "cuda" else torch.float32


def attention_for(spec: ModelSpec, padding_free: bool) -> str:
    """sdpa with packed rows becomes our per-sample SDPA (exact, no dense block mask); the rest as asked."""
    if padding_free and spec.attn_implementation == Attention.sdpa:
        return attention.register()
    return spec.attn_implementation.value


def build_model(spec: ModelSpec, tokenizer: Any, seed: int, padding_free: bool = True) -> PreTrainedModel:
    """The causal LM in fp32. A config-built model gets the tokenizer's vocabulary and special token ids."""
    torch.manual_seed(seed)
    attn = attention_for(spec, padding_free)
    if spec.config is not None:
        config = AutoConfig.for_model(**_config_for_tokenizer(spec.config, tokenizer))
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)  # type: ignore[no-untyped-call]
    else:
        source = spec.path or spec.name
        assert source is not None  # guaranteed by the recipe's exactly-one-source rule
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=spec.revision, dtype=torch.float32, attn_implementation=attn
        )
        embeddings = model.get_input_embeddings()
        if isinstance(embeddings, torch.nn.Embedding) and embeddings.num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    model.config.use_cache = False  # a KV cache changes the attention mask of packed rows (ARCHITECTURE.md)
    fp32: PreTrainedModel = model.float()
    return fp32


def _config_for_tokenizer(config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    merged = dict(config)
    merged.setdefault("vocab_size", len(tokenizer))
    merged["vocab_size"] = max(int(merged["vocab_size"]), len(tokenizer))
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            merged.setdefault(key, value)
    return merged


def wrap_model(model: PreTrainedModel, world: World, parallel: ParallelMode, dtype: torch.dtype) -> torch.nn.Module:
    """Single process: as is. Several: FSDP2 on GPUs (or when asked), DDP otherwise."""
    torch.nn.Module.to(model, world.device)
    model.train()
    if world.size == 1:
        return model
    mode = parallel
    if mode == ParallelMode.auto:
        mode = ParallelMode.fsdp if world.device.type == "cuda" else ParallelMode.ddp
    if mode == ParallelMode.fsdp:
        return _fully_shard(model, world, dtype)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [world.local_rank] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _fully_shard(model: PreTrainedModel, world: World, dtype: torch.dtype) -> torch.nn.Module:
    """FSDP2: shard every decoder layer, then the root; compute in `dtype`, reduce gradients in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model
