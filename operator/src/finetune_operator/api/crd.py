"""Generate the FineTuneJob and FineTuneSweep CRDs from the API models, so the API server enforces what the
operator validates.

pydantic's JSON Schema is close to, but not, a Kubernetes structural schema: it uses $ref/$defs, anyOf for
optional and int-or-string fields, titles, and `additionalProperties: true` for free-form objects. This module
rewrites it into the structural form and adds what only Kubernetes knows (printer columns, subresources).
`python -m finetune_operator.api.crd` writes the committed copies; `--check` fails when they are stale.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from finetune_contract import names
from finetune_operator.api import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    FineTuneJobSpec,
    FineTuneJobStatus,
    sweep,
)

Schema = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parents[4]
_DROPPED_KEYS = {"title", "$defs", "propertyNames"}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.loss"},
    {"name": "GradNorm", "type": "number", "jsonPath": ".status.gradNorm"},
    {"name": "Verdict", "type": "string", "priority": 1, "jsonPath": ".status.earlyStopping.decision"},
    {"name": names.PYTORCHJOB_KIND, "type": "string", "priority": 1, "jsonPath": ".status.pytorchJobName"},
    {"name": names.TRAINJOB_KIND, "type": "string", "priority": 1, "jsonPath": ".status.trainJobName"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


SWEEP_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Trials", "type": "integer", "jsonPath": ".status.trialsTotal"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.running"},
    {"name": "Pruned", "type": "integer", "jsonPath": ".status.pruned"},
    {"name": "Best", "type": "number", "jsonPath": ".status.bestObjective"},
    {"name": "Saved", "type": "string", "jsonPath": ".status.savedPercent"},
    {"name": "BestTrial", "type": "string", "priority": 1, "jsonPath": ".status.bestTrial"},
    {"name": "Rho", "type": "number", "priority": 1, "jsonPath": ".status.scoreObjectiveCorrelation.rho"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


@dataclass(frozen=True)
class Kind:
    """One custom resource: its names, its models, what kubectl shows, and where its CRD is committed."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec: type[Any]
    status: type[Any]
    columns: list[dict[str, Any]]
    description: str

    @property
    def paths(self) -> tuple[Path, Path]:
        return Path(f"crds/{self.singular}.yaml"), Path(f"helm/finetune-operator/crds/{self.singular}.yaml")


JOB = Kind(
    KIND,
    PLURAL,
    SINGULAR,
    SHORT_NAMES,
    FineTuneJobSpec,
    FineTuneJobStatus,
    PRINTER_COLUMNS,
    "FineTuneJob runs supervised fine-tuning of a language model as a Kubeflow PyTorchJob and stops it early when "
    "its training dynamics fail the configured thresholds.",
)
SWEEP = Kind(
    sweep.SWEEP_KIND,
    sweep.SWEEP_PLURAL,
    sweep.SWEEP_SINGULAR,
    sweep.SWEEP_SHORT_NAMES,
    sweep.FineTuneSweepSpec,
    sweep.FineTuneSweepStatus,
    SWEEP_PRINTER_COLUMNS,
    "FineTuneSweep tries many FineTuneJob recipes, prunes the losers on their early training dynamics, and reports "
    "whether its pruning score predicts the final result on these runs.",
)
KINDS = (JOB, SWEEP)
CRD_PATHS = tuple(path for kind in KINDS for path in kind.paths)


def structural(schema: Schema, defs: dict[str, Schema]) -> Schema:
    """Rewrite one pydantic JSON Schema node (and its children) into a Kubernetes structural schema node."""
    node = _inline_ref(schema, defs)
    node = _collapse_any_of(node, defs)
    node = _pattern_keys_as_cel(node)
    out: Schema = {key: value for key, value in node.items() if key not in _DROPPED_KEYS}
    if "properties" in out:
        out["type"] = "object"
        out["properties"] = {name: structural(sub, defs) for name, sub in out["properties"].items()}
        out.pop("additionalProperties", None)
        _object_default_to_empty(out)
    elif out.get("type") == "object":
        _free_form_or_map(out, defs)
    if "items" in out:
        out["items"] = structural(out["items"], defs)
    _drop_empty_collection_default(out)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    _openapi_v3_bounds(out)
    return _ordered(out)


def _pattern_keys_as_cel(node: Schema) -> Schema:
    """A map with constrained keys (patternProperties, propertyNames: not in Kubernetes' schema dialect) becomes
    a plain map plus a CEL rule on its keys, with the same pattern and length the models check."""
    patterns = node.get("patternProperties")
    if not patterns:
        return node
    if len(patterns) != 1:
        raise ValueError(f"no structural form for several key patterns {sorted(patterns)}")
    ((pattern, values),) = patterns.items()
    out = {key: value for key, value in node.items() if key not in ("patternProperties", "propertyNames")}
    out["additionalProperties"] = values
    if "type" not in values:
        # The API server cannot give CEL a type for a map of untyped values (it refuses the whole CRD): such
        # keys are checked by the operator's models only, and reported in the object's status.
        return out
    longest = (node.get("propertyNames") or {}).get("maxLength")
    check = f"key.matches(r'{pattern}')" + (f" && size(key) <= {longest}" if longest else "")
    rule = {"rule": f"self.all(key, {check})", "message": f"every key must match {pattern}"}
    out["x-kubernetes-validations"] = [*out.get("x-kubernetes-validations", []), rule]
    return out


