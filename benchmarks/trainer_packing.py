"""Padding-free vs padded training on this machine: loss-counted tokens/s and packing efficiency.

Same tiny Llama config, same GSM8K data (the shared data folder), same effective batch, seed and steps; only the
batching differs. Prints a table with the ratio and writes JSON. Not a test: numbers depend on the machine.

    .venv/bin/python benchmarks/trainer_packing.py --steps 6 --out benchmarks/results/trainer_packing.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import BENCH_LLAMA, RESULTS, SHARED_DATA, write_results  # noqa: E402
from finetune_trainer.batching import packing_efficiency, plan_step  # noqa: E402
from finetune_trainer.config import Recipe  # noqa: E402
from finetune_trainer.trainer import RunOptions, Trainer  # noqa: E402


def recipe(batch: int, max_tokens: int, padding_free: bool) -> Recipe:
    return Recipe.model_validate(
        {
            "model": {"config": BENCH_LLAMA, "tokenizer": "builtin:byte-level", "dtype": "float32"},
            "data": {
                "datasets": [{"path": str(SHARED_DATA / "gsm8k/train-00000-of-00002.chat.jsonl")}],
                "maxSeqLen": 2048,
            },
            "training": {
                "effectiveBatchSize": batch,
                "maxTokensPerGpu": max_tokens,
                "learningRate": 1e-4,
                "paddingFree": padding_free,
            },
        }
    )


def measure(padding_free: bool, steps: int, batch: int, max_tokens: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(recipe(batch, max_tokens, padding_free), RunOptions(Path(out)))
        trainer.setup()
        schedule = list(trainer.schedule())[: steps + 1]
        trainer.train_step(*schedule[0])  # warm-up step, not timed
        tokens, started = 0, time.perf_counter()
        losses = []
        for entry in schedule[1:]:
            record = trainer.train_step(*entry)
            tokens += record.tokens
            losses.append(record.loss)
        elapsed = time.perf_counter() - started
        phase = trainer.phases[0]
        efficiencies = [
            packing_efficiency(
                plan_step(indices, phase.lengths, 1, max_tokens, padded=not padding_free)[0],
                phase.lengths,
                padded=not padding_free,
                max_tokens=max_tokens if padding_free else None,
            )
            for _, _, _, indices in schedule
        ]
        trainer.close()
    return {
        "padding_free": padding_free,
        "tokens_per_s": tokens / elapsed,
        "packing_efficiency": sum(efficiencies) / len(efficiencies),
        "losses": losses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=RESULTS / "trainer_packing.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    packed = measure(True, args.steps, args.batch, args.max_tokens)
    padded = measure(False, args.steps, args.batch, args.max_tokens)
    result = {
        "settings": vars(args) | {"out": str(args.out)},
        "padding_free": packed,
        "padded": padded,
        "speedup_padding_free_over_padded": packed["tokens_per_s"] / padded["tokens_per_s"],
        "max_rel_loss_difference": max(
            abs(a - b) / abs(b) for a, b in zip(packed["losses"], padded["losses"], strict=True)
        ),
    }
    print(f"{'batching':<14}{'tokens/s':>12}{'packing eff.':>14}")
    for name, row in (("padding-free", packed), ("padded", padded)):
        print(f"{name:<14}{row['tokens_per_s']:>12,.0f}{row['packing_efficiency']:>14.3f}")
    print(
        f"ratio padding-free/padded: {result['speedup_padding_free_over_padded']:.2f}x; "
        f"max relative loss difference {result['max_rel_loss_difference']:.2e}"
    )
    write_results(args.out, result)


if __name__ == "__main__":
    main()
