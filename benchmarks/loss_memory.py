"""Peak memory of one micro-batch's loss + backward: chunked cross-entropy vs today's full fp32 logits.

A tiny Llama with a 128k vocabulary (the embedding and head are nearly all of it) and one micro-batch of
16,384 loss-counted tokens (16 rows of 1,024). Each path runs in a fresh subprocess so the peaks do not mix:
on CPU the peak is the process's resident-set high-water mark (VmHWM, reset just before the loss) minus the
resident set before it; on CUDA, torch's peak allocated bytes minus those before. Both paths start from the
same seed, so their loss and gradient norm must agree. Prints the ratio and writes JSON. Not a test.

    .venv/bin/python benchmarks/loss_memory.py --out benchmarks/results/loss_memory.json

Today's path needs about 3 x tokens x vocab x 4 bytes (25 GiB at the defaults); on a smaller machine pass
--tokens (the ratio is about the same: both paths scale with the tokens, the chunked one much less).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import RESULTS, format_table, write_results  # noqa: E402
from finetune_contract.names import IGNORE_INDEX  # noqa: E402

MODEL: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}
"""Small everywhere but the vocabulary: the loss's memory is what is measured."""


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets the resident-set high-water mark (Linux >= 4.0)


def worker(path: str, tokens: int, row: int, vocab: int, chunk: int, device_name: str, seed: int) -> dict[str, Any]:
    """One path's peak memory, loss and gradient norm, measured in this (fresh) process."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune_trainer.loss import causal_lm_loss

    device = torch.device(device_name)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **MODEL)).float().to(device)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (tokens // row, row), generator=generator)
    labels = torch.roll(input_ids, -1, dims=1)
    labels[:, -1] = IGNORE_INDEX
    batch = {"input_ids": input_ids.to(device), "position_ids": torch.arange(row).repeat(tokens // row, 1).to(device)}
    labels = labels.to(device)
    chunk_tokens = chunk if path == "chunked" else 0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
        _reset_hwm()
    started = time.perf_counter()
    loss = causal_lm_loss(model, model, batch, labels, chunk_tokens)
    loss.backward()  # type: ignore[no-untyped-call]
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _hwm_bytes()
    elapsed = time.perf_counter() - started
    grads = [p.grad.double().norm() for p in model.parameters() if p.grad is not None]
    return {
        "path": path,
        "chunk_tokens": chunk_tokens,
        "peak_bytes_over_start": peak - before,
        "peak_bytes": peak,
        "seconds": elapsed,
        "loss": float(loss.detach()),
        "grad_norm": float(torch.stack(grads).norm()),
        "counted_tokens": int((labels != IGNORE_INDEX).sum()),
    }


def measure(path: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        path,
        *("--tokens", str(args.tokens), "--row", str(args.row), "--vocab", str(args.vocab)),
        *("--chunk", str(args.chunk), "--device", args.device, "--seed", str(args.seed)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{path} worker failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384, help="tokens in the micro-batch")
    parser.add_argument("--row", type=int, default=1024, help="tokens per row (tokens must be a multiple)")
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary size (Llama 3's)")
    parser.add_argument("--chunk", type=int, default=2048, help="tokens per chunk (the recipe's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=["full", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "loss_memory.json")
    args = parser.parse_args()
    if args.tokens % args.row:
        parser.error("--tokens must be a multiple of --row")
    if args.worker:
        result = worker(args.worker, args.tokens, args.row, args.vocab, args.chunk, args.device, args.seed)
        print(json.dumps(result))
        return
    chunked = measure("chunked", args)
    full = measure("full", args)
    ratio = chunked["peak_bytes_over_start"] / full["peak_bytes_over_start"]
    loss_rel = abs(chunked["loss"] - full["loss"]) / abs(full["loss"])
    norm_rel = abs(chunked["grad_norm"] - full["grad_norm"]) / abs(full["grad_norm"])
    logits_bytes = args.tokens * args.vocab * 4
    rows = [
        (
            name,
            row["peak_bytes_over_start"] / 2**30,
            row["peak_bytes_over_start"] / logits_bytes,
            row["seconds"],
            row["loss"],
            row["grad_norm"],
        )
        for name, row in (("today (full logits)", full), (f"chunked ({args.chunk})", chunked))
    ]
    print(
        f"{args.tokens:,} tokens x vocabulary {args.vocab:,} on {args.device}; "
        f"one fp32 logits tensor is {logits_bytes / 2**30:.2f} GiB"
    )
    print(format_table(["path", "peak GiB", "x fp32 logits", "seconds", "loss", "grad norm"], rows))
    print(
        f"ratio chunked/today peak: {ratio:.3f} (target <= 0.25); "
        f"relative difference: loss {loss_rel:.1e}, grad norm {norm_rel:.1e}"
    )
    write_results(
        args.out,
        {
            "settings": {k: v for k, v in vars(args).items() if k != "worker"} | {"out": str(args.out)},
            "model": MODEL | {"model_type": "llama", "vocab_size": args.vocab},
            "fp32_logits_bytes": logits_bytes,
            "full": full,
            "chunked": chunked,
            "ratio_chunked_over_full_peak": ratio,
            "loss_relative_difference": loss_rel,
            "grad_norm_relative_difference": norm_rel,
        },
    )


if __name__ == "__main__":
    main()
