"""The `finetune` command: render what the operator would create, print the CRDs, validate manifests, run the
operator, or run one FineTuneJob or FineTuneSweep on this machine (`finetune local`).

Input errors exit with code 2 and one line per problem (file, field path, rule, value) — never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from finetune_operator import config
from finetune_operator.api import FineTuneJob
from finetune_operator.api import crd as crdgen
from finetune_operator.api.sweep import SWEEP_KIND, FineTuneSweep, plan, trial_manifest
from finetune_operator.api.validation import (
    FieldError,
    InvalidInputError,
    parse_documents,
    validate_any,
    validate_manifest,
)
from finetune_operator.children import trainjob
from finetune_operator.children.pytorchjob import DEFAULT_TRAINER_IMAGE, render

T = TypeVar("T")
EXIT_OK = 0
EXIT_INVALID = 2


def load_documents(path: str) -> tuple[list[Any], str]:
    """The parsed YAML documents of a file ('-' reads standard input) and the name errors give it."""
    source = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = (error.strerror if isinstance(error, OSError) else None) or str(error)
        raise InvalidInputError([FieldError("", f"cannot read file: {reason}", source=source)]) from None
    return parse_documents(text, source), source


def load_jobs(path: str) -> list[FineTuneJob]:
    """Every FineTuneJob in a YAML file ('-' reads standard input); all problems of all documents are reported."""
    documents, source = load_documents(path)
    return jobs_from(documents, source)


def jobs_from(documents: Sequence[Any], source: str) -> list[FineTuneJob]:
    return validate_all(documents, source, validate_manifest)


def load_manifests(path: str) -> list[FineTuneJob | FineTuneSweep]:
    """Every FineTuneJob and FineTuneSweep in a YAML file ('-' reads standard input), each by its kind; all
    problems of all documents are reported."""
    documents, source = load_documents(path)
    return validate_all(documents, source, validate_any)


def validate_all(documents: Sequence[Any], source: str, validate: Callable[[Any, str], T]) -> list[T]:
    """Every document validated, labelled by its position when the file holds several; all problems reported."""
    out: list[T] = []
    errors: list[FieldError] = []
    for index, document in enumerate(documents):
        label = source if len(documents) == 1 else f"{source}[document {index}]"
        try:
            out.append(validate(document, label))
        except InvalidInputError as error:
            errors.extend(error.errors)
    if errors:
        raise InvalidInputError(errors)
    return out


def dump_all(manifests: Sequence[object]) -> str:
    return yaml.safe_dump_all(manifests, sort_keys=False, width=120)


def cmd_render(args: argparse.Namespace) -> int:
    """A FineTuneJob renders as its PyTorchJob (or TrainJob); a FineTuneSweep as every trial's FineTuneJob."""
    manifests = [manifest for path in args.files for manifest in load_manifests(path)]
    out: list[object] = []
    errors: list[FieldError] = []
    for manifest in manifests:
        if isinstance(manifest, FineTuneSweep):
            trials, _ = plan(manifest.metadata.name, manifest.spec)
            out.extend(trial_manifest(manifest, trial) for trial in trials)
        elif args.backend == "trainjob":
            try:
                out.append(trainjob.render(manifest, trainer_image=args.image, runtime=args.runtime))
            except trainjob.UnsupportedFieldError as error:
                where = f"FineTuneJob {manifest.metadata.namespace}/{manifest.metadata.name}"
                errors.append(FieldError(error.path, error.rule, repr(error.value), source=where))
        else:
            out.append(render(manifest, trainer_image=args.image))
    if errors:
        raise InvalidInputError(errors)
    sys.stdout.write(dump_all(out))
    return EXIT_OK


def cmd_runtime(args: argparse.Namespace) -> int:
    """The ClusterTrainingRuntime the TrainJob backend's TrainJobs name (`finetune runtime | kubectl apply -f -`)."""
    sys.stdout.write(dump_all([trainjob.runtime_manifest(args.name, args.image)]))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    for path in args.files:
        for manifest in load_manifests(path):
            where = f"{manifest.metadata.namespace}/{manifest.metadata.name}"
            if isinstance(manifest, FineTuneSweep):
                trials, _ = plan(manifest.metadata.name, manifest.spec)
                print(f"{path}: FineTuneSweep {where} is valid ({len(trials)} trials)")
            else:
                print(f"{path}: FineTuneJob {where} is valid")
    return EXIT_OK


def cmd_operator(args: argparse.Namespace) -> int:
    from finetune_operator.runner import run_operator

    return run_operator(config.from_arguments(args))


def cmd_local(args: argparse.Namespace) -> int:
    documents, source = load_documents(args.file)
    if len(documents) == 1 and isinstance(documents[0], dict) and documents[0].get("kind") == SWEEP_KIND:
        from finetune_operator.api.validation import validate_sweep_manifest
        from finetune_operator.local.sweep import run_sweep

        sweep = validate_sweep_manifest(documents[0], source)
        if args.port:
            rule = "a sweep's trials serve no metrics endpoint (each writes metrics.jsonl, which is read); drop --port"
            raise InvalidInputError([FieldError("--port", rule, str(args.port), source)])
        return run_sweep(sweep, source=source, output=args.output)
    jobs = jobs_from(documents, source)
    if len(jobs) != 1:
        rule = f"finetune local runs exactly one FineTuneJob or FineTuneSweep; the file holds {len(jobs)}"
        raise InvalidInputError([FieldError("", rule, source=source)])
    from finetune_operator.local.run import run_local  # torch/matplotlib stay out of `render` and `validate`

    return run_local(jobs[0], source=source, output=args.output, port=args.port)


