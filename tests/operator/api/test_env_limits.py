"""The trainer's environment limits: the recipe travels as one environment variable, so a spec whose pod could
never exec is refused at validation, naming the limit — and the limits themselves are measured on this kernel."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from finetune_operator.api.models import MAX_ENV_STRING, MAX_ENV_TOTAL
from finetune_operator.api.validation import InvalidInputError, validate_manifest
from tests.manifests import minimal_job


def exec_with(value_bytes: int) -> None:
    """exec `true` with one variable whose `X=value\\0` string is `value_bytes` long."""
    subprocess.run(["true"], env={"X": "a" * (value_bytes - len("X=") - 1)}, check=True)


def test_one_variable_limit_is_what_linux_enforces() -> None:
    exec_with(MAX_ENV_STRING)  # the largest string that still execs...
    with pytest.raises(OSError, match="Argument list too long") as refused:
        exec_with(MAX_ENV_STRING + 1)  # ...and one byte more does not
    assert refused.value.errno == errno.E2BIG


def test_the_total_we_allow_execs_with_room_to_spare() -> None:
    """MAX_ENV_TOTAL of variables (each under the one-variable limit) plus half as much again still execs: the
    image's env and torchrun's arguments have room; ARG_MAX (sysconf) is above it."""
    assert os.sysconf("SC_ARG_MAX") >= 2 * MAX_ENV_TOTAL
    chunk = MAX_ENV_STRING // 2
    count = 3 * MAX_ENV_TOTAL // 2 // chunk
    env = {f"V{index}": "a" * (chunk - len(f"V{index}=") - 1) for index in range(count)}
    subprocess.run(["true"], env=env, check=True)


def long_paths(count: int, length: int) -> list[dict[str, str]]:
    return [{"path": "/data/" + f"{index:04d}-" + "x" * (length - 11)} for index in range(count)]


def test_a_recipe_too_large_for_one_variable_is_refused_naming_the_limit() -> None:
    job = minimal_job(data={"datasets": long_paths(64, 4000), "maxSeqLen": 1024})
    with pytest.raises(InvalidInputError) as raised:
        validate_manifest(job)
    (error,) = raised.value.errors
    assert error.path == "spec"
    assert f"{MAX_ENV_STRING:,} bytes" in error.rule
    assert "MAX_ARG_STRLEN" in error.rule


def test_a_recipe_just_under_the_limit_is_accepted() -> None:
    job = minimal_job(data={"datasets": long_paths(25, 4000), "maxSeqLen": 1024})
    assert validate_manifest(job).spec.data.datasets[0].path is not None


def test_an_environment_too_large_in_total_is_refused_on_resources_env() -> None:
    env = [{"name": f"BIG{index}", "value": "v" * 65_000} for index in range(20)]
    with pytest.raises(InvalidInputError) as raised:
        validate_manifest(minimal_job(resources={"env": env}))
    (error,) = raised.value.errors
    assert error.path == "spec.resources.env"
    assert f"{MAX_ENV_TOTAL:,} bytes" in error.rule
    accepted = validate_manifest(minimal_job(resources={"env": env[:12]}))
    assert len(accepted.spec.resources.env) == 12
