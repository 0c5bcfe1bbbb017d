"""Turn invalid FineTuneJob input into messages a person can act on: field path, offending value, rule.

Used by the CLI (exit code 2) and by the operator (a Failed condition instead of a crash loop), so both
report the same problem in the same words.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from finetune_operator.api import FineTuneJob
from finetune_operator.api.sweep import SWEEP_KIND, FineTuneSweep, plan

_MAX_VALUE_CHARS = 80


@dataclass(frozen=True)
class FieldError:
    """One problem with the input: where, what was given, and which rule it breaks."""

    path: str
    rule: str
    value: str | None = None
    source: str = ""

    def __str__(self) -> str:
        shown = f" (got {self.value})" if self.value is not None else ""
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.path or '<document>'}: {self.rule}{shown}"


class InvalidInputError(ValueError):
    """Input that no retry can fix; carries every problem found, not only the first."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(error) for error in self.errors))


def field_path(loc: Sequence[int | str]) -> str:
    """('spec', 'data', 'datasets', 0, 'path') → 'spec.data.datasets[0].path' (the form kubectl explain uses)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def show_value(value: Any) -> str:
    """A short, unambiguous rendering of the offending value."""
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def field_errors(error: ValidationError, source: str = "") -> list[FieldError]:
    """pydantic errors → FieldErrors, with rule texts phrased for this API."""
    out = []
    for item in error.errors(include_url=False):
        path = field_path(item["loc"])
        kind = item["type"]
        if kind == "extra_forbidden":
            out.append(FieldError(path, "unknown field", show_value(item["input"]), source))
        elif kind == "missing":
            out.append(FieldError(path, "required field is missing", source=source))
        elif kind == "cross_field":
            member = (item.get("ctx") or {}).get("member")
            out.append(FieldError(f"{path}.{member}" if member else path, item["msg"], source=source))
        else:
            rule = item["msg"].removeprefix("Value error, ")
            out.append(FieldError(path, rule, show_value(item["input"]), source))
    return out


def validate_manifest(document: Any, source: str = "") -> FineTuneJob:
    """A FineTuneJob from one parsed YAML/JSON document, or InvalidInputError listing every problem."""
    if not isinstance(document, Mapping):
        raise InvalidInputError([FieldError("", "a FineTuneJob must be a mapping", show_value(document), source)])
    refuse_non_json_numbers(document, source)
    try:
        return FineTuneJob.model_validate_json(wire_json(document), strict=True)
    except ValidationError as error:
        raise InvalidInputError(field_errors(error, source)) from None


def validate_sweep_manifest(document: Any, source: str = "") -> FineTuneSweep:
    """A FineTuneSweep whose every trial is a valid FineTuneJob, or InvalidInputError listing every problem
    (schema errors by field path; trial errors by the sweep value that caused them)."""
    if not isinstance(document, Mapping):
        raise InvalidInputError([FieldError("", "a FineTuneSweep must be a mapping", show_value(document), source)])
    refuse_non_json_numbers(document, source)
    try:
        sweep = FineTuneSweep.model_validate_json(wire_json(document), strict=True)
    except ValidationError as error:
        raise InvalidInputError(field_errors(error, source)) from None
    _, problems = plan(sweep.metadata.name, sweep.spec)
    if problems:
        raise InvalidInputError([FieldError(p.path, p.rule, p.value, source) for p in problems])
    return sweep


def validate_any(document: Any, source: str = "") -> FineTuneJob | FineTuneSweep:
    """A FineTuneJob or a FineTuneSweep, by the document's kind (anything else is a FineTuneJob's error)."""
    if isinstance(document, Mapping) and document.get("kind") == SWEEP_KIND:
        return validate_sweep_manifest(document, source)
    return validate_manifest(document, source)


NON_JSON_NUMBER = "NaN and infinite numbers cannot reach the API server: JSON has no such number"


def refuse_non_json_numbers(document: Mapping[str, Any], source: str = "") -> None:
    """YAML's .nan/.inf parse, JSON cannot carry them (kubectl refuses the file): refused here too, by path — also
    where the schema keeps any value (model.config), which no field rule would catch."""
    found = [FieldError(field_path(at), NON_JSON_NUMBER, repr(value), source) for at, value in _non_finite(document)]
    if found:
        raise InvalidInputError(found)


def _non_finite(node: Any, path: tuple[int | str, ...] = ()) -> list[tuple[tuple[int | str, ...], float]]:
    if isinstance(node, float):
        return [] if math.isfinite(node) else [(path, node)]
    if isinstance(node, Mapping):
        return [found for key, value in node.items() for found in _non_finite(value, (*path, str(key)))]
    if isinstance(node, list | tuple):
        return [found for index, value in enumerate(node) for found in _non_finite(value, (*path, index))]
    return []


def wire_json(document: Mapping[str, Any]) -> str:
    """The document as the API server receives it: JSON. Validated strictly from JSON, types are judged as the
    server's schema judges them: "1e-5" is a string, not a learning rate; true is not "yes"; 2 is a valid number.
    YAML values JSON has no type for (dates) travel as strings, as kubectl sends them."""
    return json.dumps(document, default=str)


def parse_documents(text: str, source: str = "") -> list[Any]:
    """All YAML documents in `text` (empty ones dropped); YAML syntax errors become InvalidInputError."""
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "document"
        problem = getattr(error, "problem", None) or str(error)
        raise InvalidInputError([FieldError(where, f"invalid YAML: {problem}", source=source)]) from None
    if not documents:
        raise InvalidInputError([FieldError("", "no FineTuneJob document found", source=source)])
    return documents
