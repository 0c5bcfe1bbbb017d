"""Tokenized data at scale: tokenizing time against TRL, per-rank memory after loading, planning, time to first step.

The data: a synthetic chat dataset of `--samples` conversations (default 1,000,000) made from the shared data's
real conversations (GSM8K train/test, FastChat, InstructLab taxonomy, Self-Instruct): each record joins 1-3 randomly
chosen conversations into one multi-turn chat and perturbs it (every number redrawn, a varying request id), so no
two records are the same text. The tokenizer: a byte-level BPE of `--vocab` entries (default 32,768) trained here
with `tokenizers` on the shared chat data and the first synthetic records, as the trainer builds tokenizers
(`train_bpe_tokenizer`).

What is measured, each in its own fresh process:

  * tokenize: wall time of `prepare_data` into an empty cache with 1 process and with every core this process may
    use (`os.sched_getaffinity`), against TRL's dataset preparation: the JSONL read with `datasets` and an
    `SFTTrainer` built on it (`dataset_num_proc` 1 and all cores; datasets' cache off). TRL here tokenizes each
    conversation once with the template and does NOT locate assistant tokens (its `assistant_only_loss` needs
    `{% generation %}` markers this template lacks), so it does less work than ours (which renders every assistant
    prefix to find the labelled spans): the comparison is favourable to TRL.
  * per-rank memory: 2 ranks (gloo process group), each running `prepare_data` on the warm cache and what the
    trainer does next (lengths, step order, a step's plan and collation, every token page read once). Reported:
    growth of private memory (RssAnon) and of resident file pages (RssFile, the shared page cache) from just
    before loading, against the dataset's token count and what the old Python-list samples took (~54 B a token).
    With `--tile-to` the same is measured on a cache tiled to that many samples from the tokenized ones (the
    load path of `prepare_data` once a cache exists, `load_prepared`), so 1M-sample memory can be measured when
    tokenizing 1M samples does not fit the time budget.
  * planning: `step_batches` for 3 epochs and `plan_step` for every step of one epoch (effective batch 64, 2
    ranks, 8,192-token budget), lengths from an array, for `--plan-samples` samples (default 1,000,000, lengths
    drawn from the tokenized dataset's).
  * first step: `python -m finetune_trainer` on the dataset with a warm cache (a tiny Llama), from process start
    to the first optimizer step's record (its `time` field).

Targets: per-rank private memory growth <= 0.5 GB at 1M samples; tokenizing no slower than TRL with the same
cores; first step <= 60 s after start with a warm cache.

The full 1M run spends about 30 minutes tokenizing on 2 cores (ours and TRL, 1 and 2 processes each); the
recorded result is 200,000 records (tokenizing scales linearly in records) with memory measured at 1M (--tile-to):

    flock /tmp/finetune-bench.lock .venv/bin/python benchmarks/data_scale.py --samples 200000 --tile-to 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import BENCH_LLAMA, RESULTS, SHARED_DATA, format_table, write_results  # noqa: E402
from finetune_contract import names  # noqa: E402

SOURCES = (
    "gsm8k/train-00000-of-00002.chat.jsonl",
    "gsm8k/train-00001-of-00002.chat.jsonl",
    "gsm8k/test.chat.jsonl",
    "fastchat/dummy_conversation.chat.jsonl",
    "instructlab_taxonomy/taxonomy_seed.chat.jsonl",
    "self_instruct/seed_tasks.chat.jsonl",
)
TOKENIZER_LINES = 20_000
"""The tokenizer is trained on every shared chat file and the first 20,000 synthetic records (the shared text alone
runs out of merges at about 30,500 entries)."""
MAX_SEQ_LEN = 4096
LIST_BYTES_PER_TOKEN = 54
TARGETS = {"rss_growth_gb_at_1m": 0.5, "ours_over_trl_speed": 1.0, "first_step_s": 60.0}
NUMBER = re.compile(r"\d+")


# ------------------------------------------------------------------------------------------------------- the data
def base_conversations() -> list[list[dict[str, str]]]:
    conversations = []
    for name in SOURCES:
        for line in (SHARED_DATA / name).read_text(encoding="utf-8").split("\n"):
            if line.strip():
                messages = [m for m in json.loads(line)["messages"] if m["role"] != "system"]
                if messages and messages[0]["role"] == "user":
                    conversations.append(messages)
    return conversations


def synthetic_dataset(path: Path, samples: int, seed: int) -> None:
    """`samples` records, each 1-3 real conversations joined and perturbed (numbers redrawn, a request id)."""
    base = base_conversations()
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for index in range(samples):
            messages: list[dict[str, str]] = []
            for conversation in rng.sample(base, rng.choice((1, 1, 2, 3))):
                for message in conversation:
                    content = NUMBER.sub(lambda _: str(rng.randrange(10 ** rng.randint(1, 4))), message["content"])
                    messages.append({"role": message["role"], "content": content})
            messages[0]["content"] = f"[request {index:07d}] " + messages[0]["content"]
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------------------- children
def rss() -> dict[str, int]:
    """RssAnon (private) and RssFile (mapped file pages) of this process, in KiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("RssAnon", "RssFile", "VmRSS", "VmHWM"):
            values[key] = int(line.split()[1])
    return values


