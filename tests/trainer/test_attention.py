"""The per-sample SDPA used for packed rows is exact: the same logits as each sample alone, and as a dense mask."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from finetune_trainer.attention import PACKED_SDPA, register, sample_boundaries


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
    )
    return LlamaForCausalLM(config).eval()


def packed_inputs(lengths: list[int]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(sum(lengths))
    samples = [torch.randint(0, 300, (n,), generator=generator) for n in lengths]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return samples, torch.cat(samples)[None], positions


@pytest.mark.parametrize("lengths", [[7], [30, 50, 20], [1, 64, 2, 33]])
def test_packed_logits_equal_each_sample_alone(model: LlamaForCausalLM, lengths: list[int]) -> None:
    samples, packed, positions = packed_inputs(lengths)
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        alone = torch.cat([model(input_ids=sample[None], use_cache=False).logits[0] for sample in samples])
        dense = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0]
        model.set_attn_implementation(register())
        ours = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0]
        bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        explicit = model(input_ids=packed, position_ids=positions, cu_seq_lens_q=bounds, use_cache=False).logits[0]
    torch.testing.assert_close(ours, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explicit, ours, rtol=0, atol=0)


def test_padded_batches_fall_back_to_transformers_sdpa(model: LlamaForCausalLM) -> None:
    input_ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(input_ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        reference = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        model.set_attn_implementation(PACKED_SDPA if register() else "sdpa")
        ours = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(ours[0], reference[0])
    torch.testing.assert_close(ours[1, :8], reference[1, :8])


def test_boundaries_from_position_ids() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert sample_boundaries({"position_ids": positions}, 9) == [0, 3, 5, 9]
    assert sample_boundaries({}, 9) == [0, 9]
