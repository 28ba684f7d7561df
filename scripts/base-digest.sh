#!/usr/bin/env bash
# Pin the Dockerfile's base image to the current digest of its tag.
#
# The base is the `FROM TAG@sha256:DIGEST AS python-base` line: the tag says what it is, the
# digest fixes the bytes (Dependabot proposes the same change weekly). This resolves TAG's digest now (the multi-arch index, so every platform stays pinned)
# and rewrites the default. It needs the registry to be reachable, and skopeo (Debian package,
# installed here with apt-get when missing and running as root).
#
# usage: scripts/base-digest.sh [DOCKERFILE]
set -euo pipefail

dockerfile=${1:-Dockerfile}
current=$(sed -n 's/^FROM \([^ ]*\) AS python-base$/\1/p' "$dockerfile")
[ -n "$current" ] || { echo "$dockerfile: no 'FROM ... AS python-base' line" >&2; exit 1; }
tag=${current%@*}

ref=$tag
case ${tag%%/*} in
    *.*|*:*[0-9]/*|localhost) ;;                      # already names a registry
    *) [[ $tag == */* ]] && ref=docker.io/$tag || ref=docker.io/library/$tag ;;
esac

if ! command -v skopeo >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "skopeo is missing: apt-get install skopeo" >&2; exit 1; }
    apt-get update -qq && apt-get install -y -qq --no-install-recommends skopeo >/dev/null
fi

# The digest of a manifest is the sha256 of its exact bytes.
digest=sha256:$(skopeo inspect --raw "docker://$ref" | sha256sum | cut -d' ' -f1)
sed -i "s|^FROM [^ ]* AS python-base\$|FROM $tag@$digest AS python-base|" "$dockerfile"
echo "python-base: $tag@$digest"