def child_tokenize_ours(args: dict[str, Any]) -> dict[str, Any]:
    from finetune_trainer.config import DatasetSpec
    from finetune_trainer.data import prepare_data
    from finetune_trainer.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args["tokenizer"], None)
    started = time.perf_counter()
    prepared = prepare_data(
        [DatasetSpec(path=args["data"])],
        tokenizer,
        max_seq_len=MAX_SEQ_LEN,
        eval_fraction=0.0,
        seed=0,
        cache_dir=Path(args["cache"]),
        num_proc=args["procs"],
    )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "samples": len(prepared.train),
        "tokens": prepared.train.num_tokens,
        "dropped": prepared.dropped_too_long,
    }


def child_tokenize_trl(args: dict[str, Any]) -> dict[str, Any]:
    import datasets  # type: ignore[import-untyped]
    import transformers
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

    from finetune_trainer.tokenizer import load_tokenizer

    datasets.disable_caching()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    tokenizer = load_tokenizer(args["tokenizer"], None)
    config = transformers.LlamaConfig(**{**BENCH_LLAMA, "vocab_size": len(tokenizer)})
    config.pad_token_id = tokenizer.pad_token_id
    model = transformers.LlamaForCausalLM(config)
    started = time.perf_counter()
    dataset = datasets.load_dataset("json", data_files=args["data"], split="train", cache_dir=args["cache"])
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=dataset,
        args=SFTConfig(
            output_dir=args["cache"],
            dataset_num_proc=args["procs"],
            max_length=MAX_SEQ_LEN,
            report_to=[],
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
        ),
    )
    seconds = time.perf_counter() - started
    prepared = trainer.train_dataset
    return {"seconds": seconds, "samples": len(prepared)}


