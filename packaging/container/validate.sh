#!/usr/bin/env bash
# Checks the deployment files with real validators, not by eye: the Compose file against the
# Compose schema of Debian's docker-compose (every profile; `config` needs no engine), the
# Kubernetes manifests against the Kubernetes OpenAPI schemas of kubernetes-validate (PyPI), strict
# (unknown fields are errors), for the oldest and newest Kubernetes versions it is checked with.
# Usage: packaging/container/validate.sh (docker-compose and kubernetes-validate installed: .ci/run)
set -euo pipefail
cd "$(dirname "$0")/../.."
for profile in cpu gpu mqtt; do
    docker-compose -f packaging/container/compose.yaml -p intelligent-video --profile "$profile" config -q
    echo "compose.yaml: profile $profile valid"
done
for k in 1.30.0 1.37.0; do
    kubernetes-validate --strict --quiet -k "$k" packaging/kubernetes/*.yaml
    echo "packaging/kubernetes: valid for Kubernetes $k (strict)"
done
