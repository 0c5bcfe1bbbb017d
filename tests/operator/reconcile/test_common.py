"""Events: a failure to post never fails a reconcile, and is a warning only when it is one."""

from __future__ import annotations

import logging
from typing import cast

import pytest

from finetune_operator.config import OperatorConfig
from finetune_operator.kube import Kube
from finetune_operator.metrics.operator import OperatorMetrics
from finetune_operator.reconcile.common import Context, post_event
from tests.manifests import minimal_job
from tests.operator.fake_kube import FakeKube, api_error


@pytest.mark.parametrize(
    ("message", "warned"),
    [
        ("unable to create new content in namespace x because it is being terminated", False),
        ('events is forbidden: User "system:serviceaccount:ops:op" cannot create resource "events"', True),
    ],
    ids=["namespace-terminating", "rbac"],
)
def test_refused_event_is_logged_not_raised(caplog: pytest.LogCaptureFixture, message: str, warned: bool) -> None:
    fake = FakeKube()
    fake.refuse_events = api_error(403, message)
    ctx = Context(kube=cast(Kube, fake), config=OperatorConfig(), metrics=OperatorMetrics())
    job = fake.add_job(minimal_job("j"), "ns")
    with caplog.at_level(logging.DEBUG, logger="finetune_operator"):
        post_event(ctx, job, "Normal", "Created", "created PyTorchJob j")
    levels = [record.levelno for record in caplog.records if "could not post event" in record.getMessage()]
    assert levels == [logging.WARNING if warned else logging.DEBUG]
