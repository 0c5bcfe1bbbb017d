#!/usr/bin/env bash
# Build Kubeflow Trainer v2 (trainer-controller-manager) and JobSet, the TrainJob backend's controllers, and Kueue
# (queueing for both backends), from Go modules only — each as the main package of its own throwaway module, so each keeps the dependency versions it
# pins — and take their CRDs and webhook registrations from the same module versions.
#
# Apart from tests/cluster/build.sh (the Kubernetes control plane) so that changing one never rebuilds the other.
# Everything lands in the same cache folder OUTSIDE the repository:
#   bin/trainer-controller-manager  bin/jobset  bin/kueue
#   trainer/crds/*.yaml             (Trainer's and JobSet's CRDs)
#   trainer/kueue-crds/*.yaml       (Kueue's)
#   trainer/webhooks/{trainer,jobset,kueue}.yaml  (their webhook configurations, as shipped)
#   trainer/STAMP
#
# Usage: tests/cluster/build_trainer.sh [--force]
set -euo pipefail

TRAINER_VERSION="v2.3.0"
JOBSET_VERSION="v0.12.0"  # the version Trainer v2.3.0 requires
KUEUE_VERSION="v0.17.0"

CACHE="${FINETUNE_CLUSTER_CACHE:-$HOME/.cache/finetune-operator/cluster}"
BIN="$CACHE/bin"
OUT="$CACHE/trainer"
export GOCACHE="${FINETUNE_CLUSTER_GOCACHE:-$CACHE/go-build}"
export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false -trimpath"
export GOTOOLCHAIN=local

log() { printf '[build_trainer.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

stamp() {
    { sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1; go env GOVERSION; } | sha256sum | cut -d' ' -f1
}

up_to_date() {
    [[ -f "$OUT/STAMP" && "$(cat "$OUT/STAMP")" == "$(stamp)" ]] || return 1
    [[ -x "$BIN/trainer-controller-manager" && -x "$BIN/jobset" && -x "$BIN/kueue" ]] || return 1
    [[ -f "$OUT/webhooks/trainer.yaml" && -f "$OUT/webhooks/jobset.yaml" && -f "$OUT/webhooks/kueue.yaml" ]] || return 1
}

# build NAME PACKAGE VERSION: `go build PACKAGE` inside a throwaway module requiring only PACKAGE's module at
# VERSION (`go get PACKAGE@VERSION` records every module the package's imports need).
build() {
    local name="$1" package="$2" version="$3" src="$CACHE/src-$1"
    log "building $name from $package@$version"
    rm -rf "$src" && mkdir -p "$src"
    printf 'module finetune-operator.local/%s\n\ngo 1.26.0\n' "$name" >"$src/go.mod"
    (cd "$src" && go get "$package@$version" && go build -ldflags "-s -w" -o "$BIN/$name" "$package")
}

module_dir() {
    (cd "$CACHE/src-$1" && go list -m -f '{{.Dir}}' "$2")
}

main() {
    if [[ "${1:-}" != "--force" ]] && up_to_date; then
        log "up to date ($OUT)"
        return
    fi
    mkdir -p "$BIN" "$OUT/crds" "$OUT/kueue-crds" "$OUT/webhooks"
    build trainer-controller-manager github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager "$TRAINER_VERSION"
    build jobset sigs.k8s.io/jobset "$JOBSET_VERSION"
    build kueue sigs.k8s.io/kueue/cmd/kueue "$KUEUE_VERSION"
    local trainer jobset kueue
    trainer="$(module_dir trainer-controller-manager github.com/kubeflow/trainer/v2)"
    jobset="$(module_dir jobset sigs.k8s.io/jobset)"
    kueue="$(module_dir kueue sigs.k8s.io/kueue)"
    rm -f "$OUT"/crds/*.yaml "$OUT"/kueue-crds/*.yaml
    install -m 0644 "$trainer"/manifests/base/crds/trainer.kubeflow.org_*.yaml "$OUT/crds/"
    install -m 0644 "$jobset"/config/components/crd/bases/*.yaml "$OUT/crds/"
    install -m 0644 "$trainer/manifests/base/webhook/manifests.yaml" "$OUT/webhooks/trainer.yaml"
    install -m 0644 "$jobset/config/components/webhook/manifests.yaml" "$OUT/webhooks/jobset.yaml"
    install -m 0644 "$kueue"/config/components/crd/bases/*.yaml "$OUT/kueue-crds/"
    install -m 0644 "$kueue/config/components/webhook/manifests.yaml" "$OUT/webhooks/kueue.yaml"
    stamp >"$OUT/STAMP"
    log "done: $BIN/{trainer-controller-manager,jobset,kueue}, $(ls "$OUT/crds" "$OUT/kueue-crds" | grep -c yaml) CRDs"
}

main "$@"
