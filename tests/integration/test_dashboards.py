"""The Grafana dashboards (helm/finetune-operator/dashboards/*.json) against real parts.

Structure of the dashboard model; every PromQL expression parses (promtool, and the real Prometheus); every
expression returns data from a real Prometheus scraping a real trainer run (`python -m finetune_trainer`, tiny
model) and the operator's real exporter (`OperatorMetrics`); the chart renders the files unchanged into
ConfigMaps for the Grafana sidecar. No cluster needed.

The sweep dashboard's trial is the trainer run itself: the exporter is fed a FineTuneSweep status whose trial table
names the run's FineTuneJob, so the per-trial overlays (trainer series joined to the sweep through the operator's
info metric finetune_operator_sweep_trial) are checked against real curves.

Exempt from the non-empty check: the DCGM panel (no DCGM exporter here; it must show no data, not an error).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator.metrics.operator import OperatorMetrics
from tests.operator.metrics.test_source import start_prometheus
from tests.trainer.test_metrics import free_port
from tests.trainer.test_trainer import finish, launch, recipe

CHART = Path(__file__).resolve().parents[2] / "helm" / "finetune-operator"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
HELM = Path.home() / ".cache" / "finetune-operator" / "cluster" / "bin" / "helm"
JOB, NAMESPACE = "tiny-sft", "tests"  # the identity tests.trainer.test_trainer.run_env gives the trainer
SWEEP, OTHER_SWEEP = "lr-sweep", "other-sweep"  # JOB is trial 0 of SWEEP, pruned at rung PRUNED_AT
PRUNED_AT = 20
# Grafana's template variables, as Grafana would expand them for this test's Prometheus (1 s scrapes).
VARIABLES = {
    "${datasource}": "prometheus",
    "$__rate_interval": "10s",
    "$__interval": "1s",
    "$__range": "10m",
    "$namespace": NAMESPACE,
    "$finetunejob": JOB,
    "$sweep": SWEEP,
}
# Where each dashboard's query variables (other than the datasource) take their values from.
VARIABLE_SOURCES = {
    "finetune-fleet": {"namespace": "finetune_train_loss", "finetunejob": "finetune_train_loss"},
    "finetune-job": {"namespace": "finetune_train_loss", "finetunejob": "finetune_train_loss"},
    "finetune-sweep": {"namespace": "finetune_operator_sweep_trial", "sweep": "finetune_operator_sweep_trial"},
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' collapsed children included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every Prometheus annotation."""
    found = [
        (f"panel {panel['id']} {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    found += [
        (f"annotation {annotation['name']!r}", annotation["expr"])
        for annotation in dashboard["annotations"]["list"]
        if "expr" in annotation
    ]
    return found


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):  # $__rate_interval before $__range
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, f"unknown template variable left in {expr!r}"
    return expr


def all_queries() -> list[tuple[str, str]]:
    return [(f"{path.stem}: {where}", expr) for path in DASHBOARDS for where, expr in queries(load(path))]


