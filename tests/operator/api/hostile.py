"""Hypothesis strategies for FineTuneJob documents: the shipped examples, then valid, almost valid and hostile
edits at any depth — huge and non-finite numbers, unicode, very long strings and lists, wrong types, nulls,
missing and unknown keys. Shared by the in-process property test and the real-API-server differential test.

Example counts: `HOSTILE_EXAMPLES` (default 300 here, in CI) — set it to thousands for a nightly run.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from typing import Any

import yaml
from hypothesis import strategies as st

from tests.manifests import JOB_EXAMPLES

EXAMPLES_ENV = "HOSTILE_EXAMPLES"


def examples_setting(default: int) -> int:
    return int(os.environ.get(EXAMPLES_ENV, default))


def example_documents() -> list[dict[str, Any]]:
    documents = []
    for path in JOB_EXAMPLES:
        documents += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if isinstance(doc, dict)]
    return documents


BASES = example_documents()

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**19]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, 0.5, -0.0]),
    st.text(max_size=30),
    st.sampled_from(["", " ", "1e-5", "true", "yes", "null", "NaN", "8Gi", "1GiGi", "-2", "ümlaut-名前", "a\u0000b"]),
)
LONG = st.one_of(
    st.builds(lambda char, n: char * n, st.sampled_from(["a", "é", "名", "-", "0"]), st.integers(200, 300_000)),
    st.builds(
        lambda item, n: [copy.deepcopy(item) for _ in range(n)],
        st.sampled_from([1, "x", {"a": 1}, None]),
        st.integers(60, 5_000),
    ),
)
VALUES = st.recursive(
    SCALARS | LONG,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=8,
)


PATHS_PER_LIST = 3
"""Edits reach the first items of a list (a long list's every item is not worth a path each)."""


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into the document (the root excluded), depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:PATHS_PER_LIST]):
            yield (*prefix, index)
            yield from paths(value, (*prefix, index))


def _parent(document: Any, path: tuple[Any, ...]) -> Any:
    node = document
    for key in path[:-1]:
        node = node[key]
    return node


def _nearby(value: Any) -> st.SearchStrategy[Any]:
    """A value of the same JSON type: the edits a user makes, many of them still valid."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-2, 2 * max(abs(value), 8)) | st.just(value)
    if isinstance(value, float):
        return st.floats(min_value=-1.0, max_value=2 * max(abs(value), 1.0), allow_nan=False) | st.just(value)
    if isinstance(value, str):
        return st.text(max_size=20) | st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True) | st.just(value)
    return st.just(copy.deepcopy(value))


@st.composite
def documents(draw: st.DrawFn, max_edits: int = 4) -> Any:
    """An example document with 0..max_edits edits; sometimes not a mapping at all."""
    if draw(st.integers(0, 40)) == 0:
        return draw(VALUES)
    document = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(0, max_edits))):
        found = list(paths(document))
        if not found:
            break
        path = draw(st.sampled_from(found))
        parent = _parent(document, path)
        action = draw(st.sampled_from(["nearby", "nearby", "nearby", "replace", "replace", "delete", "add"]))
        if action == "nearby":  # almost valid: the same type, another value
            parent[path[-1]] = draw(_nearby(parent[path[-1]]))
        elif action == "replace":
            parent[path[-1]] = copy.deepcopy(draw(VALUES))
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=20))] = copy.deepcopy(draw(VALUES))
        else:
            parent.append(copy.deepcopy(draw(VALUES)))
    return document
