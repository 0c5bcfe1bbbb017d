"""The trainer end to end on CPU: a tiny Llama built from a config, a locally built tokenizer, real shared data.

In-process tests check the maths (reference loss, packed = padded); subprocess tests run the real entry point
(`python -m finetune_trainer`, and torchrun with 2 gloo processes) the way a pod does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_trainer.config import Recipe
from finetune_trainer.modeling import build_model
from finetune_trainer.trainer import RunOptions, Trainer
from tests.manifests import TINY_LLAMA
from tests.trainer.conftest import FASTCHAT_CHAT, SELF_INSTRUCT_CHAT
from tests.trainer.test_metrics import free_port, samples_by_name

REL = 1e-5  # fp32 on CPU: different summation orders agree to ~1e-7; this leaves margin, nothing more


def recipe(tokenizer: str = "builtin:byte-level", **training: Any) -> dict[str, Any]:
    """A small, fast run: fastchat multi-turn chats, 16 samples per step, several micro-steps per step."""
    settings = {"effectiveBatchSize": 16, "maxTokensPerGpu": 1024, "learningRate": 1e-3, "maxSteps": 3, **training}
    return {
        "model": {"config": TINY_LLAMA, "tokenizer": tokenizer, "dtype": "float32"},
        "data": {"datasets": [{"path": str(FASTCHAT_CHAT)}], "maxSeqLen": 512},
        "training": settings,
    }


def in_process(spec: dict[str, Any], out: Path, padding_free: bool = True, checkpointing: bool = False) -> Trainer:
    """The trainer in this process; the batching and memory knobs are the recipe's own fields."""
    training = {**spec["training"], "paddingFree": padding_free}
    training["parallelism"] = {**training.get("parallelism", {}), "activationCheckpointing": checkpointing}
    trainer = Trainer(Recipe.model_validate({**spec, "training": training}), RunOptions(output_dir=out))
    trainer.setup()
    return trainer


def first_step(trainer: Trainer):
    step, phase, epoch, indices = next(iter(trainer.schedule()))
    return trainer.train_step(step, phase, epoch, indices), [phase.samples[i] for i in indices]


def test_step_one_loss_equals_an_independent_reference(tmp_path) -> None:
    """Plain transformers forward, one sample at a time, token-weighted mean — vs the trainer's packed step 1."""
    spec = recipe()
    trainer = in_process(spec, tmp_path)
    reference_model = build_model(Recipe.model_validate(spec).model, trainer.tokenizer, seed=42)
    record, samples = first_step(trainer)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for sample in samples:
            out = reference_model(
                input_ids=torch.tensor(sample.input_ids, dtype=torch.long).unsqueeze(0),
                labels=torch.tensor(sample.labels, dtype=torch.long).unsqueeze(0),
                use_cache=False,
            )
            total += float(out.loss) * sample.num_loss_tokens
            tokens += sample.num_loss_tokens
    trainer.close()
    assert record.tokens == tokens
    assert record.loss == pytest.approx(total / tokens, rel=REL)


def test_padding_free_and_padded_give_the_same_loss_and_grad_norm(tmp_path) -> None:
    packed = in_process(recipe(), tmp_path / "packed", padding_free=True)
    padded = in_process(recipe(), tmp_path / "padded", padding_free=False)
    record_packed, _ = first_step(packed)
    record_padded, _ = first_step(padded)
    packed.close()
    padded.close()
    assert record_packed.loss == pytest.approx(record_padded.loss, rel=REL)
    assert record_packed.grad_norm == pytest.approx(record_padded.grad_norm, rel=REL)


def test_activation_checkpointing_changes_memory_not_maths(tmp_path) -> None:
    plain = in_process(recipe(), tmp_path / "plain")
    recomputed = in_process(recipe(), tmp_path / "recomputed", checkpointing=True)
    assert recomputed.hf_model.is_activation_checkpointing
    record_plain, _ = first_step(plain)
    record_recomputed, _ = first_step(recomputed)
    plain.close()
    recomputed.close()
    assert record_recomputed.loss == pytest.approx(record_plain.loss, rel=REL)
    assert record_recomputed.grad_norm == pytest.approx(record_plain.grad_norm, rel=REL)