def _rank_main(rank: int, args: dict[str, Any]) -> None:
    import numpy as np
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args["port"]))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from finetune_trainer.batching import collate_packed, loss_token_count, plan_step, step_batches
    from finetune_trainer.config import DatasetSpec
    from finetune_trainer.data import load_prepared, prepare_data
    from finetune_trainer.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args["tokenizer"], None)
    dist.barrier()
    before = rss()
    started = time.perf_counter()
    if args.get("tiled"):
        prepared = load_prepared(Path(args["tiled"]), 0.01, 0)
    else:
        prepared = prepare_data(
            [DatasetSpec(path=args["data"])],
            tokenizer,
            max_seq_len=MAX_SEQ_LEN,
            eval_fraction=0.01,
            seed=0,
            cache_dir=Path(args["cache"]),
            rank=rank,
            world_size=2,
        )
    samples = prepared.train
    lengths = samples.lengths
    steps = step_batches(len(samples), 64, 3, 0)
    plan = plan_step(steps[0], lengths, 2, 8192)
    for micro in plan[rank]:
        collate_packed([samples[i] for i in micro])
    loss_token_count([samples[i] for i in steps[0]])
    load_seconds = time.perf_counter() - started
    data = samples.data
    checksum = int(data.input_ids.sum(dtype=np.int64)) + int(np.count_nonzero(data.loss_mask))  # read every page
    after = rss()
    dist.barrier()
    result = {
        "rank": rank,
        "load_seconds": load_seconds,
        "samples": len(samples),
        "tokens": data.num_tokens,
        "checksum": checksum,
        "before_kib": before,
        "after_kib": after,
        "anon_growth_kib": after["RssAnon"] - before["RssAnon"],
        "file_growth_kib": after["RssFile"] - before["RssFile"],
    }
    Path(args["out"]).with_suffix(f".rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def child_ranks(args: dict[str, Any]) -> dict[str, Any]:
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(args,), nprocs=2, join=True)
    ranks = [json.loads(Path(args["out"]).with_suffix(f".rank{r}.json").read_text()) for r in range(2)]
    return {"ranks": ranks}


