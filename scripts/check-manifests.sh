#!/usr/bin/env bash
# Checks the deployment files without a cluster (seconds; one line on
# success):
# - renders k8s/base and k8s/overlays/doks with kustomize (kubectl kustomize)
#   and validates every object strictly (unknown fields are errors) against
#   the Kubernetes API schemas of K8S_VERSION (kubernetes-validate), as is
#   the example Secret; an object without a schema is an error too;
# - checks what the schemas cannot: terminationGracePeriodSeconds covers
#   the drain ([shutdown] deadline_secs + 30), every *_file of dialerd.toml
#   is inside a mounted volume (secret files among the Secret's keys), the
#   status server binds the node's private address, no CPU limit;
# - yamllint --strict (.yamllint) over k8s/ and the rendered manifests, and
#   hadolint over the Dockerfile;
# - a self-test: copies of the base with a misspelled field must fail
#   validation, and one with too short a grace period the checks above.
# With DIALERD_BIN=target/debug/dialerd (a built dialerd), each rendered
# dialerd.toml also goes through `dialerd check-config`, with the pod's
# environment and stand-in secret files.
# The tools come from scripts/setup.sh (a virtualenv, scripts/manifest-tools.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.33.0 # DOKS
tools="${DIALERD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/dialerd-tools}"
for bin in kubectl kubernetes-validate yamllint hadolint python; do
  [ -x "$tools/bin/$bin" ] || { echo "check-manifests: $tools/bin/$bin is missing: run scripts/setup.sh" >&2; exit 1; }
done
kubectl="$tools/bin/kubectl"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() {
  echo "check-manifests: $*" >&2
  exit 1
}

# render DIR OUT: kustomize DIR into OUT.
render() {
  "$kubectl" kustomize "$1" >"$2" 2>"$tmp/render.err" || {
    cat "$tmp/render.err" >&2
    return 1
  }
}

# validate FILE: strict schema validation; quiet, so any output (an error,
# or a warning such as a kind without a schema) is a failure.
validate() {
  local out
  out=$("$tools/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$1" 2>&1) && [ -z "$out" ] || {
    printf '%s\n' "$out"
    return 1
  }
}

# invariants RENDERED SECRET TOML_OUT: the checks schemas cannot make; writes
# the mounted dialerd.toml to TOML_OUT and the paths of its *_file keys to
# TOML_OUT.files.
invariants() {
  "$tools/bin/python" - "$@" <<'EOF'
import sys, tomllib, yaml

rendered, secret_file, toml_out = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
problems = []
deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "dialerd")
config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
secret_keys = set(yaml.safe_load(open(secret_file))["stringData"])
pod = deployment["spec"]["template"]["spec"]
volumes = {v["name"]: v for v in pod["volumes"]}
container = next(c for c in pod["containers"] if c["name"] == "dialerd")
mounts = container["volumeMounts"]

config_mount = next(m for m in mounts if m["mountPath"] == "/etc/dialerd/dialerd.toml")
config_map = config_maps[volumes[config_mount["name"]]["configMap"]["name"]]
text = config_map["data"][config_mount.get("subPath", "dialerd.toml")]
open(toml_out, "w").write(text)
config = tomllib.loads(text)

deadline = config.get("shutdown", {}).get("deadline_secs", 30)
grace = pod.get("terminationGracePeriodSeconds", 30)
if grace < deadline + 30:
    problems.append(f"terminationGracePeriodSeconds {grace} < [shutdown] deadline_secs {deadline} + 30")

