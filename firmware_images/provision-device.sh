#!/usr/bin/env bash
# Broker credentials and ACL entry for one device (or the cloud service), on the broker host.
#
#   provision-device.sh [--dir DIR] [--password PW] [--client-cert] [--broker HOST] DEVICE_ID
#   provision-device.sh [--dir DIR] [--password PW] --service NAME
#   provision-device.sh [--dir DIR] --revoke NAME
#
# DIR is the broker's configuration directory (default /etc/mosquitto/edge, as in
# mosquitto/mosquitto.conf): DIR/passwd, DIR/acl, DIR/certs/ (from make-certs.sh).
#
# A device (DEVICE_ID = the agent's device id: the balena device UUID on balena, the
# hostname or EDGE_DEVICE_ID elsewhere) gets:
#   - a mosquitto_passwd entry: user name DEVICE_ID, a random password unless --password
#   - an ACL block: readwrite on edge/DEVICE_ID/# and nothing else
#   - DIR/devices/DEVICE_ID.env (mode 0600): the sync role's settings for this device
#   - with --client-cert: DIR/devices/DEVICE_ID.{key,crt}, a client certificate with
#     CN=DEVICE_ID signed by DIR/certs/ca.key, for the mutual-TLS listener (port 8884)
# A service (--service cloud) gets readwrite on edge/# (the cloud_sync ingest).
# --revoke removes the user's password entry and ACL block (and its issued files).
#
# Running it again for the same name replaces the entry (new password). Then tell a
# running broker to reload: kill -HUP $(pidof mosquitto)  (or systemctl reload mosquitto).
set -euo pipefail

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

DIR=/etc/mosquitto/edge
PASSWORD=""
CLIENT_CERT=0
MODE=device
BROKER="${EDGE_BROKER_PUBLIC_HOST:-broker.example.com}"
NAME=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) DIR="$2"; shift 2 ;;
        --password) PASSWORD="$2"; shift 2 ;;
        --client-cert) CLIENT_CERT=1; shift ;;
        --broker) BROKER="$2"; shift 2 ;;
        --service) MODE=service; NAME="$2"; shift 2 ;;
        --revoke) MODE=revoke; NAME="$2"; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [ -z "$NAME" ] || usage; NAME="$1"; shift ;;
    esac