LOCAL_EPILOG = """\
what it does: validates FILE like the operator, trains with the same trainer (1 process, or torchrun with one
process per GPU when spec.resources.gpusPerNode > 1 and CUDA has them), serves /metrics on 127.0.0.1, judges
every step with the job's earlyStopping policy and stops the trainer (SIGTERM: it checkpoints) on a stop
verdict. Ctrl-C also stops it with a checkpoint (twice: kill); re-running the same command resumes.
writes into the output dir: metrics.jsonl, trainer.log, recipe.json, checkpoint-N/ or final/, training.png.
exit codes: 0 Succeeded or EarlyStopped (both: the product worked), 1 Failed (the trainer's exit code is in
the summary), 2 invalid input, 130 Interrupted.

a FineTuneSweep: every trial the operator would create runs here as a trainer process (no metrics endpoint),
at most spec.maxParallelTrials at once, in index order; after every step the sweep's pruning rule re-judges
all trials and a pruned one is stopped like an early stop (SIGTERM: it checkpoints), as is a trial its own
earlyStopping stops. A live table shows every trial; the summary names the best trial and its model, the
compute pruning saved, and whether the first-rung score predicted the objective (Spearman rho).
writes into the output dir (default runs/<sweep name>): <trial name>/ for each trial (as above),
sweep-summary.json and sweep.png. exit codes: 0 some trial Succeeded, 1 none did, 2 invalid input,
130 Interrupted.
"""


def port_number(text: str) -> int:
    """--port: any TCP port, and 0 for no endpoint (spec.metrics.port, a container port, must be >= 1024)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535)")
    return value


def runtime_name(text: str) -> str:
    """--runtime / --name: a ClusterTrainingRuntime's name is a DNS-1123 subdomain (the API server's rule)."""
    if len(text) > 253 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid ClusterTrainingRuntime name (lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters)"
        )
    return text


def cmd_crd(args: argparse.Namespace) -> int:
    sys.stdout.write(crdgen.all_crds_yaml())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune", description="finetune-operator: fine-tune small LLMs on Kubernetes"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    render_cmd = commands.add_parser(
        "render",
        help="print what the operator would create for FILE(s): a FineTuneJob's PyTorchJob, a FineTuneSweep's "
        "trial FineTuneJobs",
    )
    render_cmd.add_argument("files", nargs="+", metavar="FILE", help="FineTuneJob/FineTuneSweep YAML ('-' for stdin)")
    render_cmd.add_argument("--image", default=DEFAULT_TRAINER_IMAGE, help="trainer image when the spec sets none")
    render_cmd.add_argument(
        "--backend",
        choices=("pytorchjob", "trainjob"),
        default="pytorchjob",
        help="the child kind: a Kubeflow PyTorchJob (training-operator v1) or TrainJob (Kubeflow Trainer v2.3)",
    )
    render_cmd.add_argument(
        "--runtime",
        type=runtime_name,
        default=trainjob.RUNTIME_NAME,
        help="the ClusterTrainingRuntime a TrainJob names",
    )
    render_cmd.set_defaults(handler=cmd_render)
    runtime_cmd = commands.add_parser(
        "runtime", help="print the ClusterTrainingRuntime that TrainJobs rendered by the trainjob backend name"
    )
    runtime_cmd.add_argument("--name", type=runtime_name, default=trainjob.RUNTIME_NAME, help="the runtime's name")
    runtime_cmd.add_argument("--image", default=DEFAULT_TRAINER_IMAGE, help="the trainer image")
    runtime_cmd.set_defaults(handler=cmd_runtime)
    validate_cmd = commands.add_parser(
        "validate", help="check FineTuneJob/FineTuneSweep YAML file(s) (every trial of a sweep) without rendering"
    )
    validate_cmd.add_argument("files", nargs="+", metavar="FILE")
    validate_cmd.set_defaults(handler=cmd_validate)
    crd_cmd = commands.add_parser("crd", help="print the FineTuneJob and FineTuneSweep CustomResourceDefinitions")
    crd_cmd.set_defaults(handler=cmd_crd)
    operator_cmd = commands.add_parser("operator", help="run the operator (Kopf) against the current kubeconfig")
    config.add_arguments(operator_cmd)
    operator_cmd.set_defaults(handler=cmd_operator)
    local_cmd = commands.add_parser(
        "local",
        help="run one FineTuneJob or FineTuneSweep on this machine (no cluster), with early stopping or pruning",
        description="Run one FineTuneJob or FineTuneSweep on this machine: no cluster, the same trainer, "
        "early-stopping policy and sweep pruning rule.",
        epilog=LOCAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    local_cmd.add_argument(
        "file", metavar="FILE", help="FineTuneJob or FineTuneSweep YAML with one document ('-' for stdin)"
    )
    local_cmd.add_argument(
        "--output", type=Path, default=None, metavar="DIR", help="output directory (default: runs/<name>)"
    )
    local_cmd.add_argument(
        "--port",
        type=port_number,
        default=None,
        metavar="N",
        help="metrics port on 127.0.0.1 (default: spec.metrics.port; 0: no endpoint; a FineTuneJob only)",
    )
    local_cmd.set_defaults(handler=cmd_local)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except InvalidInputError as error:
        print(f"error: {len(error.errors)} problem(s) in the input", file=sys.stderr)
        print(error, file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
