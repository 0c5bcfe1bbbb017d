"""The base every FineTuneJob model builds on: camelCase wire names, no unknown fields, cross-field rules.

Cross-field rules are declared once, as a CEL expression (which the API server evaluates, via the generated
CRD) paired with a Python predicate (which the operator's and the trainer's own validation evaluate) and one
message. Both sides therefore reject the same input with the same words. This module imports nothing heavy:
the operator imports it without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: `cel` for the API server, `holds` for Python, the same `message` for both.

    `field` names the member (camelCase, relative to the object) the error is reported on.
    """

    cel: str
    holds: Callable[[Any], bool]
    message: str
    field: str | None = None


class SpecModel(BaseModel):
    """Base of every spec/status object: the Kubernetes wire format (camelCase) with strict field names.

    Only the camelCase names validate: the API server would reject a snake_case field, so the CLI must too.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=False,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> SpecModel:
        for rule in type(self).rules:
            if not rule.holds(self):
                # The member the rule names travels with the error, so the error's path is the field's, as the
                # API server reports it (spec.training.warmupSteps, not spec.training).
                raise PydanticCustomError("cross_field", rule.message, {"member": rule.field or ""})
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        if cls.rules:
            schema["x-kubernetes-validations"] = [_cel_entry(rule) for rule in cls.rules]
        return schema

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _cel_entry(rule: Rule) -> dict[str, str]:
    entry = {"rule": rule.cel, "message": rule.message}
    if rule.field is not None:
        entry["fieldPath"] = f".{rule.field}"
    return entry


def count_set(*values: object) -> int:
    """How many of `values` are set (not None): for "exactly one of" rules."""
    return sum(value is not None for value in values)
