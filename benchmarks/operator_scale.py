"""Operator at scale: N FineTuneJobs applied at once on 64 fake nodes x 8 GPUs, against the API server's floor.

What is measured, per N (default 500 and 2,000), each run on a FRESH control plane (tests/cluster: real etcd,
kube-apiserver, scheduler, controller-manager, training-operator v1.9.2, kwok playing 64 kubelets):

- operator run: `finetune operator` (the real console script, `OperatorProcess`, early stopping pointed at a dead
  loopback Prometheus by `no_pod_scraping()`, so no fake 10.244.x pod IP is ever contacted) reconciles N
  FineTuneJobs created from this script as fast as a thread pool of the kubernetes client allows (t0 = start of
  the first create). Watches in this process record when each PyTorchJob first exists (t - t0: p50/p95/max),
  when each pod is bound (spec.nodeName), when each FineTuneJob reaches Running. The operator's own reaction
  time per job (its FineTuneJob seen on the watch -> its PyTorchJob seen) separates the operator from the API
  server's pace in accepting the FineTuneJobs themselves (a CRD with CEL rules, written while the operator
  works). Then every pod is ended with exit code 0 (kwok Stage `pod-exit-on-demand`), and for each job the time
  from its pod's Succeeded to its
  FineTuneJob's status.phase Succeeded is recorded. The operator's own Python process (the console script is a
  Python script, so Popen's pid is the interpreter) is sampled every 0.5 s for VmRSS; its CPU-seconds are
  utime+stime from /proc/<pid>/stat at the end.
- floor (the target's reference): on another fresh control plane, with no operator, the same client does the
  least any operator must cause per job: it creates the FineTuneJob, then its PyTorchJob (rendered by
  `finetune_operator.children.pytorchjob` exactly as the operator renders it: applied-spec annotation and the
  ownerReference to the FineTuneJob just created). t0 until each PyTorchJob exists is what the API server (plus
  this script's client) can do at best for the same objects.
- bare floor (the earlier reference, kept as a second column): the same N PyTorchJobs only, no FineTuneJobs (no
  ownerReference), on a third fresh control plane. No operator can reach it: it skips the FineTuneJob creates.
  The training-operator, scheduler and kwok do the same work behind every run (one pod per job), so the
  difference is the operator in between.

Why fair: same cluster build, same node count, same fresh etcd, same client, same concurrency, same watches in
the same process, same objects. Targets: operator p95 create latency <= 2x the floor's p95; operator peak RSS
<= 300 MB at 2,000 jobs; no ERROR line in the operator's log.

GPU capacity is 64 x 8 = 512: with --gpus-per-job auto, N <= 512 jobs take 1 GPU each (all fit), larger N are
CPU-only (gpusPerNode 0) so every pod can bind (110 pods per node). The value used is printed and recorded.

    flock /tmp/finetune-bench.lock .venv/bin/python benchmarks/operator_scale.py --jobs 500 2000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client, config  # noqa: E402
from kubernetes.watch.watch import iter_resp_lines  # noqa: E402

from benchmarks.common import RESULTS, format_table, summary, write_results  # noqa: E402
from finetune_contract import names  # noqa: E402
from finetune_operator.api import GROUP, PLURAL, VERSION  # noqa: E402
from finetune_operator.api.validation import validate_manifest  # noqa: E402
from finetune_operator.children.pytorchjob import child_name, render  # noqa: E402
from finetune_operator.kube import owner_reference  # noqa: E402
from finetune_operator.reconcile.child import APPLIED_SPEC, applied_spec  # noqa: E402
from tests.cluster.controlplane import GPU_RESOURCE, Cluster, gpu_node_manifest  # noqa: E402
from tests.cluster.operator_process import TRAINER_IMAGE, OperatorProcess, apply_crd  # noqa: E402
from tests.cluster.pytorchjobs import EXIT_CODE_ANNOTATION  # noqa: E402
from tests.manifests import minimal_job  # noqa: E402

NODES = 64
GPUS_PER_NODE = 8
NAMESPACE = "scale"
RSS_TARGET_MB = 300.0
RSS_TARGET_AT_JOBS = 2000
CREATE_RATIO_TARGET = 2.0
PYTORCHJOBS = (names.PYTORCHJOB_GROUP, names.PYTORCHJOB_VERSION, NAMESPACE, names.PYTORCHJOB_PLURAL)
FINETUNEJOBS = (GROUP, VERSION, NAMESPACE, PLURAL)
Manifest = dict[str, Any]


# -- the cluster --------------------------------------------------------------------------------------------


def start_cluster(state_dir: Path) -> Cluster:
    """Control plane + NODES kwok nodes (one `kubectl apply` of a List) + the FineTuneJob CRD + the namespace."""
    cluster = Cluster(state_dir=state_dir)
    cluster.start()
    try:
        items = [gpu_node_manifest(f"gpu-node-{index}", GPUS_PER_NODE) for index in range(NODES)]
        nodes = {"apiVersion": "v1", "kind": "List", "items": items}
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(nodes))
        wait_until(lambda: ready_nodes(cluster) == NODES, 120, f"{NODES} Ready nodes")
        apply_crd(cluster)
        cluster.kubectl("create", "namespace", NAMESPACE)
        wait_until(
            lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", NAMESPACE, check=False).returncode == 0,
            60,
            "the namespace's default ServiceAccount",
        )
    except BaseException:
        cluster.stop()
        raise
    return cluster


def ready_nodes(cluster: Cluster) -> int:
    path = 'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'
    return cluster.kubectl("get", "nodes", "-o", path, check=False).stdout.split().count("True")


def wait_until(probe: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> float:
    """Poll until `probe` is true; return the time.time() it became true; raise TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.time()


