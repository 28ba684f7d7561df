#!/usr/bin/env bash
# Print the path of a working interpreter called NAME (e.g. python3.12), or exit 1.
#
# NAME on PATH is tried first. pyenv puts a shim for every installed version on PATH, but a shim
# whose version is not selected refuses to run ("command not found"): then the interpreter of
# the newest pyenv version that has NAME is used directly.
#
# usage: scripts/find-python.sh NAME
set -euo pipefail
name=${1:?usage: find-python.sh NAME}

if path=$(command -v "$name") && "$path" -c '' 2>/dev/null; then
    if [ "$(basename "$(dirname "$path")")" != shims ]; then echo "$path"; exit 0; fi
    # A working shim: resolve it, so the venv does not depend on pyenv's selection.
    "$path" -c 'import sys; print(sys.executable)'
    exit 0
fi
if command -v pyenv >/dev/null; then
    root=$(pyenv root)
    for version in $(pyenv versions --bare --skip-aliases 2>/dev/null | sort -rV); do
        if [ -x "$root/versions/$version/bin/$name" ]; then
            echo "$root/versions/$version/bin/$name"
            exit 0
        fi
    done
fi
exit 1
