#!/bin/sh
# Entry point of the agent image: prepare the data volume, then run the role's command.
#
#   edge-entrypoint edge-agent ROLE [ARGS...]
#
# 1. The writable model store ($EDGE_MODEL_DIR, on the named volume) receives every model
#    version bundled in the image that it does not hold yet. A version directory is never
#    overwritten (packages are immutable; an update is a new version), so versions that
#    arrived over the fleet link and the active-version pointers survive image updates.
#    Several services start at once: each version is copied to a temporary name and
#    renamed, so a half-copied package is never visible and a race loses harmlessly.
# 2. The camera role without a source (EDGE_CAMERA__SOURCE unset or empty, no --source)
#    idles instead of exiting, so a fleet without cameras does not crash-loop it; set the
#    variable in the dashboard and the service restarts with it.
set -eu

# where the image keeps the model packages it was built with (AGENT_BUNDLED_MODELS: tests)
BUNDLED="${AGENT_BUNDLED_MODELS:-/opt/edge-agent/models}"
MODEL_DIR="${EDGE_MODEL_DIR:-/data/models}"
DATA_DIR="${EDGE_DATA_DIR:-/data/state}"

for dir in "$MODEL_DIR" "$DATA_DIR"; do
    if ! mkdir -p "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
        echo "edge-entrypoint: $dir is not writable by uid $(id -u); the volume may come from an" \
            "image that ran as root: chown -R $(id -u):$(id -g) on the volume" >&2
        exit 1
    fi
done

if [ -d "$BUNDLED" ] && [ "$(cd "$BUNDLED" && pwd -P)" != "$(cd "$MODEL_DIR" && pwd -P)" ]; then
    for src in "$BUNDLED"/*/*/; do
        [ -f "${src}manifest.json" ] || continue
        version="$(basename "$src")"
        name="$(basename "$(dirname "$src")")"
        dest="$MODEL_DIR/$name/$version"
        [ -e "$dest" ] && continue
        mkdir -p "$MODEL_DIR/$name"
        tmp="$MODEL_DIR/$name/.seed-$version-$$"
        rm -rf "$tmp"
        cp -R "$src" "$tmp"
        if mv -T "$tmp" "$dest" 2>/dev/null; then
            echo "edge-entrypoint: added bundled model $name/$version to $MODEL_DIR"
        else
            rm -rf "$tmp"  # another service added it first
        fi
    done
fi

if [ "$#" -ge 2 ] && [ "$1" = edge-agent ] && [ "$2" = camera ] && [ -z "${EDGE_CAMERA__SOURCE:-}" ]; then
    case " $* " in
        *" --source "* | *" --source="*) ;;
        *)
            echo "edge-entrypoint: camera role idle: set EDGE_CAMERA__SOURCE (V4L2 index or device," \
                "RTSP/HTTP URL, or file) to start it" >&2
            nap=""
            trap 'kill "$nap" 2>/dev/null; exit 0' TERM INT
            while :; do
                sleep 3600 &
                nap=$!
                wait "$nap" || true
            done
            ;;
    esac
fi

exec "$@"