def api_client(cluster: Cluster, pool: int) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = pool
    return client.ApiClient(configuration)


# -- watching: first time each object is seen in a given state -----------------------------------------------


@dataclass
class Seen:
    """name -> time.time() of the first event in which `predicate` held."""

    predicate: Callable[[Manifest], bool]
    times: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def offer(self, obj: Manifest, now: float) -> None:
        name = obj["metadata"]["name"]
        if name not in self.times and self.predicate(obj):
            with self.lock:
                self.times.setdefault(name, now)

    def count(self) -> int:
        return len(self.times)


Lister = Callable[..., Any]
"""A generated list call (CoreV1Api.list_namespaced_pod, or CustomObjectsApi's with group/version/plural bound)."""


class RawWatch(threading.Thread):
    """A watch on one collection, parsing each event line with json (not the client's slow model classes)."""

    def __init__(self, name: str, lister: Lister, recorders: Sequence[Seen]) -> None:
        super().__init__(name=f"watch {name}", daemon=True)
        self.lister, self.recorders = lister, recorders
        self.stop_flag = threading.Event()
        self.established = threading.Event()
        self.resource_version = ""
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self._stream()
            except Exception as error:  # reconnect from the last resourceVersion seen
                self.errors.append(repr(error))
            self.stop_flag.wait(0.2)

    def _stream(self) -> None:
        options: dict[str, Any] = {"watch": True, "timeout_seconds": 3600, "_preload_content": False}
        if self.resource_version:
            options["resource_version"] = self.resource_version
        response = self.lister(**options)
        self.established.set()
        try:
            for line in iter_resp_lines(response):
                now = time.time()
                event = json.loads(line)
                obj = event.get("object") or {}
                self.resource_version = obj.get("metadata", {}).get("resourceVersion", self.resource_version)
                if event.get("type") in ("ADDED", "MODIFIED"):
                    for recorder in self.recorders:
                        recorder.offer(obj, now)
                if self.stop_flag.is_set():
                    return
        finally:
            response.release_conn()

    def stop(self) -> None:
        self.stop_flag.set()


