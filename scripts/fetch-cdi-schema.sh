#!/usr/bin/env bash
# Fetch the official CDI JSON schema (schema/schema.json and schema/defs.json of
# github.com/cncf-tags/container-device-interface) for the CDI spec tests (tests/cdi_spec.py).
#
# No PyPI or npm package ships it. Debian's package of CDI's Go module does, as the source it
# packages: golang-github-container-orchestrated-devices-container-device-interface-dev, CDI
# v0.5.2 (Debian 12). `apt-get download` takes it (no root needed; as root, the package lists
# are fetched first when they do not know it). Pinned: that version, and the sha256 of both
# files, so a changed package cannot slip in.
#
# Where apt-get or that version is not there (another distribution), the schema is left out
# and says so: the test that needs it skips and says how to provide one (a newer release's
# schema, in ../shared/cdi-schema or $KDP_CDI_SCHEMA_DIR, is taken first).
#
# usage: scripts/fetch-cdi-schema.sh OUTPUT_DIR
set -euo pipefail

out=${1:?usage: fetch-cdi-schema.sh OUTPUT_DIR}
package=golang-github-container-orchestrated-devices-container-device-interface-dev
version=0.5.2-2
inside=usr/share/gocode/src/github.com/container-orchestrated-devices/container-device-interface/schema
schema_sha256=ef8afbe5572bb6ae9b6b5931f7b7b3fa64a4fc02c1c7fdcc2e92677f85ddd697
defs_sha256=d57ff9156c0a1119c8e4a97d7b3c190b07b9bde6a0ac00398fc44845e93ae06f

skip() {
    echo "fetch-cdi-schema.sh: $1: the official CDI schema test will skip" >&2
    exit 0
}

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || skip "no apt-get/dpkg-deb"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 0755 "$tmp"  # (apt-get download as root hands the file to its _apt user)

download() { (cd "$tmp" && apt-get download -qq "$package=$version" >/dev/null 2>&1); }
if ! download; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        download || skip "$package=$version is not in this machine's package lists"
    else
        skip "$package=$version is not in this machine's package lists"
    fi
fi

dpkg-deb -x "$tmp"/*.deb "$tmp/root"
cp "$tmp/root/$inside/schema.json" "$tmp/root/$inside/defs.json" "$tmp/"
(cd "$tmp" && printf '%s  schema.json\n%s  defs.json\n' "$schema_sha256" "$defs_sha256" \
    | sha256sum --check --quiet -) \
    || { echo "fetch-cdi-schema.sh: $package $version is not the pinned schema" >&2; exit 1; }
mkdir -p "$out"
for name in schema.json defs.json; do
    mv -f "$tmp/$name" "$out/$name.tmp.$$"
    mv -f "$out/$name.tmp.$$" "$out/$name"
done
echo "fetch-cdi-schema.sh: CDI schema v0.5.2 in $out" >&2