def child_plan(args: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from finetune_trainer.batching import plan_step, step_batches
    from finetune_trainer.tokenized import read_tokenized

    observed = np.diff(np.asarray(read_tokenized(Path(args["cache_file"])).offsets))
    lengths = np.random.default_rng(0).choice(observed, args["plan_samples"])
    started = time.perf_counter()
    steps = step_batches(len(lengths), 64, 3, 0)
    count = len(steps)
    first_epoch = steps.steps_per_epoch
    orders = [len(steps.epoch_order(epoch)) for epoch in range(3)]
    order_seconds = time.perf_counter() - started
    started = time.perf_counter()
    micro_steps = 0
    for index in range(first_epoch):
        micro_steps += len(plan_step(steps[index], lengths, 2, 8192)[0])
    plan_seconds = time.perf_counter() - started
    return {
        "samples": len(lengths),
        "steps": count,
        "orders": orders,
        "step_order_seconds_3_epochs": order_seconds,
        "plan_seconds_1_epoch": plan_seconds,
        "plan_steps": first_epoch,
        "plan_ms_per_step": 1000 * plan_seconds / max(first_epoch, 1),
        "micro_steps": micro_steps,
    }


def child_tile(args: dict[str, Any]) -> dict[str, Any]:
    """A cache of `samples` samples made by repeating the tokenized ones (for memory at a size not tokenized)."""
    import numpy as np

    from finetune_trainer.tokenized import TokenChunk, read_tokenized, write_tokenized

    data = read_tokenized(Path(args["cache_file"]))
    lengths = np.diff(np.asarray(data.offsets))
    target, have = args["samples"], len(lengths)
    out = Path(args["tiled"])

    def chunks() -> Any:
        done = 0
        while done < target:
            take = min(have, target - done)
            end = int(data.offsets[take])
            yield TokenChunk(
                np.asarray(data.input_ids[:end]),
                np.asarray(data.loss_mask[:end]),
                lengths[:take],
                np.asarray(data.num_loss_tokens[:take]),
                0,
            )
            done += take

    write_tokenized(out, chunks(), target)
    return {"samples": target, "tokens": read_tokenized(out).num_tokens, "bytes": out.stat().st_size}


def child_first_step(args: dict[str, Any]) -> dict[str, Any]:
    recipe = {
        "model": {"config": BENCH_LLAMA, "tokenizer": args["tokenizer"], "dtype": "float32"},
        "data": {"datasets": [{"path": args["data"]}], "maxSeqLen": MAX_SEQ_LEN, "cacheDir": args["cache"]},
        "training": {"effectiveBatchSize": 64, "maxTokensPerGpu": 8192, "maxSteps": 1, "paddingFree": True},
    }
    out = Path(args["out_dir"])
    recipe_path = out / "recipe.json"
    out.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(json.dumps(recipe))
    env = {**os.environ, names.ENV_OUTPUT_DIR: str(out / "run")}
    started = time.time()
    process = subprocess.run(
        [sys.executable, "-m", names.TRAINER_MODULE, "--recipe", str(recipe_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    ended = time.time()
    if process.returncode != 0:
        raise SystemExit(f"trainer failed ({process.returncode}):\n{process.stderr[-3000:]}")
    records = [json.loads(line) for path in (out / "run").rglob("*.jsonl") for line in path.read_text().splitlines()]
    steps = [r for r in records if r.get("step") == 1 and "loss" in r]
    if not steps:
        raise SystemExit(f"no step record found in {out / 'run'}")
    return {"first_step_s": steps[0]["time"] - started, "process_s": ended - started, "stdout": process.stdout[-500:]}


CHILDREN = {
    "ours": child_tokenize_ours,
    "trl": child_tokenize_trl,
    "ranks": child_ranks,
    "plan": child_plan,
    "tile": child_tile,
    "first_step": child_first_step,
}


def run_child(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """One measurement in a fresh interpreter (no state, imports or page cache of tokens shared with the parent)."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as result:
        path = result.name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, __file__, "--child", kind, "--child-args", json.dumps(args), "--child-out", path]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    payload: dict[str, Any] = json.loads(Path(path).read_text())
    payload["process_wall_s"] = time.perf_counter() - started
    os.unlink(path)
    print(f"  {kind} {args.get('procs', '')}: {json.dumps({k: v for k, v in payload.items() if k != 'stdout'})}")
    return payload


# ----------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--vocab", type=int, default=32_768)
    parser.add_argument("--tile-to", type=int, default=0, help="also measure 2-rank memory on a cache of this size")
    parser.add_argument("--plan-samples", type=int, default=1_000_000)
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--results", type=Path, default=RESULTS / "data_scale.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-args", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = CHILDREN[args.child](json.loads(args.child_args))
        Path(args.child_out).write_text(json.dumps(result))
        return

    from finetune_trainer.data import available_cpus
    from finetune_trainer.tokenizer import load_tokenizer, train_bpe_tokenizer

    work = args.work or Path(tempfile.mkdtemp(prefix="data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    cores = available_cpus()
    data = work / f"chat-{args.samples}.jsonl"
    started = time.perf_counter()
    if not data.exists():
        synthetic_dataset(data, args.samples, seed=0)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    files = [SHARED_DATA / name for name in SOURCES] + [data]
    tokenizer_dir = train_bpe_tokenizer(files, args.vocab, work / "tokenizer", max_lines=TOKENIZER_LINES)
    vocab = len(load_tokenizer(str(tokenizer_dir), None))
    print(
        f"data: {args.samples} records, {data.stat().st_size / 2**20:.0f} MiB ({build_seconds:.0f}s); "
        f"tokenizer: {vocab} entries ({time.perf_counter() - started:.0f}s); cores: {cores}"
    )
    common = {"data": str(data), "tokenizer": str(tokenizer_dir)}
    results: dict[str, Any] = {"tokenize": {}}
    procs = sorted({1, cores})
    for count in procs:
        cache = work / f"cache-ours-{count}"
        results["tokenize"][f"ours_{count}"] = run_child("ours", common | {"cache": str(cache), "procs": count})
        if not args.skip_trl:
            cache = work / f"cache-trl-{count}"
            results["tokenize"][f"trl_{count}"] = run_child("trl", common | {"cache": str(cache), "procs": count})
    warm = work / f"cache-ours-{cores}"
    cache_file = next(warm.glob("tokenized-*.tokens"))
    tokens = results["tokenize"][f"ours_{cores}"]["tokens"]
    ranks_args = common | {"cache": str(warm), "port": 29517, "out": str(work / "ranks")}
    results["ranks"] = run_child("ranks", ranks_args)
    results["ranks"]["tokens"] = tokens
    if args.tile_to:
        tiled = work / f"tiled-{args.tile_to}.tokens"
        results["tiled"] = run_child(
            "tile", {"cache_file": str(cache_file), "samples": args.tile_to, "tiled": str(tiled)}
        )
        tiled_args = ranks_args | {"tiled": str(tiled), "port": 29518, "out": str(work / "tiled-ranks")}
        results["tiled"]["ranks"] = run_child("ranks", tiled_args)["ranks"]
        tiled.unlink()
    results["plan"] = run_child("plan", {"cache_file": str(cache_file), "plan_samples": args.plan_samples})
    results["first_step"] = run_child("first_step", common | {"cache": str(warm), "out_dir": str(work / "first")})

    # ------------------------------------------------------------------------------------------------ report
    rows = []
    for count in procs:
        ours = results["tokenize"][f"ours_{count}"]["seconds"]
        trl = results["tokenize"].get(f"trl_{count}", {}).get("seconds", float("nan"))
        rows.append([f"{count} process(es)", ours, trl, trl / ours, args.samples / ours])
    print()
    print(format_table(["tokenize", "ours s", "TRL s", "ours speed / TRL", "records/s ours"], rows))
    ratios = {f"ours_over_trl_speed_{count}": row[3] for count, row in zip(procs, rows, strict=True)}

    def memory_rows(label: str, ranks: list[dict[str, Any]], total_tokens: int) -> list[list[Any]]:
        old = total_tokens * LIST_BYTES_PER_TOKEN / 2**30
        return [
            [
                f"{label} rank {r['rank']}",
                r["samples"],
                total_tokens,
                r["anon_growth_kib"] / 2**20,
                r["file_growth_kib"] / 2**20,
                old,
                r["load_seconds"],
            ]
            for r in ranks
        ]

    memory = memory_rows(f"{args.samples}", results["ranks"]["ranks"], tokens)
    if "tiled" in results:
        memory += memory_rows(f"{args.tile_to} tiled", results["tiled"]["ranks"], results["tiled"]["tokens"])
    print()
    headers = ["per-rank memory", "samples", "tokens", "private GB", "file pages GB", "old lists GB", "load s"]
    print(format_table(headers, memory))
    plan = results["plan"]
    print()
    print(
        f"planning {plan['samples']} samples: step order for 3 epochs {plan['step_order_seconds_3_epochs']:.2f}s, "
        f"plan_step for one epoch ({plan['plan_steps']} steps) {plan['plan_seconds_1_epoch']:.2f}s "
        f"({plan['plan_ms_per_step']:.2f} ms/step)"
    )
    print(f"first optimizer step after process start (warm cache): {results['first_step']['first_step_s']:.1f}s")
    at_1m = results.get("tiled", {}).get("ranks") if args.tile_to >= 1_000_000 else None
    worst = max(r["anon_growth_kib"] for r in (at_1m or results["ranks"]["ranks"])) / 2**20
    write_results(
        args.results,
        {
            "benchmark": "data_scale",
            "settings": {
                "samples": args.samples,
                "vocab_requested": args.vocab,
                "vocab": vocab,
                "cores": cores,
                "max_seq_len": MAX_SEQ_LEN,
                "tile_to": args.tile_to,
                "plan_samples": args.plan_samples,
                "data_mib": round(data.stat().st_size / 2**20, 1),
            },
            "targets": TARGETS,
            "ratios": ratios,
            "private_growth_gb_worst_rank": worst,
            "private_growth_measured_at_samples": args.tile_to if at_1m else args.samples,
            "first_step_s": results["first_step"]["first_step_s"],
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