@dataclass
class Watches:
    """Every timestamp the benchmark needs, from three watches started before t0."""

    pytorchjobs: Seen = field(default_factory=lambda: Seen(lambda obj: True))
    finetunejobs: Seen = field(default_factory=lambda: Seen(lambda obj: True))
    child_succeeded: Seen = field(default_factory=lambda: Seen(lambda child: condition_true(child, "Succeeded")))
    bound: Seen = field(default_factory=lambda: Seen(lambda pod: bool(pod.get("spec", {}).get("nodeName"))))
    pod_succeeded: Seen = field(default_factory=lambda: Seen(lambda pod: phase(pod) == "Succeeded"))
    job_running: Seen = field(default_factory=lambda: Seen(lambda job: phase(job) == "Running"))
    job_succeeded: Seen = field(default_factory=lambda: Seen(lambda job: phase(job) == "Succeeded"))
    threads: list[RawWatch] = field(default_factory=list)

    def start(self, api: client.ApiClient, with_finetunejobs: bool) -> None:
        custom = client.CustomObjectsApi(api)
        self.threads = [
            RawWatch(
                names.PYTORCHJOB_PLURAL,
                partial(custom.list_namespaced_custom_object, *PYTORCHJOBS),
                [self.pytorchjobs, self.child_succeeded],
            ),
            RawWatch(
                "pods",
                partial(client.CoreV1Api(api).list_namespaced_pod, NAMESPACE),
                [self.bound, self.pod_succeeded],
            ),
        ]
        if with_finetunejobs:
            lister = partial(custom.list_namespaced_custom_object, *FINETUNEJOBS)
            recorders = [self.finetunejobs, self.job_running, self.job_succeeded]
            self.threads.append(RawWatch("finetunejobs", lister, recorders))
        for thread in self.threads:
            thread.start()
        for thread in self.threads:
            if not thread.established.wait(30):
                raise TimeoutError(f"{thread.name} not established")

    def stop(self) -> None:
        for thread in self.threads:
            thread.stop()


