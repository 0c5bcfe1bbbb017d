"""Invalid FineTuneJobs and what must be said about them: the field path and the rule.

One table serves the unit tests (our validation, the CLI) and the cluster tests (the API server with the
generated CRD), so both layers are held to the same cases, at the same field path. `server` is False where
the API server words the rule differently and says so elsewhere (unknown fields are pruned, not refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune_operator.api.quantity import POSITIVE_RULE as QUANTITY_RULE
from tests.manifests import SHARED_OUTPUT, minimal_job


@dataclass(frozen=True)
class Case:
    id: str
    manifest: dict[str, Any]
    path: str
    message: str
    server_message: str = ""
    server: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _with(path: str, value: Any, **spec: Any) -> dict[str, Any]:
    """minimal_job with one nested spec field set; path is dotted camelCase under spec."""
    job = minimal_job(**spec)
    node = job["spec"]
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return job


PHASES = [{"name": "a", "datasets": [{"path": "/a"}]}, {"name": "b", "datasets": [{"path": "/b"}]}]

CASES = [
    Case("negative-lr", _with("training.learningRate", -0.1), "spec.training.learningRate", "greater than 0"),
    Case("zero-lr", _with("training.learningRate", 0), "spec.training.learningRate", "greater than 0"),
    Case("lr-string", _with("training.learningRate", "fast"), "spec.training.learningRate", "valid number"),
    Case("zero-nodes", _with("resources.nodes", 0), "spec.resources.nodes", "greater than or equal to 1"),
    Case(
        "negative-gpus", _with("resources.gpusPerNode", -1), "spec.resources.gpusPerNode", "greater than or equal to 0"
    ),
    Case("gpus-float", _with("resources.gpusPerNode", 1.5), "spec.resources.gpusPerNode", "valid integer"),
    Case(
        "zero-batch",
        _with("training.effectiveBatchSize", 0),
        "spec.training.effectiveBatchSize",
        "greater than or equal to 1",
    ),
    Case(
        "bad-scheduler",
        _with("training.lrScheduler", "step"),
        "spec.training.lrScheduler",
        "'constant', 'cosine' or 'linear'",
    ),
    Case("bad-strategy", _with("training.strategy", "mixed"), "spec.training.strategy", "'stacked' or 'phased'"),
    Case(
        "bad-format",
        _with("data.datasets", [{"path": "/d", "format": "csv"}]),
        "spec.data.datasets[0].format",
        "'messages', 'alpaca' or 'sharegpt'",
    ),
    Case("bad-dtype", _with("model.dtype", "int8"), "spec.model.dtype", "'bfloat16', 'float16' or 'float32'"),
    Case(
        "unknown-field",
        _with("training.learningrate", 1e-5),
        "spec.training.learningrate",
        "unknown field",
        server=False,
    ),
    Case(
        "snake-case-field",
        _with("training.learning_rate", 1e-5),
        "spec.training.learning_rate",
        "unknown field",
        server=False,
    ),
    Case(
        "model-two-sources",
        _with("model.path", "/models/x"),
        "spec.model",
        "exactly one of model.name, model.path and model.config",
    ),
    Case(
        "model-no-source",
        minimal_job(model={"dtype": "float32"}),
        "spec.model",
        "exactly one of model.name, model.path and model.config",
    ),
    Case(
        "config-without-tokenizer",
        minimal_job(model={"config": {"model_type": "llama"}}),
        "spec.model.tokenizer",
        "needs model.tokenizer",
    ),
    Case(
        "dataset-two-sources",
        _with("data.datasets", [{"path": "/d", "name": "org/set"}]),
        "spec.data.datasets[0]",
        "exactly one of dataset path and name",
    ),
    Case(
        "phased-one-phase",
        _with("training", {"strategy": "phased", "phases": PHASES[:1]}),
        "spec.training.phases",
        "at least 2 phases",
    ),
    Case("phased-no-phases", _with("training.strategy", "phased"), "spec.training.phases", "at least 2 phases"),
    Case(
        "stacked-with-phases",
        _with("training.phases", PHASES),
        "spec.training.phases",
        "only allowed with strategy phased",
    ),
    Case(
        "warmup-not-below-max-steps",
        _with("training", {"warmupSteps": 10, "maxSteps": 10}),
        "spec.training.warmupSteps",
        "warmupSteps must be smaller than maxSteps",
    ),
    Case("no-datasets", minimal_job(data={"datasets": []}), "spec.data", "data.datasets needs at least one dataset"),
    Case(
        "seq-len-over-token-budget",
        _with("training.maxTokensPerGpu", 1024, data={"datasets": [{"path": "/d"}], "maxSeqLen": 4096}),
        "spec.training",
        "maxTokensPerGpu must be at least data.maxSeqLen",
    ),
    Case("eval-fraction-one", _with("data.evalFraction", 1.0), "spec.data.evalFraction", "less than 1"),
    Case("betas-three", _with("training.adamBetas", [0.9, 0.95, 0.99]), "spec.training.adamBetas", "at most 2 items"),
    Case("beta-one", _with("training.adamBetas", [0.9, 1.0]), "spec.training.adamBetas[1]", "less than 1"),
    Case(
        "negative-clip",
        _with("training.gradientClipping", -1.0),
        "spec.training.gradientClipping",
        "greater than or equal to 0",
    ),
    Case(
        "divergence-factor-one",
        _with("earlyStopping.divergenceFactor", 1.0),
        "spec.earlyStopping.divergenceFactor",
        "greater than 1",
    ),
    Case(
        "window-over-check-after",
        _with("earlyStopping", {"checkAfterSteps": 5, "windowSteps": 10}),
        "spec.earlyStopping.windowSteps",
        "windowSteps must not exceed checkAfterSteps",
    ),
    Case("metrics-port-privileged", _with("metrics.port", 80), "spec.metrics.port", "greater than or equal to 1024"),
    *[
        Case(f"quantity-{label}", _with(field, value), f"spec.{field}", QUANTITY_RULE)
        for label, field, value in [
            ("word", "resources.memory", "lots"),
            ("dots", "resources.memory", "..."),
            ("double-suffix", "resources.memory", "1GiGi"),
            ("caret", "resources.memory", "10^30"),
            ("lowercase-binary", "resources.memory", "1gi"),
            ("bare-exponent", "resources.memory", "1e"),
            ("negative-cpu", "resources.cpu", "-2"),
            ("zero-cpu", "resources.cpu", "0"),
            ("zero-int-memory", "resources.memory", 0),
            ("negative-int-cpu", "resources.cpu", -1),
            ("negative-shm", "resources.sharedMemorySize", "-1Gi"),
            ("zero-shm", "resources.sharedMemorySize", "0Mi"),
        ]
    ],
    Case("lr-numeric-string", _with("training.learningRate", "1e-5"), "spec.training.learningRate", "valid number"),
    Case("nodes-numeric-string", _with("resources.nodes", "2"), "spec.resources.nodes", "valid integer"),
    Case("suspend-string-true", _with("suspend", "true"), "spec.suspend", "valid boolean"),
    Case(
        "reserved-env",
        _with("resources.env", [{"name": "FINETUNE_RECIPE", "value": "{}"}]),
        "spec.resources.env",
        "reserved for the operator",
    ),
    Case(
        "duplicate-volumes",
        _with(
            "resources.volumes",
            [{"name": "a", "claimName": "x", "mountPath": "/a"}, {"name": "a", "claimName": "y", "mountPath": "/b"}],
        ),
        "spec.resources.volumes",
        "volume names must be unique",
    ),
    Case(
        "relative-mount",
        _with("resources.volumes", [{"name": "a", "claimName": "x", "mountPath": "data"}]),
        "spec.resources.volumes[0].mountPath",
        "match pattern",
    ),
    Case(
        "bad-toleration-operator",
        _with("resources.tolerations", [{"key": "k", "operator": "In"}]),
        "spec.resources.tolerations[0].operator",
        "'Exists' or 'Equal'",
    ),
    Case("queue-name-uppercase", _with("queueName", "GPU"), "spec.queueName", "match pattern"),
    Case(
        "prometheus-url-not-http",
        _with("metrics.prometheusUrl", "prom:9090"),
        "spec.metrics.prometheusUrl",
        "match pattern",
    ),
    Case("suspend-string", _with("suspend", "yes please"), "spec.suspend", "valid boolean"),
    Case(
        "env-value-and-secret",
        _with(
            "resources.env",
            [{"name": "HF_TOKEN", "value": "x", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        ),
        "spec.resources.env[0].valueFrom",
        "set value or valueFrom, not both",
    ),
    Case(
        "env-secret-without-key",
        _with("resources.env", [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf"}}}]),
        "spec.resources.env[0].valueFrom.secretKeyRef.key",
        "required field is missing",
        server_message="Required value",
    ),
    Case("run-as-root", _with("resources.security.runAsUser", 0), "spec.resources.security.runAsUser", "1"),
    Case(
        "multi-node-output-on-local-disk",
        _with("resources.volumes", [], resources={"nodes": 2}),
        "spec.resources.volumes",
        "storage every node shares",
    ),
    Case(
        "multi-node-output-on-a-read-only-claim",
        _with("resources.volumes", [{**SHARED_OUTPUT, "readOnly": True}], resources={"nodes": 2}),
        "spec.resources.volumes",
        "storage every node shares",
    ),
    Case(
        "multi-node-output-beside-the-claim",  # /out is not above /output
        _with("resources.volumes", [{**SHARED_OUTPUT, "mountPath": "/out"}], resources={"nodes": 2}),
        "spec.resources.volumes",
        "storage every node shares",
    ),
    Case(
        "multi-node-cache-dir-on-local-disk",
        _with("data.cacheDir", "/scratch/cache", resources={"nodes": 3}),
        "spec.resources.volumes",
        "storage every node shares",
    ),
    Case(
        "security-profile-privileged",
        _with("resources.security.profile", "privileged"),
        "spec.resources.security.profile",
        "'restricted' or 'unconfined'",
    ),
]
