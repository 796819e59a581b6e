#!/usr/bin/env bash
# Install the Debian packages named on the command line if their command is missing.
# Usage: scripts/sysdeps.sh mosquitto:/usr/sbin/mosquitto chromium:/usr/bin/chromium
set -euo pipefail
missing=()
for spec in "$@"; do
    pkg=${spec%%:*}
    path=${spec#*:}
    [ -x "$path" ] || command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
