"""The arithmetic the benchmark tables rest on, and the packing-efficiency claim on the real shared data.

Benchmarks are scripts with machine-dependent numbers, so they are never timed here; what is checked is what would
make a published figure wrong: the percentile definition, the padded-slot accounting, the MFU FLOP formula (against
PyTorch's own FLOP counter on a real model), and that our batching wastes < 5% on every shared dataset.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM

from benchmarks.common import percentile, summary
from benchmarks.gpu_mfu import sample_flops
from benchmarks.packing_efficiency import hf_padded_slots
from tests.manifests import REPO_ROOT, TINY_LLAMA


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_an_observed_value_and_monotone_in_q(values: list[float], q1: float, q2: float) -> None:
    low, high = sorted((q1, q2))
    assert percentile(values, low) in values
    assert percentile(values, low) <= percentile(values, high)
    assert percentile(values, 100) == max(values)


def test_summary_of_one_to_twenty() -> None:
    figures = summary([float(v) for v in range(20, 0, -1)])
    # Nearest rank: p50 is the 10th of 20 ordered values, p95 the 19th.
    assert figures == {"p50": 10.0, "p95": 19.0, "max": 20.0}


def test_hf_padded_slots_pad_each_micro_batch_to_its_longest_row_in_lockstep() -> None:
    lengths = [1, 2, 3, 4, 5]
    # One rank, micro-batches of two in step order: [1,2] -> 2x2, [3,4] -> 2x4, [5] -> a full 2-row batch x 5.
    assert hf_padded_slots([0, 1, 2, 3, 4], lengths, 1, 2) == (15, 4 + 8 + 10)
    # Two ranks take [1,2,3] and [4,5]; micro-step 0 = rows {1,2},{4,5} -> longest 5; step 1 = {3} -> 3.
    assert hf_padded_slots([0, 1, 2, 3, 4], lengths, 2, 2) == (15, 2 * 2 * 5 + 2 * 2 * 3)


@pytest.mark.parametrize("length", [16, 96])
def test_mfu_flop_formula_matches_pytorchs_flop_counter(length: int) -> None:
    """6·N·s for the matmuls, 3 x the forward attention FLOPs (4·L·d·s²) for attention: PaLM's convention.

    The counter also sees the flash backward's recomputation of the scores (10·L·d·s² instead of 8): real work
    that MFU conventionally does not credit, so attention is compared on its forward pass."""
    config = AutoConfig.for_model(**TINY_LLAMA, vocab_size=300, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    ids = torch.randint(0, 300, (1, length))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    counts = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    matmuls = sum(flops for op, flops in counts.items() if op in ("aten.mm", "aten.addmm", "aten.bmm"))
    attention_forward = sum(flops for op, flops in counts.items() if "attention" in op and "backward" not in op)
    layers, hidden = config.num_hidden_layers, config.hidden_size
    assert attention_forward == 4 * layers * hidden * length**2
    # N also holds the RMSNorm weights, which are no matmul: < 1% of this model's parameters.
    assert matmuls == pytest.approx(6 * params * length, rel=0.01)
    assert sample_flops(length, params, layers, hidden) == 6 * params * length + 3 * attention_forward


def test_padding_free_batching_wastes_under_five_percent_on_every_shared_dataset(tmp_path: Path) -> None:
    out = tmp_path / "packing.json"
    script = REPO_ROOT / "benchmarks" / "packing_efficiency.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["results"]) == 10, "5 datasets x 2 layouts"
    for row in result["results"]:
        assert row["padding_free"] >= 0.95, row
        assert 0 < row["padded_hf"] <= 1, row
        assert 0 < row["padded_ours"] <= 1, row
        assert row["padding_free"] > row["padded_hf"], row
