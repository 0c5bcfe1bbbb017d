"""Peak memory of one micro-batch's loss + backward: chunked cross-entropy vs today's full fp32 logits.

A tiny Llama with a 128k vocabulary (the embedding and head are nearly all of it) and one micro-batch of
16,384 loss-counted tokens (16 rows of 1,024). Each path runs in a fresh subprocess so the peaks do not mix:
on CPU the peak is the process's resident-set high-water mark (VmHWM, reset just before the loss) minus the
resident set before it; on CUDA, torch's peak allocated bytes minus those before. Both paths start from the
same seed, so their loss and gradient norm must agree. Prints the ratio and writes JSON. Not a test.

    .venv/bin/python benchmarks/loss_memory.py --out benchmarks/results/loss_memory.json

Every run also counts the tensors' bytes with torch's `MemTracker` (peak of live tensor storage). Today's path
needs about 3 x tokens x vocab x 4 bytes (25 GiB at the defaults); when that does not fit in this machine's
available memory, that path is measured by `MemTracker` alone under `FakeTensorMode` (shapes and dtypes, no
storage: nothing allocated), and, to show the count is right, measured for real AND counted at the largest
halving of the tokens that fits (the count was within 1% of the resident-set peak at 8,192 tokens). The chunked
path is always measured for real at the full size. The ratio is then counted/counted (same method both sides).
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


def worker(
    path: str, tokens: int, row: int, vocab: int, chunk: int, device_name: str, seed: int, fake: bool
) -> dict[str, Any]:
    """One path's peak memory, loss and gradient norm, measured in this (fresh) process; with `fake`, tensors have
    no storage and only the tracker's count of the bytes they would take is reported."""
    import contextlib

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune_trainer.loss import causal_lm_loss

    device = torch.device(device_name)
    with FakeTensorMode() if fake else contextlib.nullcontext():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **MODEL))
        if device.type != "cpu":
            model = model.to(device)  # type: ignore[arg-type]
        model.train()
        input_ids = torch.randint(0, vocab, (tokens // row, row), generator=None if fake else _generator(seed))
        labels = torch.roll(input_ids, -1, dims=1)
        labels[:, -1] = IGNORE_INDEX
        positions = torch.arange(row).repeat(tokens // row, 1)
        batch = {"input_ids": input_ids.to(device), "position_ids": positions.to(device)}
        labels = labels.to(device)
        chunk_tokens = chunk if path == "chunked" else 0
        resident = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        tracker = MemTracker()
        tracker.track_external(model)
        before = _real_before(device, fake)
        started = time.perf_counter()
        with tracker:
            loss = causal_lm_loss(model, model, batch, labels, chunk_tokens)
            loss.backward()  # type: ignore[no-untyped-call]
        elapsed = time.perf_counter() - started
        peak = None if fake else _real_peak(device)
        counted = int(sum(dev["Total"] for dev in tracker.get_tracker_snapshot("peak").values()))
        result: dict[str, Any] = {
            "path": path,
            "chunk_tokens": chunk_tokens,
            "tokens": tokens,
            "method": "counted (FakeTensorMode, nothing allocated)" if fake else "resident-set peak",
            "counted_peak_bytes_over_start": counted - resident,
            "seconds": elapsed,
        }
        if not fake:
            grads = [p.grad.double().norm() for p in model.parameters() if p.grad is not None]
            result |= {
                "peak_bytes_over_start": peak - before if peak is not None else None,
                "peak_bytes": peak,
                "loss": float(loss.detach()),
                "grad_norm": float(torch.stack(grads).norm()),
                "counted_tokens": int((labels != IGNORE_INDEX).sum()),
            }
    return result


def _generator(seed: int) -> Any:
    import torch

    return torch.Generator().manual_seed(seed)


def _real_before(device: Any, fake: bool) -> int:
    import torch

    if fake:
        return 0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())
    before = _rss_bytes()
    _reset_hwm()
    return before


def _real_peak(device: Any) -> int:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return _hwm_bytes()


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def full_path_fits(tokens: int, vocab: int, device: str) -> bool:
    """Today's path holds ~3 fp32 [tokens, vocab] tensors at its peak; on CPU keep a 15% margin of what is free."""
    if device != "cpu":
        return True
    return 3 * tokens * vocab * 4 < 0.85 * _available_bytes()


def measure(path: str, args: argparse.Namespace, *, tokens: int | None = None, fake: bool = False) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        path,
        *("--tokens", str(tokens or args.tokens), "--row", str(args.row), "--vocab", str(args.vocab)),
        *("--chunk", str(args.chunk), "--device", args.device, "--seed", str(args.seed)),
        *(["--fake"] if fake else []),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{path} worker failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def largest_fitting_tokens(args: argparse.Namespace) -> int:
    tokens = int(args.tokens)
    while tokens > args.row and not full_path_fits(tokens, args.vocab, args.device):
        tokens //= 2
    return max(args.row, tokens - tokens % args.row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384, help="tokens in the micro-batch")
    parser.add_argument("--row", type=int, default=1024, help="tokens per row (tokens must be a multiple)")
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary size (Llama 3's)")
    parser.add_argument("--chunk", type=int, default=2048, help="tokens per chunk (the recipe's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=["full", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--fake", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "loss_memory.json")
    args = parser.parse_args()
    if args.tokens % args.row:
        parser.error("--tokens must be a multiple of --row")
    if args.worker:
        result = worker(args.worker, args.tokens, args.row, args.vocab, args.chunk, args.device, args.seed, args.fake)
        print(json.dumps(result))
        return
    chunked = measure("chunked", args)
    check: dict[str, Any] | None = None
    if full_path_fits(args.tokens, args.vocab, args.device):
        full = measure("full", args)
        ratio = chunked["peak_bytes_over_start"] / full["peak_bytes_over_start"]
        agreement = (chunked, full)
    else:
        full = measure("full", args, fake=True)
        ratio = chunked["counted_peak_bytes_over_start"] / full["counted_peak_bytes_over_start"]
        check_tokens = largest_fitting_tokens(args)
        check = {"tokens": check_tokens, "full": measure("full", args, tokens=check_tokens)}
        check["chunked"] = measure("chunked", args, tokens=check_tokens)
        agreement = (check["chunked"], check["full"])
        check["counted_over_real_full"] = (
            check["full"]["counted_peak_bytes_over_start"] / check["full"]["peak_bytes_over_start"]
        )
    loss_rel = abs(agreement[0]["loss"] - agreement[1]["loss"]) / abs(agreement[1]["loss"])
    norm_rel = abs(agreement[0]["grad_norm"] - agreement[1]["grad_norm"]) / abs(agreement[1]["grad_norm"])
    logits_bytes = args.tokens * args.vocab * 4
    measured = [("today (full logits)", full), (f"chunked ({args.chunk})", chunked)]
    if check is not None:
        measured += [("today, check", check["full"]), ("chunked, check", check["chunked"])]
    rows = [_row(name, row) for name, row in measured]
    print(
        f"{args.tokens:,} tokens x vocabulary {args.vocab:,} on {args.device}; "
        f"one fp32 logits tensor is {logits_bytes / 2**30:.2f} GiB"
    )
    print(format_table(["path", "tokens", "peak GiB (real)", "GiB (counted)", "seconds", "loss", "grad norm"], rows))
    if check is not None:
        print(
            f"today's path does not fit here at {args.tokens:,} tokens: counted under FakeTensorMode; at "
            f"{check['tokens']:,} tokens the count is {check['counted_over_real_full']:.3f}x the real peak"
        )
    print(
        f"ratio chunked/today peak: {ratio:.3f} (target <= 0.25); relative difference "
        f"(at {agreement[1]['tokens']:,} tokens): loss {loss_rel:.1e}, grad norm {norm_rel:.1e}"
    )
    write_results(
        args.out,
        {
            "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "fake")} | {"out": str(args.out)},
            "model": MODEL | {"model_type": "llama", "vocab_size": args.vocab},
            "fp32_logits_bytes": logits_bytes,
            "full": full,
            "chunked": chunked,
            "check_at_fitting_size": check,
            "ratio_chunked_over_full_peak": ratio,
            "loss_relative_difference": loss_rel,
            "grad_norm_relative_difference": norm_rel,
        },
    )


def _row(name: str, row: dict[str, Any]) -> tuple[Any, ...]:
    real = row.get("peak_bytes_over_start")
    return (
        name,
        row["tokens"],
        "-" if real is None else f"{real / 2**30:.2f}",
        f"{row['counted_peak_bytes_over_start'] / 2**30:.2f}",
        row["seconds"],
        row.get("loss", "-"),
        row.get("grad_norm", "-"),
    )


if __name__ == "__main__":
    main()
