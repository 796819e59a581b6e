#!/usr/bin/env bash
# A test CA and a broker server certificate, with openssl (ECDSA P-256).
#
#   firmware_images/make-certs.sh OUT_DIR [SERVER_NAME ...]
#
# Writes OUT_DIR/ca.key, ca.crt (the fleet's test CA, 10 years), server.key and
# server.crt (2 years) whose subjectAltName holds every SERVER_NAME plus localhost and
# 127.0.0.1. A SERVER_NAME that is an IPv4 address goes in as an IP entry.
# Existing files are kept (run it again with new names after deleting server.*), so
# client certificates issued by provision-device.sh stay valid.
#
# For production, use your own PKI: the broker needs only ca.crt, server.crt and
# server.key, and devices only ca.crt (plus their client pair for mutual TLS).
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [SERVER_NAME ...]" >&2; exit 2; }
OUT="$1"; shift
mkdir -p "$OUT"
chmod 0755 "$OUT"
umask 077

san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    if [[ "$name" =~ ^[0-9]+(\.[0-9]+){3}$ ]]; then entry="IP:$name"; else entry="DNS:$name"; fi
    case ",$san," in *",$entry,"*) ;; *) san="$san,$entry" ;; esac
done
cn="${1:-localhost}"

if [ ! -s "$OUT/ca.key" ] || [ ! -s "$OUT/ca.crt" ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$OUT/ca.key"
    openssl req -x509 -new -key "$OUT/ca.key" -sha256 -days 3650 \
        -subj "/O=edge-agent fleet/CN=edge-agent test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$OUT/ca.crt"
    echo "created $OUT/ca.crt"
fi

if [ ! -s "$OUT/server.key" ] || [ ! -s "$OUT/server.crt" ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$OUT/server.key"
    openssl req -new -key "$OUT/server.key" -subj "/O=edge-agent fleet/CN=$cn" -out "$OUT/server.csr"
    ext="$(mktemp)"
    trap 'rm -f "$ext"' EXIT
    printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=$san" >"$ext"
    openssl x509 -req -in "$OUT/server.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" \
        -CAcreateserial -days 730 -sha256 -extfile "$ext" -out "$OUT/server.crt" 2>/dev/null
    rm -f "$OUT/server.csr"
    echo "created $OUT/server.crt for $san"
fi

# certificates are public; the CA key stays with its owner; the broker, which drops root
# for the mosquitto user before it reads server.key, gets group read on that one
chmod 0644 "$OUT/ca.crt" "$OUT/server.crt"
chmod 0600 "$OUT/ca.key"
if getent group mosquitto >/dev/null 2>&1; then
    chgrp mosquitto "$OUT/server.key" && chmod 0640 "$OUT/server.key"
else
    chmod 0600 "$OUT/server.key"
fi
openssl verify -CAfile "$OUT/ca.crt" "$OUT/server.crt" >/dev/null
