#!/usr/bin/env bash
# Push this checkout to a balena fleet as a new release.
#
#   firmware_images/balena-push.sh FLEET [balena push options ...]   # needs the balena CLI, logged in
#   firmware_images/balena-push.sh --stage DIR                       # only assemble what would be pushed
#
# balena reads docker-compose.yml and balena.yml at the root of the pushed directory and
# uploads that whole directory as the build context. This script assembles that directory:
# balena.yml, firmware_images/docker-compose.yml moved to the root, and only what the image
# build uses (pyproject.toml, README.md, edge_agent/, cloud_sync/, the model packages,
# firmware_images/) - no virtualenvs, caches or model-building scripts - then runs
# `balena push FLEET --source DIR`. balena's builders build natively on arm64 and
# substitute %%BALENA_ARCH%% in firmware_images/Dockerfile.template.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

stage() {
    local dest="$1"
    mkdir -p "$dest"
    [ -z "$(ls -A "$dest")" ] || { echo "$dest is not empty" >&2; exit 1; }
    tar -C "$REPO" \
        --exclude=__pycache__ --exclude='*.pyc' --exclude=models/scripts --exclude='.venv*' \
        -cf - pyproject.toml README.md balena.yml edge_agent cloud_sync models firmware_images |
        tar -C "$dest" -xf -
    cp "$REPO/firmware_images/docker-compose.yml" "$dest/docker-compose.yml"
    printf '%s\n' '**/__pycache__' '**/*.pyc' 'firmware_images/arm64' >"$dest/.dockerignore"
}

[ $# -ge 1 ] || { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
if [ "$1" = --stage ]; then
    [ $# -eq 2 ] || { echo "usage: $0 --stage DIR" >&2; exit 2; }
    stage "$2"
    echo "staged in $2"
    exit 0
fi

FLEET="$1"; shift
command -v balena >/dev/null || { echo "the balena CLI is not installed (https://github.com/balena-io/balena-cli)" >&2; exit 1; }
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
stage "$DIR"
balena push "$FLEET" --source "$DIR" "$@"