def test_effective_batch_is_counted_in_samples_and_micro_steps_follow_lengths(tmp_path) -> None:
    trainer = in_process(recipe(effectiveBatchSize=24, maxTokensPerGpu=600), tmp_path)
    entries = list(trainer.schedule())[:3]
    records = [trainer.train_step(*entry) for entry in entries]
    trainer.close()
    assert [record.samples for record in records] == [24, 24, 24]
    for record, (_, phase, _, indices) in zip(records, entries, strict=True):
        step_tokens = sum(len(phase.samples[i].input_ids) for i in indices)
        # At least as many micro-steps as the 600-token budget needs for this step's samples; at most one each.
        assert -(-step_tokens // 600) <= record.micro_steps <= len(indices), (step_tokens, record.micro_steps)
    assert all(record.tokens > 0 for record in records)


def test_persistent_non_finite_values_are_recorded_and_stop_the_run(tmp_path) -> None:
    """NaN weights (a real way runs die) make every step non-finite: logged as NaN, no update, then an error."""
    from finetune_trainer.trainer import NonFiniteError

    trainer = in_process(recipe(maxSteps=10), tmp_path)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="non-finite for 4 consecutive steps"):
        trainer.train()
    trainer.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if record["kind"] == "step"]
    assert len(losses) == trainer.recipe.training.max_non_finite_steps + 1
    assert all(loss != loss for loss in losses)  # NaN survives the JSONL round trip


# ----------------------------------------------------------------------------------------------- subprocesses
def run_env(out: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "FINETUNE_OUTPUT_DIR": str(out),
        "FINETUNE_JOB_NAME": "tiny-sft",
        "FINETUNE_JOB_NAMESPACE": "tests",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **extra,
    }
    env.pop("FINETUNE_METRICS_PORT", None) if "FINETUNE_METRICS_PORT" not in extra else None
    return env


