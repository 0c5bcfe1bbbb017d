"""The operator-trainer contract is typed once (finetune_contract) and nowhere else in the product's code.

A literal copy of a contract name (an env var, a metric, a label, the child's group, the checkpoint layout,
IGNORE_INDEX) is how the two sides drift apart unnoticed: a renamed metric would leave early stopping blind with
every test of each side still green. This scans every Python module of the product (the operator, the trainer,
the benchmarks) outside the contract's home for string literals that are, or contain, a contract name. Tests are
not scanned: they spell the wire names on purpose, as users and dashboards see them, to catch a rename.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_contract import checkpoints, names, records
from tests.manifests import REPO_ROOT

HOME = REPO_ROOT / "operator" / "src" / "finetune_contract"
SCANNED = [
    *sorted((REPO_ROOT / "operator" / "src" / "finetune_operator").rglob("*.py")),
    *sorted((REPO_ROOT / "trainer_image" / "src" / "finetune_trainer").rglob("*.py")),
    *sorted((REPO_ROOT / "benchmarks").rglob("*.py")),
]
GENERIC = {"step", "kind", "eval", "event", "final", "phase", "namespace", "v1", "v1alpha1", "node"}
"""Contract values too common as words to police as literals (e.g. a dict key "step" in a log line)."""


def contract_values() -> dict[str, str]:
    """Every string value the contract defines -> its name."""
    found = {}
    for module in (names, checkpoints, records):
        for attr, value in vars(module).items():
            if attr.isupper() and isinstance(value, str) and value not in GENERIC:
                found[value] = f"{module.__name__}.{attr}"
    return found


VALUES = contract_values()
AFFIXES = {names.RESERVED_ENV_PREFIX, names.COUNTER_SUFFIX}
SUBSTRING = {
    value: where
    for value, where in VALUES.items()
    if value not in AFFIXES and (any(mark in value for mark in "/.") or "_" in value)
}
"""Values distinctive enough to be found inside longer identifiers (selectors, label keys, series names). Prose
(a literal with whitespace: a help text, a message) is only checked for exact names."""


def string_literals(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant that is not a docstring (docstrings may name the contract)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    attribute_docs = {  # a bare string statement: an attribute's docstring or a comment-like note
        id(stmt.value)
        for node in ast.walk(tree)
        if isinstance(getattr(node, "body", None), list)
        for stmt in node.body
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)
    }
    for node in ast.walk(tree):
        documentation = id(node) in docstrings or id(node) in attribute_docs
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not documentation:
            yield node.lineno, node.value


def ignore_index_literals(path: Path) -> Iterator[int]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
            and node.operand.value == -names.IGNORE_INDEX
        ):
            yield node.lineno


def violations(path: Path) -> list[str]:
    out = []
    for line, text in string_literals(path):
        if text in VALUES:
            out.append(f"{path.relative_to(REPO_ROOT)}:{line}: {text!r} is {VALUES[text]}")
            continue
        if any(character.isspace() for character in text):
            continue
        for value, where in SUBSTRING.items():
            if value in text and not text.startswith(("finetune_operator", "finetune_trainer")):
                out.append(f"{path.relative_to(REPO_ROOT)}:{line}: {text!r} contains {where}")
    out += [f"{path.relative_to(REPO_ROOT)}:{line}: -100 is names.IGNORE_INDEX" for line in ignore_index_literals(path)]
    return out


def test_the_scan_sees_the_product_and_the_contract() -> None:
    assert len(SCANNED) >= 40
    assert not any(HOME in path.parents for path in SCANNED)
    assert {"FINETUNE_RECIPE", "finetune_grad_norm", "kubeflow.org", "COMPLETE", "metrics.jsonl"} <= set(VALUES)


def test_the_scan_catches_a_copy(tmp_path: Path) -> None:
    """The detector itself: a module that types contract names is reported, line by line."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""Docstrings may say finetune_grad_norm."""\n'
        'PORT = "FINETUNE_METRICS_PORT"\n'
        'SELECTOR = f"training.kubeflow.org/job-name={1}"\n'
        "LABELS = [1, -100]\n"
    )
    found = violations(bad.rename(REPO_ROOT / "tests" / "contract" / f"_probe_{tmp_path.name}.py"))
    (REPO_ROOT / "tests" / "contract" / f"_probe_{tmp_path.name}.py").unlink()
    assert sorted({item.split(":")[1] for item in found}) == ["2", "3", "4"], found


@pytest.mark.parametrize("path", SCANNED, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_no_contract_name_is_typed_outside_its_home(path: Path) -> None:
    assert not violations(path), "\n".join(violations(path))