def _ordered(node: Schema) -> Schema:
    """type and description first: the generated file is read by people too."""
    head: Schema = {key: node[key] for key in ("type", "description") if key in node}
    return {**head, **{key: value for key, value in node.items() if key not in head}}


def _inline_ref(schema: Schema, defs: dict[str, Schema]) -> Schema:
    if "$ref" not in schema:
        return schema
    target = defs[schema["$ref"].rsplit("/", 1)[-1]]
    merged = {**_inline_ref(target, defs), **{k: v for k, v in schema.items() if k != "$ref"}}
    return merged


def _collapse_any_of(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Optional[X] → X (absence means unset), nullable when it has a non-null default; int | str →
    x-kubernetes-int-or-string."""
    if "anyOf" not in node:
        return node
    branches = [_inline_ref(branch, defs) for branch in node["anyOf"]]
    rest = {key: value for key, value in node.items() if key != "anyOf"}
    concrete = [branch for branch in branches if branch.get("type") != "null"]
    if rest.get("default", 0) is None:
        del rest["default"]
    elif len(concrete) < len(branches) and "default" in rest:
        rest["nullable"] = True  # null is a value here (e.g. divergenceFactor: null disables); keep it
    if len(concrete) == 1:
        return _collapse_any_of({**concrete[0], **rest}, defs)  # Optional[int | str] nests one anyOf in another
    if sorted(str(branch.get("type")) for branch in concrete) == ["integer", "string"]:
        return {**rest, "x-kubernetes-int-or-string": True}
    raise ValueError(f"no structural form for anyOf {node['anyOf']!r}")


def _object_default_to_empty(out: Schema) -> None:
    """A defaulted sub-object's default is written out in full, without nulls (absent means unset).

    Not `{}`: the API server validates a default against the schema's CEL rules without applying the members'
    own defaults first, so rules reading defaulted members would fail on `{}`.
    """
    if isinstance(out.get("default"), dict):
        out["default"] = _without_nulls(out["default"])


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _openapi_v3_bounds(out: Schema) -> None:
    """JSON Schema 2020's numeric exclusiveMinimum/Maximum → OpenAPI v3.0's boolean form, which Kubernetes wants."""
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        bound = out.get(exclusive)
        if isinstance(bound, int | float) and not isinstance(bound, bool):
            out[inclusive] = bound
            out[exclusive] = True


def _drop_empty_collection_default(out: Schema) -> None:
    """Absent means empty for lists and maps: no `[]`/`{}` written into every stored object."""
    if out.get("default") in ([], {}) and out.get("type") in ("array", "object") and "properties" not in out:
        del out["default"]


def _free_form_or_map(out: Schema, defs: dict[str, Schema]) -> None:
    additional = out.get("additionalProperties")
    if isinstance(additional, dict) and additional:
        out["additionalProperties"] = structural(additional, defs)
        return
    out.pop("additionalProperties", None)
    out["x-kubernetes-preserve-unknown-fields"] = True


def model_schema(model: type[Any]) -> Schema:
    """The structural schema of one pydantic model (wire names, validation mode)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def open_api_schema(kind: Kind = JOB) -> Schema:
    """The whole openAPIV3Schema of one kind."""
    spec = model_schema(kind.spec)
    status = model_schema(kind.status)
    return {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version: finetune.dev/v1alpha1."},
            "kind": {"type": "string", "description": f"Kind: {kind.kind}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd(kind: Kind = JOB) -> dict[str, Any]:
    """The CustomResourceDefinition manifest of one kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "annotations": {"finetune.dev/generated-by": "python -m finetune_operator.api.crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["all", "finetune"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.columns,
                    "schema": {"openAPIV3Schema": open_api_schema(kind)},
                }
            ],
        },
    }


def crd_yaml(kind: Kind = JOB) -> str:
    """The CRD as the YAML text that is committed (stable key order, a header naming the generator)."""
    header = f"# Generated from the {API_VERSION} API models by `python -m finetune_operator.api.crd`. Do not edit.\n"
    return header + yaml.dump(crd(kind), Dumper=_NoAliasDumper, sort_keys=False, width=120)


def all_crds_yaml() -> str:
    """Every CRD of the product, as one multi-document YAML (what `finetune crd` prints)."""
    return "---\n".join(crd_yaml(kind) for kind in KINDS)


class _NoAliasDumper(yaml.SafeDumper):
    """Repeated enum lists must be written out: kubectl and people do not expect YAML anchors in a CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def stale_files(root: Path = REPO_ROOT) -> list[Path]:
    """Committed CRD copies that differ from what the models generate now."""
    return [
        path
        for kind in KINDS
        for path in kind.paths
        if not (root / path).is_file() or (root / path).read_text() != crd_yaml(kind)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crdgen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed CRD files are stale")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.root)
        for path in stale:
            print(f"{path}: stale, run `python -m finetune_operator.api.crd`", file=sys.stderr)
        return 1 if stale else 0
    for kind in KINDS:
        for path in kind.paths:
            target = args.root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(crd_yaml(kind))
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
