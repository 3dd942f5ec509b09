#!/usr/bin/env bash
# A private certificate authority, a server certificate and a client certificate for cnnserve, with
# openssl alone. For trying TLS and mutual TLS out, and for tests and benchmarks; in production let your
# PKI (cert-manager, Vault, your company CA) issue them.
#
#   scripts/make-tls-certs.sh OUT_DIR [SERVER_NAME ...]
#
# Writes OUT_DIR/ca.crt, ca.key, server.crt, server.key (valid for localhost, 127.0.0.1 and every
# SERVER_NAME), client.crt, client.key (subject CN=client); keys are ECDSA P-256, certificates last 365 days.
set -euo pipefail

OUT=${1:?usage: make-tls-certs.sh OUT_DIR [SERVER_NAME ...]}
shift
mkdir -p "$OUT"
cd "$OUT"
umask 077

SAN="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ ]]; then SAN="$SAN,IP:$name"; else SAN="$SAN,DNS:$name"; fi
done

# 1. The certificate authority.
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 365 \
    -subj "/CN=cnnserve CA" -keyout ca.key -out ca.crt 2>/dev/null

# 2. The server's key and certificate, signed by the CA.
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -subj "/CN=cnnserve" -keyout server.key -out server.csr 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -out server.crt \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$SAN") 2>/dev/null

# 3. A client's key and certificate for mutual TLS (its subject can be given scopes in the token file).
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -subj "/CN=client" -keyout client.key -out client.csr 2>/dev/null
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -out client.crt \
    -extfile <(printf 'extendedKeyUsage=clientAuth\n') 2>/dev/null

rm -f server.csr client.csr ca.srl
chmod 644 ca.crt server.crt client.crt
echo "wrote ca.crt ca.key server.crt server.key client.crt client.key in $OUT (server: $SAN)"