def file_keys(node, at=""):
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{at}.{key}" if at else key
            if key.endswith("_file") and isinstance(value, str):
                yield here, value
            else:
                yield from file_keys(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from file_keys(value, f"{at}[{i}]")

paths = []
for key, path in file_keys(config):
    paths.append(path)
    mount = next((m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    if mount is None:
        problems.append(f"{key} = {path}: no volume is mounted there")
    elif "secret" in volumes[mount["name"]]:
        name = path[len(mount["mountPath"].rstrip("/")) + 1:]
        if name not in secret_keys:
            problems.append(f"{key} = {path}: {secret_file} has no key {name}")
open(toml_out + ".files", "w").write("".join(p + "\n" for p in paths))

env = {e["name"]: e for e in container.get("env", [])}
if env.get("DIALERD__HTTP__BIND", {}).get("value") != "$(HOST_IP):8080":
    problems.append("DIALERD__HTTP__BIND is not $(HOST_IP):8080")
if env.get("HOST_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "status.hostIP":
    problems.append("HOST_IP does not come from status.hostIP")
if "cpu" in container.get("resources", {}).get("limits", {}):
    problems.append("a CPU limit (throttling delays RTP)")

for problem in problems:
    print(f"{rendered}: {problem}")
sys.exit(1 if problems else 0)
EOF
}

# check_config TOML: `dialerd check-config` as the pod would run it, the
# files it names replaced by stand-ins under $tmp/root.
check_config() {
  local root="$tmp/root" path
  rm -rf "$root"
  while read -r path; do
    mkdir -p "$root$(dirname "$path")"
    case "$path" in
      *.crt | *.pem) printf -- '-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n' ;;
      *) echo stand-in-secret-0123456789abcdef ;;
    esac >"$root$path"
  done <"$1.files"
  sed "s#\"/etc/dialerd/#\"$root/etc/dialerd/#g" "$1" >"$root/dialerd.toml"
  DIALERD__HTTP__BIND=10.10.0.5:8080 DIALERD__INSTANCE__ID=dialerd-7d9f8c6b5-x2x7k \
    "$DIALERD_BIN" check-config --config "$root/dialerd.toml" --profile-dir sip-profiles >"$tmp/check-config.out" 2>&1 || {
    cat "$tmp/check-config.out" >&2
    return 1
  }
}

secret=k8s/base/secret.example.yaml
for overlay in k8s/base k8s/overlays/doks; do
  name=$(basename "$overlay")
  render "$overlay" "$tmp/$name.yaml" || fail "kustomize $overlay failed"
  validate "$tmp/$name.yaml" || fail "$overlay does not validate against Kubernetes $K8S_VERSION"
  invariants "$tmp/$name.yaml" "$secret" "$tmp/$name.toml" || fail "$overlay breaks the checks above"
  if [ -n "${DIALERD_BIN:-}" ]; then
    check_config "$tmp/$name.toml" || fail "dialerd check-config refuses the dialerd.toml of $overlay"
  fi
done
validate "$secret" || fail "$secret does not validate against Kubernetes $K8S_VERSION"

"$tools/bin/yamllint" --strict -c .yamllint k8s/ "$tmp/base.yaml" "$tmp/doks.yaml" .yamllint || fail "yamllint"
"$tools/bin/hadolint" Dockerfile || fail "hadolint Dockerfile"

# Self-test: each change must be caught, else the checks prove nothing.
# break_copy FILE FROM TO: a copy of k8s/ with FROM replaced by TO in FILE (a
# path in the repository, under k8s/), rendered from its base into
# $tmp/broken.yaml.
break_copy() {
  rm -rf "$tmp/broken"
  mkdir -p "$tmp/broken"
  cp -r k8s "$tmp/broken/"
  sed -i "s/$2/$3/" "$tmp/broken/$1"
  grep -q "$3" "$tmp/broken/$1" || fail "self-test: $2 is not in $1"
  render "$tmp/broken/k8s/base" "$tmp/broken.yaml" || fail "self-test: kustomize failed on the broken copy"
}
for field in terminationGracePeriodSeconds readOnlyRootFilesystem periodSeconds; do
  case "$field" in
    terminationGracePeriodSeconds) wrong=terminationGracePeriodSecond ;;
    readOnlyRootFilesystem) wrong=readOnlyRootFileSystem ;;
    periodSeconds) wrong=periodSecond ;;
  esac
  break_copy k8s/base/deployment.yaml "$field:" "$wrong:"
  if out=$(validate "$tmp/broken.yaml"); then
    fail "self-test: a base with $wrong passed validation"
  fi
  grep -q "'$wrong' was unexpected" <<<"$out" || fail "self-test: validation failed without naming $wrong: $out"
done
break_copy k8s/base/deployment.yaml "terminationGracePeriodSeconds: 60" "terminationGracePeriodSeconds: 45"
if invariants "$tmp/broken.yaml" "$secret" "$tmp/broken.toml" >/dev/null; then
  fail "self-test: a grace period under deadline_secs + 30 passed"
fi

echo "check-manifests: ok (base and doks overlay valid for Kubernetes $K8S_VERSION, yamllint, hadolint, self-test)"
