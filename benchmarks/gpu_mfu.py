"""Tokens/s and model FLOPs utilisation of our trainer on ONE GPU, for a 3B Llama-style model built from a config.

Prepared for a lent GPU machine (an H200 here), never a CI dependency; `--model tiny` runs the same code on a CPU
in seconds to prove the script before GPU time is spent on it. Four variants, each in its own subprocess so GPU
memory starts empty: padded vs padding-free batches x eager vs `torch.compile`d model. Full fine-tuning state
(fp32 master weights, gradients, AdamW moments; bf16 autocast) of a 3.2B model is ~52 GB, so it fits one GPU.

MFU = model FLOPs of the real tokens / time / peak. Model FLOPs per sample of s tokens: 6·N·s + 12·L·d·s²
(PaLM's convention: N = parameters except the input embedding lookup, attention counted without the causal
halving); padding tokens count as waste, never as work. Peak: 989 TFLOP/s dense bf16 (H100/H200 SXM).
Target >= 45% MFU. Data: GSM8K from the shared folder with the byte-level tokenizer (no download).

    .venv/bin/python benchmarks/gpu_mfu.py --steps 6 --out benchmarks/results/gpu_mfu.json      # on the GPU
    .venv/bin/python benchmarks/gpu_mfu.py --model tiny --steps 2 --out /tmp/gpu_mfu.json        # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import BENCH_LLAMA, RESULTS, SHARED_DATA, format_table, write_results  # noqa: E402

PEAK_BF16_FLOPS = 989e12
TARGET_MFU = 0.45
MODELS: dict[str, dict[str, Any]] = {
    # Llama-3.2-3B's shape (3.21B parameters with its 128,256-token vocabulary).
    "3b": {
        "model_type": "llama",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "vocab_size": 128_256,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
    },
    "tiny": BENCH_LLAMA,
}
VARIANTS = [(padding_free, compiled) for padding_free in (False, True) for compiled in (False, True)]


def sample_flops(length: int, params: int, layers: int, hidden: int) -> float:
    """Training FLOPs of one sample: 6·N per token for the matmuls plus 12·L·d·s per token for attention."""
    return 6.0 * params * length + 12.0 * layers * hidden * length * length


def recipe_for(model: str, tokens_per_gpu: int, batch: int) -> dict[str, Any]:
    return {
        "model": {"config": MODELS[model], "tokenizer": "builtin:byte-level", "dtype": "bfloat16"},
        "data": {
            "datasets": [{"path": str(SHARED_DATA / "gsm8k/train-00000-of-00002.chat.jsonl")}],
            "maxSeqLen": tokens_per_gpu,
        },
        "training": {"effectiveBatchSize": batch, "maxTokensPerGpu": tokens_per_gpu, "learningRate": 1e-5},
    }


def run_variant(args: argparse.Namespace, padding_free: bool, compiled: bool) -> dict[str, Any]:
    """One variant in this process: set up, one untimed warm-up (and compile) step, then `steps` timed steps."""
    import torch

    from finetune_trainer.config import Recipe
    from finetune_trainer.trainer import RunOptions, Trainer

    spec = recipe_for(args.model, args.tokens_per_gpu, args.batch)
    recipe = Recipe.model_validate({**spec, "training": {**spec["training"], "paddingFree": padding_free}})
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(recipe, RunOptions(Path(out)))
        trainer.setup()
        if compiled:
            trainer.model = torch.compile(trainer.model, dynamic=True)  # type: ignore[assignment]
        config = trainer.hf_model.config
        embedding = trainer.hf_model.get_input_embeddings().weight.numel()
        params = sum(p.numel() for p in trainer.hf_model.parameters()) - embedding
        if getattr(config, "tie_word_embeddings", False):
            params += embedding  # the tied LM head is a real matmul
        schedule = list(trainer.schedule())[: args.steps + 1]
        trainer.train_step(*schedule[0])
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        flops = tokens = 0.0
        for entry in schedule[1:]:
            trainer.train_step(*entry)
            lengths = [entry[1].lengths[i] for i in entry[3]]
            tokens += sum(lengths)
            flops += sum(sample_flops(s, params, config.num_hidden_layers, config.hidden_size) for s in lengths)
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        trainer.close()
    return {
        "padding_free": padding_free,
        "compiled": compiled,
        "params_counted": params,
        "tokens_per_s": tokens / elapsed,
        "tflops_per_s": flops / elapsed / 1e12,
        "mfu": flops / elapsed / PEAK_BF16_FLOPS,
        "peak_memory_gib": peak_gib,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }


def run_in_subprocess(args: argparse.Namespace, padding_free: bool, compiled: bool) -> dict[str, Any]:
    """Each variant in a fresh interpreter: GPU memory and compile caches never leak from one to the next."""
    argv = [
        sys.executable,
        __file__,
        "--child",
        f"{int(padding_free)}{int(compiled)}",
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--tokens-per-gpu",
        str(args.tokens_per_gpu),
        "--batch",
        str(args.batch),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=args.variant_timeout, check=False)
    if done.returncode != 0:
        return {"padding_free": padding_free, "compiled": compiled, "error": done.stderr[-2000:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="3b")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--tokens-per-gpu", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32, help="samples per optimizer step")
    parser.add_argument("--variant-timeout", type=float, default=130.0, help="seconds per variant")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_mfu.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        print(json.dumps(run_variant(args, args.child[0] == "1", args.child[1] == "1")))
        return
    results = [run_in_subprocess(args, padding_free, compiled) for padding_free, compiled in VARIANTS]
    rows = [
        [
            ("padding-free" if r["padding_free"] else "padded") + (" compiled" if r["compiled"] else " eager"),
            r.get("tokens_per_s", float("nan")),
            r.get("tflops_per_s", float("nan")),
            f"{r['mfu']:.1%}" if "mfu" in r else "failed",
            r.get("peak_memory_gib", float("nan")),
        ]
        for r in results
    ]
    print(format_table(["variant", "tokens/s", "TFLOP/s", "MFU", "peak GiB"], rows))
    best = max((r["mfu"] for r in results if "mfu" in r), default=float("nan"))
    print(f"best MFU {best:.1%} (target >= {TARGET_MFU:.0%}, peak {PEAK_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16)")
    write_results(
        args.out,
        {
            "settings": vars(args) | {"out": str(args.out)},
            "variants": results,
            "best_mfu": best,
            "target_mfu": TARGET_MFU,
        },
    )


if __name__ == "__main__":
    main()
