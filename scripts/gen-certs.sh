#!/usr/bin/env bash
# Generates the certificates Tether's dev cluster, tests and benchmarks run with (Debian's openssl):
#   <dir>/ca.pem ca-key.pem              a private CA (EC P-256, 10 years)
#   <dir>/server.pem server-key.pem      server certificate for 127.0.0.1, ::1 and localhost (etcd, agents)
#   <dir>/client.pem client-key.pem      client certificate, CN=<client-cn> (default tether), for mutual TLS
#   <dir>/peer.pem peer-key.pem          etcd peer certificate (server + client use), same names
#   <dir>/other-ca.pem other-client.pem other-client-key.pem   a second CA and a client it signed: a
#                                        certificate the first CA does not vouch for (attack tests)
# Usage: scripts/gen-certs.sh <dir> [client-cn]. Existing complete sets are kept (idempotent).
# Every file is 0600 (umask 077), the folder 0700.
set -euo pipefail
dir=${1:?usage: gen-certs.sh <dir> [client-cn]}
cn=${2:-tether}
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"
want="ca.pem ca-key.pem server.pem server-key.pem client.pem client-key.pem peer.pem peer-key.pem other-ca.pem other-client.pem other-client-key.pem"
complete=1
for f in $want; do [ -s "$f" ] || complete=0; done
[ $complete = 1 ] && exit 0
command -v openssl >/dev/null || { echo "gen-certs: openssl is missing (apt-get install openssl)" >&2; exit 1; }
umask 077
key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }
ca() { # name subject
  key "$1-key.pem"
  openssl req -x509 -new -key "$1-key.pem" -sha256 -days 3650 -subj "/CN=$2" -out "$1.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}
leaf() { # name cn ca usage(server|client|both)
  local name=$1 subj=$2 ca=$3 usage=$4 eku ext
  case $usage in server) eku=serverAuth ;; client) eku=clientAuth ;; both) eku=serverAuth,clientAuth ;; esac
  key "$name-key.pem"
  openssl req -new -key "$name-key.pem" -subj "/CN=$subj" -out "$name.csr" 2>/dev/null
  ext=$(mktemp)
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\nsubjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n' "$eku" > "$ext"
  openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca-key.pem" -CAcreateserial -sha256 -days 3650 -extfile "$ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$ext"
}
ca ca "tether dev CA"
leaf server "tether server" ca server
leaf client "$cn" ca client
leaf peer "tether etcd peer" ca both
ca other-ca "another CA"
leaf other-client "$cn" other-ca client
rm -f ./*.srl
echo "gen-certs: certificates in $dir"
