"""The recipe model: the paper's defaults, and the operator → trainer hand-over."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from finetune_contract.names import ENV_RECIPE
from finetune_operator.api import FineTuneJob
from finetune_operator.children.pytorchjob import render_pytorchjob
from finetune_trainer import config
from finetune_trainer.config import Recipe, parse_recipe, recipe_from_env, recipe_json
from tests.manifests import JOB_EXAMPLES, REPO_ROOT, minimal_job


def test_defaults_follow_the_paper() -> None:
    training = FineTuneJob.model_validate(minimal_job()).spec.training
    assert training.effective_batch_size == 3840
    assert training.lr_scheduler == config.Scheduler.constant
    assert training.warmup_steps == 0
    assert training.adam_betas == [0.9, 0.95]
    assert training.adam_epsilon == 1e-8
    assert training.weight_decay == 0.0
    assert training.gradient_clipping == 1.0
    assert training.strategy == config.Strategy.stacked


def test_config_module_does_not_import_torch() -> None:
    """The operator image has no torch: importing the recipe must not pull it in."""
    import subprocess
    import sys

    code = "import sys, finetune_operator.api; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


@pytest.mark.parametrize("example", JOB_EXAMPLES, ids=lambda p: p.name)
def test_recipe_round_trip_through_the_rendered_pod(example) -> None:
    """Operator-side spec → env JSON in the rendered PyTorchJob → trainer-side parse → the same recipe."""
    import yaml

    manifest = yaml.safe_load(example.read_text())
    operator_side = FineTuneJob.model_validate(manifest).spec.recipe()
    pod = render_pytorchjob(manifest)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    env = {var["name"]: var["value"] for var in pod["containers"][0]["env"]}
    trainer_side = recipe_from_env(env)
    assert trainer_side == operator_side
    assert trainer_side.training.learning_rate == manifest["spec"]["training"]["learningRate"]


def test_recipe_json_writes_defaults_out() -> None:
    recipe = FineTuneJob.model_validate(minimal_job()).spec.recipe()
    wire = json.loads(recipe_json(recipe))
    assert wire["training"]["effectiveBatchSize"] == 3840
    assert wire["training"]["adamBetas"] == [0.9, 0.95]
    assert "resources" not in wire
    assert "earlyStopping" not in wire


def test_trainer_rejects_a_bad_recipe_with_the_same_rules() -> None:
    with pytest.raises(ValidationError, match="strategy phased needs at least 2 phases"):
        parse_recipe(json.dumps({"model": {"name": "m"}, "data": {}, "training": {"strategy": "phased"}}))


def test_missing_recipe_env_names_the_variable() -> None:
    with pytest.raises(ValueError, match=ENV_RECIPE):
        recipe_from_env({})


def test_recipe_accepts_only_wire_names() -> None:
    """snake_case would be pruned or refused by the API server, so the models refuse it as well."""
    data = {"datasets": [{"path": "/d.jsonl"}]}
    assert Recipe.model_validate({"model": {"name": "m"}, "data": {**data, "maxSeqLen": 128}}).data.max_seq_len == 128
    with pytest.raises(ValidationError, match="max_seq_len"):
        Recipe.model_validate({"model": {"name": "m"}, "data": {**data, "max_seq_len": 128}})