def launch(spec: dict[str, Any], out: Path, nproc: int = 1, **env: str) -> subprocess.Popen[str]:
    out.mkdir(parents=True, exist_ok=True)
    recipe_file = out.parent / f"{out.name}-recipe.json"
    recipe_file.write_text(json.dumps(spec))
    if nproc == 1:
        command = [sys.executable, "-m", "finetune_trainer", "--recipe", str(recipe_file)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        command += ["--module", "finetune_trainer", "--recipe", str(recipe_file)]
    return subprocess.Popen(
        command, env=run_env(out, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def steps(out: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["kind"] == "step"]


def events(out: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["kind"] == "event"]


def wait_for(predicate, timeout: float = 180, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """One uninterrupted single-process run with checkpoints every 2 steps, shared by the comparisons below."""
    out = tmp_path_factory.mktemp("reference") / "out"
    code, output = finish(launch(recipe(maxSteps=4, checkpoint={"intervalSteps": 2}), out))
    assert code == 0, output
    return out


def test_a_run_completes_with_a_final_hf_model(reference_run: Path) -> None:
    assert [record["step"] for record in steps(reference_run)] == [1, 2, 3, 4]
    final = reference_run / "final"
    assert (final / "model.safetensors").is_file()
    assert (final / "config.json").is_file()
    assert (reference_run / "checkpoint-2" / "COMPLETE").is_file()
    from safetensors import safe_open

    with safe_open(str(final / "model.safetensors"), "pt") as weights:
        assert all(weights.get_tensor(key).dtype == torch.float32 for key in weights.keys())  # noqa: SIM118


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_process(reference_run: Path, tmp_path, parallel: str) -> None:
    """Same effective batch on 2 gloo ranks (DDP, then FSDP2): the same loss and pre-clip grad norm per step."""
    out = tmp_path / "out"
    code, output = finish(launch(recipe(maxSteps=2, parallelism={"mode": parallel}), out, nproc=2))
    assert code == 0, output
    single, double = steps(reference_run)[:2], steps(out)
    for one, two in zip(single, double, strict=True):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
        assert two["samples"] == one["samples"] == 16


def test_checkpoints_by_time_are_agreed_by_the_ranks(tmp_path) -> None:
    """checkpoint.intervalMinutes on 2 gloo ranks: saves happen by the clock (no step interval set), every rank
    joins each collective save (a disagreement would hang until the timeout or fail), and each is complete."""
    out = tmp_path / "out"
    spec = recipe(maxSteps=16, checkpoint={"intervalMinutes": 0.003, "keepLast": 100})  # 0.18 s
    code, output = finish(launch(spec, out, nproc=2), timeout=240)
    assert code == 0, output
    saved = [event for event in events(out) if event["event"] == "checkpoint"]
    assert len(saved) >= 2, output
    steps_saved = [event["step"] for event in saved]
    assert steps_saved == sorted(set(steps_saved))
    assert all(0 < step < 16 for step in steps_saved)
    for step in steps_saved:
        assert (out / f"checkpoint-{step}" / "COMPLETE").is_file()
    logged = [record["time"] for record in steps(out)]
    # By the clock, not every step: no more saves than intervals in the run (each save's own time only adds).
    assert len(saved) <= (logged[-1] - logged[0]) / 0.18 + 1, (steps_saved, logged[-1] - logged[0])


def test_kill_and_resume_reproduces_the_uninterrupted_losses(reference_run: Path, tmp_path) -> None:
    out = tmp_path / "out"
    process = launch(recipe(maxSteps=4, checkpoint={"intervalSteps": 2}), out)
    wait_for(lambda: (out / "checkpoint-2" / "COMPLETE").is_file(), what="checkpoint-2")
    process.kill()
    process.wait()
    (out / "checkpoint-3.tmp").mkdir()  # a half-written checkpoint from the kill: must be ignored
    code, output = finish(launch(recipe(maxSteps=4, checkpoint={"intervalSteps": 2}), out))
    assert code == 0, output
    resumed = [event for event in events(out) if event["event"] == "resumed"]
    assert resumed
    assert resumed[-1]["step"] == 2
    expected = {record["step"]: record["loss"] for record in steps(reference_run)}
    after = [record for record in steps(out) if record["step"] > 2][-2:]
    assert [record["step"] for record in after] == [3, 4]
    for record in after:
        assert record["loss"] == pytest.approx(expected[record["step"]], rel=1e-6)


def test_sigterm_checkpoints_and_exits_zero(tmp_path) -> None:
    out = tmp_path / "out"
    process = launch(recipe(maxSteps=200), out)
    wait_for(lambda: (out / "metrics.jsonl").is_file() and steps(out), what="first step")
    process.send_signal(signal.SIGTERM)
    code, output = finish(process)
    assert code == 0, output
    assert "interrupted" in output
    last = max(record["step"] for record in steps(out))
    assert (out / f"checkpoint-{last}" / "COMPLETE").is_file()
    assert (out / f"checkpoint-{last}" / "trainer_state.pt").is_file()


def test_metrics_endpoint_mid_run_carries_every_series(tmp_path) -> None:
    out, port = tmp_path / "out", free_port()
    process = launch(recipe(maxSteps=200), out, FINETUNE_METRICS_PORT=str(port))
    try:

        def scraped() -> dict[str, list] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    found = samples_by_name(response.read().decode())
            except OSError:
                return None
            step = found.get("finetune_optimizer_step")
            return found if step and step[0].value >= 1 else None

        wait_for(lambda: scraped() is not None, what="a scrape after step 1")
        found = scraped()
        assert found is not None
        for name in (
            "finetune_train_loss",
            "finetune_grad_norm",
            "finetune_learning_rate",
            "finetune_total_steps",
            "finetune_samples_total",
            "finetune_tokens_total",
            "finetune_step_duration_seconds",
        ):
            assert found[name][0].labels == {"finetunejob": "tiny-sft", "namespace": "tests"}, name
        assert found["finetune_total_steps"][0].value == steps(out)[0]["total_steps"]
        assert found["finetune_optimizer_step"][0].value >= 1
    finally:
        process.send_signal(signal.SIGTERM)
        finish(process)


def test_phased_run_trains_phases_in_order(tmp_path) -> None:
    spec = recipe(maxSteps=None)
    spec["data"] = {"maxSeqLen": 512}
    spec["training"].pop("maxSteps")
    spec["training"].update(
        strategy="phased",
        phases=[
            {"name": "skills", "datasets": [{"path": str(SELF_INSTRUCT_CHAT)}], "effectiveBatchSize": 64},
            {
                "name": "chat",
                "datasets": [{"path": str(FASTCHAT_CHAT)}],
                "effectiveBatchSize": 128,
                "learningRate": 5e-4,
            },
        ],
    )
    out = tmp_path / "out"
    code, output = finish(launch(spec, out))
    assert code == 0, output
    records = steps(out)
    phases = [record["phase"] for record in records]
    assert phases == sorted(phases, key=["skills", "chat"].index)
    assert set(phases) == {"skills", "chat"}
    assert {record["learning_rate"] for record in records if record["phase"] == "chat"} == {5e-4}
    assert any(event["event"] == "phase_done" and event["phase"] == "skills" for event in events(out))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda spec, tmp: spec["training"].update(learningRate=-1), "learningRate"),
        (lambda spec, tmp: spec["data"]["datasets"][0].update(format="csv"), "format"),
        (lambda spec, tmp: spec["data"]["datasets"][0].update(path=str(tmp / "missing.jsonl")), "missing.jsonl"),
        (
            lambda spec, tmp: spec["data"]["datasets"][0].update(path=str(malformed(tmp))),
            "bad.jsonl:2: malformed JSON line",
        ),
    ],
    ids=["negative-lr", "unknown-format", "missing-file", "malformed-jsonl"],
)
def test_bad_recipe_or_data_exits_2_with_a_clear_message(mutate, expected: str, tmp_path) -> None:
    spec = recipe()
    mutate(spec, tmp_path)
    code, output = finish(launch(spec, tmp_path / "out"), timeout=120)
    assert code == 2, output
    assert "Traceback" not in output
    assert expected in output


def malformed(tmp: Path) -> Path:
    path = tmp / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    path.write_text(good + "\n{not json\n")
    return path