def condition_true(obj: Manifest, kind: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def phase(obj: Manifest) -> str | None:
    value = (obj.get("status") or {}).get("phase")
    return str(value) if value is not None else None


# -- the operator process: RSS and CPU from /proc ------------------------------------------------------------


class ProcessSampler(threading.Thread):
    """Peak VmRSS of one pid, sampled every `interval` s until stopped."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(name="rss sampler", daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            with contextlib.suppress(OSError, ValueError):
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            self.stop_flag.wait(self.interval)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process itself (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


# -- the objects ---------------------------------------------------------------------------------------------


def finetunejob(index: int, gpus: int) -> Manifest:
    manifest = minimal_job(
        f"scale-{index:05d}", resources={"nodes": 1, "gpusPerNode": gpus, "cpu": "1", "memory": "1Gi"}
    )
    manifest["metadata"]["namespace"] = NAMESPACE
    return manifest


def bare_pytorchjob(job: Manifest) -> Manifest:
    """What the operator creates for `job` (render + the applied-spec annotation), minus the ownerReference."""
    model = validate_manifest(job)
    rendered = render(model, trainer_image=TRAINER_IMAGE)
    annotation = json.dumps(applied_spec(model), sort_keys=True, separators=(",", ":"))
    rendered["metadata"] = {**rendered["metadata"], "annotations": {APPLIED_SPEC: annotation}}
    return rendered


def create_all(
    api: client.ApiClient, kind: tuple[str, str, str, str], bodies: Sequence[Manifest], threads: int
) -> float:
    """Create every body with a thread pool; return the time the first create started (t0)."""
    custom = client.CustomObjectsApi(api)

    def create(body: Manifest) -> None:
        custom.create_namespaced_custom_object(*kind, body)

    with ThreadPoolExecutor(threads) as pool:
        t0 = time.time()
        list(pool.map(create, bodies))
    return t0


def end_all_pods(api: client.ApiClient, pods: Sequence[str], threads: int) -> None:
    core = client.CoreV1Api(api)
    patch = {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "0"}}}

    def end(pod: str) -> None:
        response = core.patch_namespaced_pod(pod, NAMESPACE, patch, _preload_content=False)
        response.read()  # the raw body: a V1Pod model per patch would cost this process more CPU than the server
        response.release_conn()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(end, pods))


def master_pod(job_name: str) -> str:
    return f"{child_name(job_name)}-master-0"


# -- one run ---------------------------------------------------------------------------------------------------


def latencies(times: dict[str, float], t0: float) -> list[float]:
    return sorted(round(t - t0, 4) for t in times.values())


def operator_run(state_dir: Path, jobs: int, gpus: int, args: argparse.Namespace) -> dict[str, Any]:
    cluster = start_cluster(state_dir / "cluster")
    operator = OperatorProcess(cluster, state_dir)
    watches = Watches()
    sampler: ProcessSampler | None = None
    try:
        api = api_client(cluster, args.threads + 8)
        watches.start(api, with_finetunejobs=True)
        operator.start()
        assert Path(cmdline(operator.pid)[0]).name.startswith("python"), cmdline(operator.pid)
        sampler = ProcessSampler(operator.pid)
        sampler.start()
        idle_rss_kib, cpu_at_start = rss_kib(operator.pid), cpu_seconds(operator.pid)
        bodies = [finetunejob(i, gpus) for i in range(jobs)]
        t0 = create_all(api, FINETUNEJOBS, bodies, args.threads)
        applied = time.time()
        timeout = args.timeout
        all_children = wait_until(lambda: watches.pytorchjobs.count() >= jobs, timeout, f"{jobs} PyTorchJobs")
        all_bound = wait_until(lambda: watches.bound.count() >= jobs, timeout, f"{jobs} bound pods")
        all_running = wait_until(lambda: watches.job_running.count() >= jobs, timeout, f"{jobs} Running jobs")
        cpu_created = cpu_seconds(operator.pid)
        names = [body["metadata"]["name"] for body in bodies]
        end_all_pods(api, [master_pod(name) for name in names], args.threads)
        wait_until(lambda: watches.job_succeeded.count() >= jobs, timeout, f"{jobs} Succeeded FineTuneJobs")
        cpu_end = cpu_seconds(operator.pid)
        sampler.stop_flag.set()
        sampler.join()
        pods, children, done = watches.pod_succeeded.times, watches.child_succeeded.times, watches.job_succeeded.times
        pod_to_job = [done[name] - pods[master_pod(name)] for name in names if master_pod(name) in pods]
        child_to_job = [done[name] - children[child_name(name)] for name in names if child_name(name) in children]
        jobs_seen, children_seen = watches.finetunejobs.times, watches.pytorchjobs.times
        reaction = [children_seen[child_name(n)] - jobs_seen[n] for n in names if child_name(n) in children_seen]
        return {
            "jobs": jobs,
            "gpus_per_job": gpus,
            "apply_s": round(applied - t0, 3),
            "create_latency_s": latencies(watches.pytorchjobs.times, t0),
            "finetunejob_seen_latency_s": latencies(watches.finetunejobs.times, t0),
            "reaction_latency_s": sorted(round(value, 4) for value in reaction),
            "all_pytorchjobs_s": round(all_children - t0, 3),
            "all_pods_bound_s": round(all_bound - t0, 3),
            "all_finetunejobs_running_s": round(all_running - t0, 3),
            "succeeded_mirror_latency_s": sorted(round(value, 4) for value in pod_to_job),
            "succeeded_child_to_job_latency_s": sorted(round(value, 4) for value in child_to_job),
            "operator_idle_rss_mb": round(idle_rss_kib / 1024, 1),
            "operator_peak_rss_mb": round(max(sampler.peak_kib, idle_rss_kib) / 1024, 1),
            "operator_cpu_s_startup": round(cpu_at_start, 2),
            "operator_cpu_s_until_running": round(cpu_created - cpu_at_start, 2),
            "operator_cpu_s_total": round(cpu_end, 2),
            "operator_errors": count_errors(operator),
        }
    finally:
        if sampler is not None:
            sampler.stop_flag.set()
        watches.stop()
        try:
            operator.stop()
        finally:
            cluster.stop()


def count_errors(operator: OperatorProcess) -> int:
    with contextlib.suppress(OSError):
        return sum('"level": "ERROR"' in line for line in operator.stderr_log.read_text().splitlines())
    return -1


def create_pairs(api: client.ApiClient, jobs: Sequence[Manifest], threads: int) -> float:
    """Per job, a FineTuneJob and then its PyTorchJob owned by it: what any operator must cause. Returns t0."""
    custom = client.CustomObjectsApi(api)
    children = [bare_pytorchjob(job) for job in jobs]

    def create(pair: tuple[Manifest, Manifest]) -> None:
        job, child = pair
        created = custom.create_namespaced_custom_object(*FINETUNEJOBS, job)
        owned = {**child, "metadata": {**child["metadata"], "ownerReferences": [owner_reference(created)]}}
        custom.create_namespaced_custom_object(*PYTORCHJOBS, owned)

    with ThreadPoolExecutor(threads) as pool:
        t0 = time.time()
        list(pool.map(create, zip(jobs, children, strict=True)))
    return t0


def floor_run(state_dir: Path, jobs: int, gpus: int, args: argparse.Namespace, bare: bool) -> dict[str, Any]:
    """The floor (FineTuneJob + PyTorchJob per job, one client) or, with `bare`, PyTorchJobs alone."""
    cluster = start_cluster(state_dir / "cluster")
    watches = Watches()
    try:
        api = api_client(cluster, args.threads + 8)
        watches.start(api, with_finetunejobs=False)
        finetunejobs = [finetunejob(i, gpus) for i in range(jobs)]
        if bare:
            t0 = create_all(api, PYTORCHJOBS, [bare_pytorchjob(job) for job in finetunejobs], args.threads)
        else:
            t0 = create_pairs(api, finetunejobs, args.threads)
        applied = time.time()
        all_children = wait_until(lambda: watches.pytorchjobs.count() >= jobs, args.timeout, f"{jobs} PyTorchJobs")
        out = {
            "jobs": jobs,
            "gpus_per_job": gpus,
            "apply_s": round(applied - t0, 3),
            "create_latency_s": latencies(watches.pytorchjobs.times, t0),
            "all_pytorchjobs_s": round(all_children - t0, 3),
            "all_pods_bound_s": None,  # JSON null: not waited for
        }
        if not bare and jobs <= args.floor_bound_max_jobs:  # binding is the training-operator's pace, not ours
            all_bound = wait_until(lambda: watches.bound.count() >= jobs, args.timeout, f"{jobs} bound pods")
            out["all_pods_bound_s"] = round(all_bound - t0, 3)
        return out
    finally:
        watches.stop()
        cluster.stop()


def gpus_for(jobs: int, choice: str) -> int:
    if choice != "auto":
        return int(choice)
    return 1 if jobs <= NODES * GPUS_PER_NODE else 0


def check_pods_fit(jobs: int, gpus: int) -> None:
    if jobs * gpus > NODES * GPUS_PER_NODE or jobs > NODES * 110:
        raise SystemExit(f"{jobs} jobs x {gpus} {GPU_RESOURCE} do not fit on {NODES} x {GPUS_PER_NODE} GPUs")


# -- report -----------------------------------------------------------------------------------------------------


def p95_ratio(run: dict[str, Any], reference: dict[str, Any]) -> float:
    run_p95, reference_p95 = summary(run["create_latency_s"])["p95"], summary(reference["create_latency_s"])["p95"]
    return run_p95 / reference_p95 if reference_p95 > 0 else float("inf")


def verdicts(operator: dict[str, Any], floor: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    ratio = p95_ratio(operator, floor)
    out: dict[str, Any] = {
        "create_p95_ratio": round(ratio, 3),
        "create_p95_ratio_target": CREATE_RATIO_TARGET,
        "create_target_met": ratio <= CREATE_RATIO_TARGET,
        "create_p95_ratio_vs_bare_floor": round(p95_ratio(operator, bare), 3),
        "all_pods_bound_ratio": bound_ratio(operator, floor),
        "operator_error_lines": operator["operator_errors"],
    }
    if operator["jobs"] >= RSS_TARGET_AT_JOBS:
        out["rss_target_mb"] = RSS_TARGET_MB
        out["rss_target_met"] = operator["operator_peak_rss_mb"] <= RSS_TARGET_MB
    return out


def bound_ratio(operator: dict[str, Any], floor: dict[str, Any]) -> float | None:
    if floor["all_pods_bound_s"] is None:
        return None
    return round(operator["all_pods_bound_s"] / floor["all_pods_bound_s"], 3)


def table_rows(results: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for result in results:
        runs = (("bare floor", result["floor_bare"]), ("floor", result["floor"]), ("operator", result["operator"]))
        for label, run in runs:
            created = summary(run["create_latency_s"])
            mirror = summary(run.get("succeeded_mirror_latency_s", []))
            own = summary(run.get("succeeded_child_to_job_latency_s", []))
            reaction = summary(run.get("reaction_latency_s", []))
            rows.append(
                [
                    f"{run['jobs']} jobs, {label}",
                    run["gpus_per_job"],
                    created["p50"],
                    created["p95"],
                    created["max"],
                    reaction["p95"],
                    math.nan if run["all_pods_bound_s"] is None else run["all_pods_bound_s"],
                    mirror["p50"],
                    mirror["p95"],
                    mirror["max"],
                    own["p95"],
                    run.get("operator_peak_rss_mb", float("nan")),
                    run.get("operator_cpu_s_total", float("nan")),
                ]
            )
    return rows


HEADERS = [
    "run",
    "gpu/job",
    "create p50 s",
    "create p95 s",
    "create max s",
    "FTJ>PTJ p95 s",
    "all bound s",
    "pod>FTJ Succ p50 s",
    "p95 s",
    "max s",
    "PTJ>FTJ Succ p95 s",
    "peak RSS MB",
    "CPU s",
]


def print_report(results: Sequence[dict[str, Any]]) -> None:
    print(format_table(HEADERS, table_rows(results)))
    for result in results:
        verdict = result["verdict"]
        line = (
            f"{result['jobs']} jobs: create p95 operator/floor = {verdict['create_p95_ratio']:.2f} "
            f"(target <= {CREATE_RATIO_TARGET:g}: {'met' if verdict['create_target_met'] else 'NOT met'}); "
            f"operator/bare floor = {verdict['create_p95_ratio_vs_bare_floor']:.2f}; "
            f"operator ERROR lines {verdict['operator_error_lines']}"
        )
        if verdict["all_pods_bound_ratio"] is not None:
            line += f"; all-pods-bound operator/floor = {verdict['all_pods_bound_ratio']:.2f}"
        if "rss_target_met" in verdict:
            rss = result["operator"]["operator_peak_rss_mb"]
            line += f"; peak RSS {rss:.0f} MB (target <= {RSS_TARGET_MB:.0f}: "
            line += f"{'met' if verdict['rss_target_met'] else 'NOT met'})"
        print(line)


def summaries(run: dict[str, Any]) -> dict[str, Any]:
    out = dict(run)
    out["create_latency_summary_s"] = summary(run["create_latency_s"])
    for key in (
        "succeeded_mirror_latency",
        "succeeded_child_to_job_latency",
        "finetunejob_seen_latency",
        "reaction_latency",
    ):
        if f"{key}_s" in run:
            out[f"{key}_summary_s"] = summary(run[f"{key}_s"])
    return out


# -- main -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every `finally` stops the operator and the cluster."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[500, 2000], help="N values (default 500 2000)")
    parser.add_argument(
        "--gpus-per-job", default="auto", help="gpusPerNode of each job; auto: 1 if N fits 512 GPUs, else 0"
    )
    parser.add_argument("--threads", type=int, default=16, help="create/patch concurrency (both runs)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per wait before giving up")
    parser.add_argument("--out", type=Path, default=RESULTS / "operator_scale.json")
    parser.add_argument(
        "--floor-bound-max-jobs",
        type=int,
        default=500,
        help="the floor also waits for every pod to be bound up to this N (binding 2,000 pods takes minutes)",
    )
    parser.add_argument("--operator-only", action="store_true", help="skip the floor (development; no ratios)")
    parser.add_argument("--keep", type=Path, help="keep state and logs (cluster, operator) in this folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.time()
    results: list[dict[str, Any]] = []
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp_name:
        tmp = args.keep or Path(tmp_name)
        for jobs in args.jobs:
            gpus = gpus_for(jobs, args.gpus_per_job)
            check_pods_fit(jobs, gpus)
            if args.operator_only:
                operator = operator_run(tmp / f"operator-{jobs}", jobs, gpus, args)
                print({key: value for key, value in summaries(operator).items() if not isinstance(value, list)})
                continue
            print(f"{jobs} jobs, gpusPerNode {gpus}: bare floor run...", flush=True)
            bare = floor_run(tmp / f"floor-bare-{jobs}", jobs, gpus, args, bare=True)
            print(f"{jobs} jobs, gpusPerNode {gpus}: floor run...", flush=True)
            floor = floor_run(tmp / f"floor-{jobs}", jobs, gpus, args, bare=False)
            print(f"{jobs} jobs, gpusPerNode {gpus}: operator run...", flush=True)
            operator = operator_run(tmp / f"operator-{jobs}", jobs, gpus, args)
            runs = {"floor_bare": summaries(bare), "floor": summaries(floor), "operator": summaries(operator)}
            results.append({"jobs": jobs, **runs})
            results[-1]["verdict"] = verdicts(operator, floor, bare)
    if not results:
        return
    print_report(results)
    runtime = time.time() - started
    print(f"total runtime {runtime:.0f} s")
    settings = {
        "nodes": NODES,
        "gpus_per_node": GPUS_PER_NODE,
        "jobs": args.jobs,
        "gpus_per_job": {str(r["jobs"]): r["operator"]["gpus_per_job"] for r in results},
        "threads": args.threads,
        "fresh_cluster_per_run": True,
        "early_stopping": "spec default (enabled), Prometheus URL a dead 127.0.0.1 port",
    }
    write_results(args.out, {"settings": settings, "runtime_s": round(runtime, 1), "results": results})


if __name__ == "__main__":
    main()
