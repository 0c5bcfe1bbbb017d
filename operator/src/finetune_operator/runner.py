"""Start the operator: logging, metrics endpoint, Kopf with our handlers. Kopf stops gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import ctypes
import ctypes.util
import faulthandler
import json
import logging
import os
import sys
from typing import Any

import kopf

from finetune_operator.children import backends
from finetune_operator.config import OperatorConfig
from finetune_operator.kube import Kube, api_client
from finetune_operator.metrics.operator import OperatorMetrics
from finetune_operator.reconcile.common import Context


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log pipelines (Loki, Cloud Logging) index without parsing rules."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("namespace", "job"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        k8s = getattr(record, "k8s_ref", None)
        if isinstance(k8s, dict):
            line["object"] = {key: k8s.get(key) for key in ("namespace", "name", "kind") if k8s.get(key)}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one "succeeded" line per watch event otherwise


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas before any thread starts; False where there is no glibc (nothing to do).

    glibc gives busy threads their own arenas (up to 8 per core). The operator's handler threads each parse and
    drop many kilobyte-sized JSON bodies; spread over a dozen arenas the freed space is fragmented and never returns
    to the OS, which at 2,000 jobs was a good part of the operator's peak RSS. Two arenas cost no measurable speed
    here (the handlers wait on the API server, not on malloc). MALLOC_ARENA_MAX in the environment still wins.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def run_operator(config: OperatorConfig) -> int:
    limit_malloc_arenas()
    setup_logging(config.log_format)
    faulthandler.enable()  # a fatal signal (SIGSEGV, SIGABRT) prints every thread's Python stack to stderr first
    import finetune_operator.handlers  # noqa: F401 - registers the handlers with Kopf

    metrics = OperatorMetrics()
    metrics.serve(config.metrics_host, config.metrics_port)
    kube = Kube(api_client())
    candidates = backends.CHILD_CRDS if config.backend == "auto" else ()
    backend = backends.choose(config.backend, kube.installed_crds(candidates))
    memo = kopf.Memo(context=Context(kube=kube, config=config, metrics=metrics, backend=backend))
    logging.getLogger("finetune_operator").info(
        "starting: %s, trainer image %s, new jobs run as %s (--backend %s)",
        "cluster-wide" if config.clusterwide else ",".join(config.namespaces),
        config.trainer_image,
        backend.kind,
        config.backend,
    )
    kopf.run(
        clusterwide=config.clusterwide,
        namespaces=config.namespaces,
        standalone=config.peering is None,
        peering_name=config.peering,
        liveness_endpoint=config.liveness_endpoint,
        memo=memo,
    )
    exit_without_finalizing(0)
    return 0  # not reached


def exit_without_finalizing(code: int) -> None:
    """End the process once Kopf has stopped, without the interpreter's finalization.

    Kopf's cleanup has run by now (loops cancelled, watches closed); what finalization would add is tearing down
    modules under threads that may still be alive — the metrics server's daemon threads, a handler thread finishing
    a request — which is where a Python process dies with SIGABRT at exit ("Fatal Python error … at interpreter
    shutdown, possibly due to daemon threads"). Logs and stdio are flushed first; nothing else is pending."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
