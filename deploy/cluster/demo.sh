#!/usr/bin/env bash
# The cluster demo on one machine: Kamailio (SIP, in front), HAProxy (WSS, in
# front) and two gateway nodes, with configs written to a temp dir and the
# very kamailio.cfg / haproxy.cfg of this folder. Ctrl-C stops everything.
#
#   deploy/cluster/demo.sh
#
# Then open https://127.0.0.1:8443 (HAProxy) and sign in as alice; a carrier
# calls sip:alice@127.0.0.1:5060 (Kamailio) and every node holding one of
# alice's sessions rings; calls out go through Kamailio to $CARRIER.
#
# Environment (defaults in brackets): GATEWAY_BIN [target/release/...; built
# if missing], CARRIER [sip:127.0.0.1:5090: the trunk Kamailio dispatches
# calls out to], SIP_PORT [5060], WSS_PORT [8443], ACCOUNT [alice],
# PASSWORD [random, printed], PUBLIC_IP [127.0.0.1], DRAIN [300].
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
BIN=${GATEWAY_BIN:-$repo/target/release/webrtc-sip-gateway}
CARRIER=${CARRIER:-sip:127.0.0.1:5090}
SIP_PORT=${SIP_PORT:-5060}
WSS_PORT=${WSS_PORT:-8443}
ACCOUNT=${ACCOUNT:-alice}
PASSWORD=${PASSWORD:-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')}
PUBLIC_IP=${PUBLIC_IP:-127.0.0.1}
DRAIN=${DRAIN:-300}

for tool in kamailio haproxy; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install kamailio haproxy)" >&2; exit 1; }
done
if [ ! -x "$BIN" ]; then
  (cd "$repo" && cargo build --release)
fi

dir=$(mktemp -d /tmp/gw-cluster.XXXXXX)
pids=()
cleanup() {
  trap - EXIT INT TERM
  # SIGTERM: each node drains (up to DRAIN seconds) and unregisters.
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; configs and logs kept in $dir"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

hash=$(printf '%s\n' "$PASSWORD" | "$BIN" hash-password)
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
carrier_hostport=${CARRIER#sip:}
carrier_hostport=${carrier_hostport%%;*}

# node NAME HTTPS_PORT SIP_PORT MEDIA_MIN MEDIA_MAX
node() {
  mkdir -p "$dir/$1"
  cat > "$dir/$1/gateway.toml" <<TOML
[server]
https_listen = "127.0.0.1:$2"
public_ip = "$PUBLIC_IP"
data_dir = "$dir/$1/data"
token_secret = "$secret"

[sip]
udp_listen = "127.0.0.1:$3"

[media]
port_min = $4
port_max = $5

[[trunks]]
name = "kamailio"
uri = "sip:127.0.0.1:$SIP_PORT;transport=udp"
inbound_sources = ["127.0.0.1/32"]
callee_stream = "sdes"
secure_media = "optional"

[[accounts]]
name = "$ACCOUNT"
password_hash = "$hash"
trunk = "kamailio"

[cluster]
registrar = "sip:127.0.0.1:$SIP_PORT"
domain = "gw.example"
drain_seconds = $DRAIN
TOML
  "$BIN" run --config "$dir/$1/gateway.toml" >"$dir/$1/gateway.log" 2>&1 &
  pids+=($!)
}

cat > "$dir/dispatcher.list" <<LIST
1 sip:$carrier_hostport
2 sip:127.0.0.1:5071 8
2 sip:127.0.0.1:5072 8
LIST
kamailio -f "$here/kamailio.cfg" -DD -E -Y "$dir" -P "$dir/kamailio.pid" \
  -A "LISTEN=udp:127.0.0.1:$SIP_PORT" -A "DS_LIST=\"$dir/dispatcher.list\"" \
  -A "CTL_SOCK=\"unix:$dir/kamailio_ctl\"" >"$dir/kamailio.log" 2>&1 &
pids+=($!)
node a 9443 5071 20000 20499
node b 9444 5072 20500 20999
WSS_BIND="127.0.0.1:$WSS_PORT" NODE_A=127.0.0.1:9443 NODE_B=127.0.0.1:9444 \
  haproxy -db -f "$here/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
pids+=($!)

cat <<MSG
cluster up (configs and logs in $dir):
  browsers:  https://127.0.0.1:$WSS_PORT  (HAProxy -> nodes a :9443, b :9444)
  account:   $ACCOUNT / $PASSWORD
  SIP:       sip:$ACCOUNT@127.0.0.1:$SIP_PORT (Kamailio); calls out go to $CARRIER
  bindings:  kamcmd -s unix:$dir/kamailio_ctl ul.dump
Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
echo "a process of the cluster ended; see the logs in $dir" >&2
