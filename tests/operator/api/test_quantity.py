"""Quantities parsed by the grammar the API server uses: the value of each suffix, and what must be refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from finetune_operator.api.quantity import MAX_LENGTH, POSITIVE_RULE, parse_quantity, positive_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8", Decimal(8)),
        ("500m", Decimal("0.5")),
        ("64Gi", Decimal(64 * 1024**3)),
        ("1.5", Decimal("1.5")),
        (".5", Decimal("0.5")),
        ("1.", Decimal(1)),
        ("+2k", Decimal(2000)),
        ("1e3", Decimal(1000)),
        ("1E", Decimal(10**18)),  # E alone is exa, not an exponent
        ("2E-3", Decimal("0.002")),
        ("3Ki", Decimal(3072)),
        ("1Ei", Decimal(2**60)),
        ("100u", Decimal("0.0001")),
        ("7n", Decimal("0.000000007")),
        ("-1Gi", Decimal(-(1024**3))),  # parses (Kubernetes parses it); refused later as not positive
    ],
)
def test_value_of_each_form(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text", ["", ".", "...", "1GiGi", "1gi", "1KI", "1e", "1e1.5", "10^30", "lots", "1 Gi", "Gi", "1Gib", "--1", "0x10"]
)
def test_malformed_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a number with an optional suffix"):
        parse_quantity(text)


def test_length_is_bounded() -> None:
    with pytest.raises(ValueError, match=f"longer than {MAX_LENGTH}"):
        parse_quantity("1" * (MAX_LENGTH + 1))


@pytest.mark.parametrize("value", [0, -1, "0", "0Gi", "-2", "-1Gi", "0.0", True, 1.5, None, "1GiGi"])
def test_positive_quantity_refuses_zero_negative_and_non_quantities(value: object) -> None:
    with pytest.raises(ValueError, match=POSITIVE_RULE):
        positive_quantity(value)


@pytest.mark.parametrize("value", [1, "1", "500m", "64Gi", "1e3", "+4"])
def test_positive_quantity_keeps_the_value_as_given(value: object) -> None:
    assert positive_quantity(value) == value


@given(st.integers(0, 10**6), st.sampled_from(["", "k", "M", "G", "Ki", "Mi", "Gi", "m"]))
def test_integer_with_suffix_scales_exactly(number: int, suffix: str) -> None:
    scale = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": Decimal("0.001")}
    assert parse_quantity(f"{number}{suffix}") == number * scale[suffix]