# ----------------------------------------------------------------------------------------------- structure
def test_every_dashboard_exists() -> None:
    assert [path.name for path in DASHBOARDS] == ["finetune-fleet.json", "finetune-job.json", "finetune-sweep.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.stem)
def test_dashboard_model_structure(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == path.stem
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    sources = VARIABLE_SOURCES[path.stem]
    assert set(variables) == {"datasource", *sources}
    for name, metric in sources.items():
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["definition"].startswith(f"label_values({metric}")
        assert variables[name]["query"]["query"] == variables[name]["definition"]
        assert f"${name}" in VARIABLES, f"the live checks cannot expand ${name}"
    for panel in panels(dashboard):
        assert panel.get("targets"), f"panel {panel['id']} has no query"
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    for annotation in dashboard["annotations"]["list"]:
        assert annotation["datasource"]["uid"] == "${datasource}"


def log_scale(panel: dict[str, Any]) -> bool:
    return panel["fieldConfig"]["defaults"]["custom"].get("scaleDistribution", {}).get("type") == "log"


def test_job_dashboard_grad_norm_is_log_scale() -> None:
    job = load(CHART / "dashboards" / "finetune-job.json")
    (panel,) = [panel for panel in job["panels"] if "Gradient" in panel["title"]]
    assert log_scale(panel)
    assert "kubectl get ftj" in panel["description"]  # the verdict and every threshold are in the FineTuneJob
    thresholds = [target["expr"] for target in panel["targets"] if "finetune_operator_job_threshold" in target["expr"]]
    assert len(thresholds) == 1
    assert 'rule="maxGradNorm"' in thresholds[0]


SWEEP_DASHBOARD = CHART / "dashboards" / "finetune-sweep.json"
SWEEP_SELECTOR = 'finetune_operator_sweep_trial{namespace="$namespace", sweep="$sweep"}'
OVERLAID = {
    "Training loss of every trial": "finetune_train_loss",
    "Gradient norm of every trial (log scale)": "finetune_grad_norm",
    "Eval loss of every trial": "finetune_eval_loss",
}


def sweep_panel(title: str) -> dict[str, Any]:
    (panel,) = [panel for panel in panels(load(SWEEP_DASHBOARD)) if panel["title"] == title]
    return panel


def test_sweep_dashboard_overlays_every_trial_through_the_info_metric() -> None:
    """One curve per trial of the selected sweep: the trainer series (labels namespace, finetunejob) joined to the
    sweep by the operator's info metric, reduced first to one series per trial so that neither the trial's phase
    label (it changes) nor several operator replicas can break the many-to-one match."""
    dashboard = load(SWEEP_DASHBOARD)
    assert dashboard["uid"] == "finetune-sweep"
    assert dashboard["title"] == "finetune-operator / sweep"
    for title, metric in OVERLAID.items():
        panel = sweep_panel(title)
        assert panel["type"] == "timeseries"
        (target,) = panel["targets"]
        assert target["expr"] == (
            f'{metric}{{namespace="$namespace"}} * on(namespace, finetunejob) group_left(trial) '
            f"max by (namespace, finetunejob, trial) ({SWEEP_SELECTOR})"
        )
        assert target["legendFormat"] == "{{finetunejob}}"
        assert log_scale(panel) == (metric == "finetune_grad_norm")


def test_sweep_dashboard_trial_table_and_stats() -> None:
    table = sweep_panel("Trials")
    assert table["type"] == "table"
    assert all(target["instant"] and target["format"] == "table" for target in table["targets"])
    assert "max by (finetunejob, trial, phase)" in table["targets"][0]["expr"]
    assert table["transformations"][0]["id"] == "merge"  # one row per trial from the four instant queries
    stats = {panel["title"]: panel for panel in panels(load(SWEEP_DASHBOARD)) if panel["type"] == "stat"}
    assert set(stats) == {
        "Trials by phase",
        "Pruned trials",
        "GPU-hours saved by pruning",
        "Score vs objective (Spearman rho)",
    }
    rho = stats["Score vs objective (Spearman rho)"]
    assert rho["fieldConfig"]["defaults"]["thresholds"] == {
        "mode": "absolute",
        "steps": [{"color": "red", "value": None}, {"color": "green", "value": 0.3}],
    }
    assert "early score predict the final objective on this sweep's own runs" in rho["description"]
    assert "finetune_operator_sweep_score_objective_rho" in rho["targets"][0]["expr"]


def test_sweep_dashboard_marks_pruning_decisions() -> None:
    annotations = {annotation["name"]: annotation for annotation in load(SWEEP_DASHBOARD)["annotations"]["list"]}
    pruned = annotations["Pruned trials"]
    assert pruned["expr"] == (
        'max by (finetunejob, rung) (finetune_operator_sweep_trial_pruned{namespace="$namespace", sweep="$sweep"}) == 1'
    )
    assert pruned["textFormat"] == "pruned {{finetunejob}} at rung {{rung}}"


# ----------------------------------------------------------------------------------------------- parsing
def promtool_check(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` parses every rule's expr with Prometheus' own parser (2.42 has no `promql` command)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package prometheus (scripts/test.sh does)"
    rules = [{"record": f"dashboard:query_{index}:check", "expr": expr} for index, expr in enumerate(exprs)]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    found = all_queries()
    assert len(found) >= 20
    result = promtool_check([substitute(expr) for _, expr in found], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(found)} rules found" in result.stdout


def test_promtool_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    """The check above can fail: a missing parenthesis is a parse error."""
    result = promtool_check(["sum(rate(finetune_tokens_total[1m])"], tmp_path)
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


# ----------------------------------------------------------------------------------------------- live data
def query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    """Grafana's range query; a 400 (parse or execution error) fails the test with Prometheus' message."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1"})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        raise AssertionError(f"Prometheus rejected {expr!r}: {error.read().decode()}") from error
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for_data(url: str, expr: str, start: float, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = query_range(url, expr, start, time.time())
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never returned data for {expr!r}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, float, float]]:
    """A real Prometheus (1 s scrapes) over a finished real trainer run and a live operator exporter.

    The operator counter's `rule` child is created at 0 and incremented only after scrapes, as in a real stop,
    so increase() sees the stop.
    """
    tmp = tmp_path_factory.mktemp("dashboards")
    operator = OperatorMetrics()
    operator_port = free_port()
    operator.serve("127.0.0.1", operator_port)
    operator.record_phase(NAMESPACE, JOB, "Running")
    operator.record_thresholds(NAMESPACE, JOB, {"maxGradNorm": 5.0, "minLoss": 0.1})
    operator.record_phase(NAMESPACE, "other-job", "Pending")
    operator.early_stops.labels(rule="GradNormAboveMax")
    # JOB is trial 0 of SWEEP from the start, so its curves join the sweep while they are scraped; t1 and t2 ran
    # before (no trainer series here). OTHER_SWEEP's only trial is another job: JOB must never show there.
    trials = [
        {"index": 0, "name": JOB, "phase": "Running"},
        {"index": 1, "name": f"{SWEEP}-t1", "phase": "Pruned"},
        {"index": 2, "name": f"{SWEEP}-t2", "phase": "Succeeded", "objective": 1.5},
    ]
    operator.record_sweep(NAMESPACE, SWEEP, {"trials": trials})
    operator.record_sweep(NAMESPACE, OTHER_SWEEP, {"trials": [{"index": 0, "name": "other-job", "phase": "Running"}]})
    trainer_port = free_port()
    targets = tmp / "targets.json"
    targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{trainer_port}", f"127.0.0.1:{operator_port}"]}]))
    prometheus_port = free_port()
    process = start_prometheus(tmp, 0, prometheus_port, file_sd=targets)
    url = f"http://127.0.0.1:{prometheus_port}"
    try:
        start = time.time()
        # A long run, ended by SIGTERM once Prometheus holds several scrapes: the test does not depend on how fast
        # this machine trains. Eval at each checkpoint, so eval loss is scraped too.
        spec = recipe(maxSteps=100_000, epochs=1000, checkpoint={"intervalSteps": 20})
        spec["data"]["evalFraction"] = 0.1
        trainer = launch(spec, tmp / "out", FINETUNE_METRICS_PORT=str(trainer_port), FINETUNE_METRICS_ADDR="127.0.0.1")
        query = f'finetune_optimizer_step{{finetunejob="{JOB}"}}'
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and trainer.poll() is None:
            if (
                len(_values(url, query, start)) >= 5
                and len(_values(url, f'finetune_eval_loss{{finetunejob="{JOB}"}}', start)) >= 2
            ):
                break
            time.sleep(1)
        trainer.send_signal(signal.SIGTERM)
        code, output = finish(trainer, timeout=90)
        assert code == 0, output
        steps = wait_for_data(url, query, start)
        assert len(steps[0]["values"]) >= 3, "the run must span several scrapes for rate()"
        operator.record_phase(NAMESPACE, JOB, "EarlyStopped")
        operator.early_stops.labels(rule="GradNormAboveMax").inc()
        operator.record_early_stop(NAMESPACE, JOB, "maxGradNorm")
        operator.gpu_seconds_saved.inc(2 * 3600.0)
        # The sweep prunes JOB at its rung (after several scrapes, so increase() sees it) and reports it in status.
        operator.record_prune(NAMESPACE, SWEEP, JOB, PRUNED_AT)
        trials[0] = {"index": 0, "name": JOB, "phase": "Pruned", "rung": PRUNED_AT}
        status = {"trials": trials, "gpuSecondsSaved": 5400.0, "scoreObjectiveCorrelation": {"rho": 0.6, "trials": 4}}
        operator.record_sweep(NAMESPACE, SWEEP, status)
        wait_for_data(url, "increase(finetune_operator_early_stops_total[10s]) > 0", start)
        wait_for_data(url, "increase(finetune_operator_sweep_pruned_total[10s]) > 0", start)
        wait_for_data(url, 'finetune_operator_sweep_trials{phase="Pruned"} == 2', start)
        yield url, start, time.time()
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _values(url: str, query: str, start: float) -> list:
    """The samples a range query over the run so far returns (empty on no data or a failed request)."""
    params = urllib.parse.urlencode({"query": query, "start": start, "end": time.time(), "step": 1})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=5) as response:
            result = json.load(response)["data"]["result"]
    except OSError:
        return []
    return result[0]["values"] if result else []


def is_dcgm(expr: str) -> bool:
    return "DCGM_" in expr


@pytest.mark.parametrize(("where", "expr"), all_queries(), ids=[where for where, _ in all_queries()])
def test_every_query_returns_data_from_a_real_run(live: tuple[str, float, float], where: str, expr: str) -> None:
    url, start, end = live
    result = query_range(url, substitute(expr), start, end)
    if is_dcgm(expr):
        assert result == [], "no DCGM exporter here: the GPU panel must be empty, not an error"
        return
    assert result, f"{where}: no data for {substitute(expr)!r}"
    assert any(values for series in result for values in series["values"]), where


def test_early_stop_annotations_mark_the_stop(live: tuple[str, float, float]) -> None:
    """The fleet-wide one (every stop, by rule) and the job's own (only this job's stop)."""
    url, start, end = live
    fleet, own = load(CHART / "dashboards" / "finetune-job.json")["annotations"]["list"]
    (series,) = query_range(url, substitute(fleet["expr"]), start, end)
    assert series["metric"] == {"rule": "GradNormAboveMax"}
    (series,) = query_range(url, substitute(own["expr"]), start, end)
    assert series["metric"] == {"rule": "maxGradNorm"}


def sweep_query(title: str, ref: str = "A") -> str:
    (target,) = [target for target in sweep_panel(title)["targets"] if target["refId"] == ref]
    return substitute(target["expr"])


def test_sweep_overlays_show_the_trial_curve_once_across_its_phase_change(live: tuple[str, float, float]) -> None:
    """The trial's curve, labelled with its trial index, one series although its info series changed phase
    (Running, then Pruned) during the range; and nothing of it under another sweep."""
    url, start, end = live
    for title in OVERLAID:
        (series,) = query_range(url, sweep_query(title), start, end)
        assert series["metric"]["finetunejob"] == JOB
        assert series["metric"]["trial"] == "0"
        assert len(series["values"]) >= 2, title
        assert (
            query_range(url, sweep_query(title).replace(f'sweep="{SWEEP}"', f'sweep="{OTHER_SWEEP}"'), start, end) == []
        )
    trainer = query_range(url, f'finetune_train_loss{{finetunejob="{JOB}"}}', start, end)
    (overlay,) = query_range(url, sweep_query("Training loss of every trial"), start, end)
    assert overlay["values"] == trainer[0]["values"]  # the join multiplies by 1: the curve is the trainer's own


def test_sweep_trial_table_rows(live: tuple[str, float, float]) -> None:
    url, _, end = live
    rows = query_range(url, sweep_query("Trials", "A"), end, end)
    assert {(row["metric"]["trial"], row["metric"]["finetunejob"], row["metric"]["phase"]) for row in rows} == {
        ("0", JOB, "Pruned"),
        ("1", f"{SWEEP}-t1", "Pruned"),
        ("2", f"{SWEEP}-t2", "Succeeded"),
    }
    (step,) = query_range(url, sweep_query("Trials", "B"), end, end)
    assert step["metric"] == {"finetunejob": JOB}
    assert float(step["values"][-1][1]) >= 3
    (loss,) = query_range(url, sweep_query("Trials", "C"), end, end)
    assert loss["metric"] == {"finetunejob": JOB}
    (rung,) = query_range(url, sweep_query("Trials", "D"), end, end)
    assert rung["metric"] == {"finetunejob": JOB, "rung": str(PRUNED_AT)}


def test_sweep_stats(live: tuple[str, float, float]) -> None:
    url, _, end = live

    def last(title: str, ref: str = "A") -> dict[str, float]:
        result = query_range(url, sweep_query(title, ref), end, end)
        return {series["metric"].get("phase", ""): float(series["values"][-1][1]) for series in result}

    assert last("Trials by phase") == {
        "Pending": 0, "Running": 0, "Pruned": 2, "Succeeded": 1, "Failed": 0, "EarlyStopped": 0, "Suspended": 0,
    }  # fmt: skip
    assert last("Pruned trials", "A") == {"": 2.0}
    assert last("Pruned trials", "B")[""] > 0
    assert last("GPU-hours saved by pruning") == {"": pytest.approx(1.5)}
    assert last("Score vs objective (Spearman rho)") == {"": pytest.approx(0.6)}


def test_sweep_pruning_annotation_marks_the_pruned_trial(live: tuple[str, float, float]) -> None:
    url, start, end = live
    pruned, early_stops = load(SWEEP_DASHBOARD)["annotations"]["list"]
    (series,) = query_range(url, substitute(pruned["expr"]), start, end)
    assert series["metric"] == {"finetunejob": JOB, "rung": str(PRUNED_AT)}
    (series,) = query_range(url, substitute(early_stops["expr"]), start, end)  # the trial's own maxGradNorm stop
    assert series["metric"] == {"finetunejob": JOB, "rule": "maxGradNorm"}
    other = substitute(pruned["expr"]).replace(f'sweep="{SWEEP}"', f'sweep="{OTHER_SWEEP}"')
    assert query_range(url, other, start, end) == []


def test_job_threshold_line_is_the_exported_threshold(live: tuple[str, float, float]) -> None:
    url, start, end = live
    query = f'finetune_operator_job_threshold{{namespace="{NAMESPACE}", finetunejob="{JOB}", rule="maxGradNorm"}}'
    (series,) = query_range(url, query, start, end)
    assert float(series["values"][-1][1]) == 5.0


def test_fleet_gpu_hours_saved(live: tuple[str, float, float]) -> None:
    url, start, end = live
    (series,) = query_range(url, "sum(finetune_operator_gpu_seconds_saved_total) / 3600", start, end)
    assert float(series["values"][-1][1]) == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------- the chart
def helm_template(*args: str) -> list[dict[str, Any]]:
    if not HELM.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"helm missing at {HELM} (CI=true)")
        pytest.skip(f"helm missing at {HELM}: scripts/setup.sh downloads it")
    command = [str(HELM), "template", "r", str(CHART), "--namespace", "monitoring"]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, check=True)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def dashboard_configmaps(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == "ConfigMap" and "grafana_dashboard" in doc["metadata"]["labels"]]


def test_chart_renders_one_configmap_per_dashboard_with_the_exact_json() -> None:
    configmaps = dashboard_configmaps(helm_template("--set", "grafanaDashboards.enabled=true"))
    assert len(configmaps) == len(DASHBOARDS) == 3
    rendered = {}
    for configmap in configmaps:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["namespace"] == "monitoring"
        rendered.update(configmap["data"])
    assert rendered == {path.name: path.read_text() for path in DASHBOARDS}


def test_chart_renders_no_dashboards_by_default_and_honours_labels_and_annotations() -> None:
    assert dashboard_configmaps(helm_template()) == []
    configmaps = dashboard_configmaps(
        helm_template(
            "--set", "grafanaDashboards.enabled=true",
            "--set-string", "grafanaDashboards.labels.grafana_dashboard=yes",
            "--set", "grafanaDashboards.annotations.grafana_folder=Fine-tuning",
        )
    )  # fmt: skip
    assert [configmap["metadata"]["labels"]["grafana_dashboard"] for configmap in configmaps] == ["yes"] * 3
    assert all(configmap["metadata"]["annotations"] == {"grafana_folder": "Fine-tuning"} for configmap in configmaps)
    assert all(re.fullmatch(r"[a-z0-9-]{1,63}", configmap["metadata"]["name"]) for configmap in configmaps)
