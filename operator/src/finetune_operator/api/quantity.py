"""Kubernetes resource quantities, parsed by the grammar the API server uses (apimachinery's resource.Quantity).

Why not a loose regex: one that lets `1GiGi`, `...` or `-1Gi` through produces a PyTorchJob the API server refuses
(a 422 on create) or, worse, one it accepts whose pods the training-operator can never create. The grammar:

    quantity   ::= sign? number suffix?
    number     ::= digits | digits "." digits? | "." digits
    suffix     ::= binarySI (Ki Mi Gi Ti Pi Ei) | decimalSI (n u m k M G T P E) | ("e" | "E") sign? digits

`E` alone is exa (decimal SI), `e` alone is nothing; the exponent takes integer digits only. The CRD checks the
same thing with the API server's own parser (CEL's `isQuantity`/`quantity`, no regex), so both sides refuse the
same input with the same message.
"""

from __future__ import annotations

import re
from decimal import Decimal

MAX_LENGTH = 64
"""Longest quantity string accepted (the CRD bounds it too; CEL needs a bound to estimate a rule's cost)."""

_GRAMMAR = re.compile(
    r"(?P<sign>[+-])?"
    r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?"
)

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL_EXPONENT = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

POSITIVE_RULE = "must be a Kubernetes quantity greater than 0, such as 8, 500m or 64Gi"
"""The one wording of the rule, used by the operator's validation and by the CRD's CEL rule."""

POSITIVE_CEL = (
    "type(self) == int ? int(self) > 0 : "
    "(isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0')))"
)
"""The rule for the API server, on an int-or-string field: the server's own quantity parser decides."""


def parse_quantity(text: str) -> Decimal:
    """The value of a quantity string, exactly; ValueError (naming what is wrong) when Kubernetes would refuse it."""
    if len(text) > MAX_LENGTH:
        raise ValueError(f"is longer than {MAX_LENGTH} characters")
    match = _GRAMMAR.fullmatch(text)
    if match is None:
        raise ValueError("is not a number with an optional suffix (Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E)")
    number = Decimal(match["number"])
    if match["sign"] == "-":
        number = -number
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL_EXPONENT:
        return number.scaleb(_DECIMAL_EXPONENT[suffix])
    return number.scaleb(int(suffix[1:]))


def positive_quantity(value: object) -> int | str:
    """An integer or quantity string greater than zero, returned unchanged; ValueError with POSITIVE_RULE otherwise.

    Zero and negative values are refused although Kubernetes parses them: a pod limit below zero is refused when
    the pod is created (long after the FineTuneJob was accepted), and a zero CPU, memory or /dev/shm never trains.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value > 0:
            return value
        raise ValueError(POSITIVE_RULE)
    if not isinstance(value, str):
        raise ValueError(POSITIVE_RULE)
    try:
        parsed = parse_quantity(value)
    except ValueError as error:
        raise ValueError(f"{POSITIVE_RULE}; this one {error}") from None
    if parsed <= 0:
        raise ValueError(POSITIVE_RULE)
    return value