done
[ -n "$NAME" ] || usage
# the same rule as edge_agent.sync.protocol.DEVICE_RE: nothing that is special in a topic or an ACL
[[ "$NAME" =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || { echo "invalid name '$NAME': use 1-64 of A-Z a-z 0-9 _ . -" >&2; exit 2; }
command -v mosquitto_passwd >/dev/null || { echo "mosquitto_passwd not found (apt-get install mosquitto)" >&2; exit 1; }

mkdir -p "$DIR"
PASSWD="$DIR/passwd"
ACL="$DIR/acl"
DEVICES="$DIR/devices"
[ -e "$ACL" ] || : >"$ACL"
LOCK="$DIR/.provision.lock"
exec 9>"$LOCK"
flock 9  # one provisioning at a time: both files are rewritten

broker_readable() {
    # the broker drops root for the mosquitto user before it reads these files
    if getent group mosquitto >/dev/null 2>&1; then
        chgrp mosquitto "$@" && chmod 0640 "$@"
    else
        chmod 0600 "$@"
    fi
}

remove_acl_block() {
    local tmp
    tmp="$(mktemp "$ACL.XXXXXX")"
    awk -v start="# >>> $1" -v end="# <<< $1" '
        $0 == start { skip = 1; next }
        $0 == end   { skip = 0; next }
        !skip' "$ACL" >"$tmp"
    chmod --reference="$ACL" "$tmp" 2>/dev/null || true
    mv "$tmp" "$ACL"
}

if [ "$MODE" = revoke ]; then
    remove_acl_block "$NAME"
    if [ -e "$PASSWD" ]; then mosquitto_passwd -D "$PASSWD" "$NAME" >/dev/null 2>&1 || true; fi
    rm -f "$DEVICES/$NAME.env" "$DEVICES/$NAME.key" "$DEVICES/$NAME.crt" "$DIR/services/$NAME.password"
    echo "revoked $NAME; reload the broker (kill -HUP) to apply"
    exit 0
fi

if [ -z "$PASSWORD" ]; then
    PASSWORD="$(openssl rand -base64 33 | tr -d '/+=\n' | cut -c1-32)"
fi

umask 077
if [ -e "$PASSWD" ]; then
    mosquitto_passwd -b "$PASSWD" "$NAME" "$PASSWORD"
else
    mosquitto_passwd -c -b "$PASSWD" "$NAME" "$PASSWORD"
fi
broker_readable "$PASSWD"

if [ "$MODE" = service ]; then
    prefix="edge/#"
else
    prefix="edge/$NAME/#"
fi
remove_acl_block "$NAME"
{
    echo "# >>> $NAME"
    echo "user $NAME"
    echo "topic readwrite $prefix"
    echo "# <<< $NAME"
} >>"$ACL"
broker_readable "$ACL"

if [ "$MODE" = device ]; then
    mkdir -p "$DEVICES"
    port=8883
    if [ "$CLIENT_CERT" = 1 ]; then
        [ -s "$DIR/certs/ca.key" ] || { echo "no $DIR/certs/ca.key: run make-certs.sh $DIR/certs first" >&2; exit 1; }
        openssl ecparam -name prime256v1 -genkey -noout -out "$DEVICES/$NAME.key"
        openssl req -new -key "$DEVICES/$NAME.key" -subj "/O=edge-agent fleet/CN=$NAME" -out "$DEVICES/$NAME.csr"
        ext="$(mktemp)"
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=clientAuth" >"$ext"
        openssl x509 -req -in "$DEVICES/$NAME.csr" -CA "$DIR/certs/ca.crt" -CAkey "$DIR/certs/ca.key" \
            -CAcreateserial -days 730 -sha256 -extfile "$ext" -out "$DEVICES/$NAME.crt" 2>/dev/null
        rm -f "$DEVICES/$NAME.csr" "$ext"
        chmod 0644 "$DEVICES/$NAME.crt"
        port=8884
    fi
    {
        echo "# sync role settings of device $NAME (copy to the device; keep it secret)"
        echo "EDGE_DEVICE_ID=$NAME"
        echo "EDGE_SYNC__BROKER_HOST=$BROKER"
        echo "EDGE_SYNC__BROKER_PORT=$port"
        echo "EDGE_SYNC__TLS=true"
        echo "EDGE_SYNC__CA_FILE=/etc/edge-agent/ca.crt"
        if [ "$CLIENT_CERT" = 1 ]; then
            echo "EDGE_SYNC__CERT_FILE=/etc/edge-agent/$NAME.crt"
            echo "EDGE_SYNC__KEY_FILE=/etc/edge-agent/$NAME.key"
        else
            echo "EDGE_SYNC__USERNAME=$NAME"
            echo "EDGE_SYNC__PASSWORD=$PASSWORD"
        fi
    } >"$DEVICES/$NAME.env"
    chmod 0600 "$DEVICES/$NAME.env"
    echo "provisioned device $NAME: settings in $DEVICES/$NAME.env"
    if [ "$CLIENT_CERT" = 1 ]; then
        echo "client certificate: $DEVICES/$NAME.crt (key $DEVICES/$NAME.key)"
    fi
else
    mkdir -p "$DIR/services"
    printf '%s\n' "$PASSWORD" >"$DIR/services/$NAME.password"
    chmod 0600 "$DIR/services/$NAME.password"
    echo "provisioned service account $NAME (readwrite on edge/#): password in $DIR/services/$NAME.password"
fi
echo "reload a running broker to apply: kill -HUP \$(pidof mosquitto)"
