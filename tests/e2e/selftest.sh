#!/usr/bin/env bash
# Checks the web client, the stats page (stats-checks.mjs), chromium-call.mjs
# and chromium-incoming.mjs against mock-gateway.mjs (no Rust gateway
# needed). Runs inside a network namespace made for it, since both Chromium
# peers use the host's interfaces for ICE otherwise. Needs root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
netns_run="${NETNS_RUN:-$here/../netns-run.sh}"
if [ -z "${GWT_HOST:-}" ]; then
  exec "$netns_run" "$0" "$@"
fi
cd "$here"
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund
export ARTIFACT_DIR="${ARTIFACT_DIR:-$here/artifacts}"
mkdir -p "$ARTIFACT_DIR"
port=8088
scheme=http
[ "${MOCK_TLS:-}" = 1 ] && scheme=https
MOCK_PORT=$port node mock-gateway.mjs 2>"$ARTIFACT_DIR/mock-gateway.log" &
mock=$!
trap 'kill $mock 2>/dev/null; wait $mock 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -kfsS "$scheme://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
export GATEWAY_URL="$scheme://127.0.0.1:$port"
rc=0
GW_ACCOUNT=alice GW_PASSWORD=secret GW_NUMBER="${GW_NUMBER:-100*#}" EXPECT_TRUNK_SECURITY="${EXPECT_TRUNK_SECURITY:-sdes-srtp}" \
  node chromium-call.mjs || rc=1
GW_ACCOUNT=alice GW_PASSWORD=secret EXPECT_FROM=+15550100 EXPECT_TRUNK_SECURITY="${EXPECT_TRUNK_SECURITY:-sdes-srtp}" \
  TRIGGER_URL="$GATEWAY_URL/mock/incoming?from=%2B15550100" node chromium-incoming.mjs || rc=1
node web-client-checks.mjs || rc=1
node stats-checks.mjs || rc=1
exit $rc
