#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run):
#   sudo tests/run-all.sh        (or, as root, tests/run-all.sh)
#
# 1. system packages (apt, only what is missing)
# 2. Rust: fmt, clippy, build, cargo test
# 3. Python venv tests/.venv with tests/integration/requirements.txt
# 4. npm ci in tests/e2e
# 5. pytest tests/integration (gateway, baresip, aiortc, Chromium e2e) in
#    shards side by side, each in a fresh network namespace
#    (tests/netns-run.sh, tests/shard.py), then the pytest.mark.alone files
# Artifacts (logs, WAV dumps, screenshots, junit-*.xml): tests/artifacts/
#
# Environment: PYTEST_ARGS (default "-x -v") and PYTEST_K (a -k expression)
# narrow step 5; TEST_SHARDS (default 2) sets how many shards run at once;
# SKIP_RUST=1 skips step 2 (for iterating on the harness).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
ARTIFACTS="$ROOT/tests/artifacts"
START=$(date +%s)

banner() { printf '\n======== %s  [%ss] ========\n' "$*" "$(( $(date +%s) - START ))"; }
die() { echo "run-all: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, apt): sudo tests/run-all.sh"

mkdir -p "$ARTIFACTS"
# keep test output out of git without touching the repo's .gitignore
[ -f "$ARTIFACTS/.gitignore" ] || printf '*\n' > "$ARTIFACTS/.gitignore"

# ---------------------------------------------------------------------------
banner "1/5 system packages"
export DEBIAN_FRONTEND=noninteractive
# rtpengine-daemon (10.5): the load tool's comparison target (test_load_tool.py)
# libsrtp2-1 (2.5): the trunk-side SRTP peer of every SDES suite (test_srtp_suites.py, via ctypes)
# kamailio, haproxy: the cluster front (test_cluster.py)
# linphone-cli (liblinphone 5.1): a second SIP and media stack as trunk and caller (test_linphone.py)
pkgs=(baresip baresip-core sip-tester kamailio haproxy chromium firefox-esr libnss3-tools fonts-dejavu-core iproute2 iptables python3-pip python3-venv sox libssl-dev pkg-config rtpengine-daemon libsrtp2-1 linphone-cli)
# node 20 + npm may come from elsewhere (nvm, nodesource); Debian's only if absent
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
  if [[ " ${missing[*]} " == *" rtpengine-daemon "* ]]; then
    # The tests start their own rtpengine (userspace, in the namespace);
    # the packaged system service must not run beside it.
    service rtpengine-daemon stop >/dev/null 2>&1 || true
    update-rc.d rtpengine-daemon disable >/dev/null 2>&1 || true
    command -v systemctl >/dev/null && systemctl disable --now rtpengine-daemon >/dev/null 2>&1 || true
  fi
else
  echo "all present: ${pkgs[*]}"
fi
for tool in baresip linphonec sipp kamailio kamcmd haproxy chromium ip node npm; do
  command -v "$tool" >/dev/null || die "$tool missing after install"
done
echo "baresip $(dpkg-query -W -f='${Version}' baresip-core), $(sipp -v 2>&1 | grep -o 'v[0-9][^ ]*' | head -1), $(chromium --version 2>/dev/null), node $(node -v)"

# ---------------------------------------------------------------------------
banner "2/5 Rust: fmt, clippy, build, test"
if [ -d "$HOME/.cargo/bin" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
if ! command -v cargo >/dev/null; then
  echo "cargo missing: installing rustup (stable, minimal + clippy, rustfmt)"
  command -v curl >/dev/null || apt-get install -y --no-install-recommends curl ca-certificates
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy -c rustfmt \
    || die "could not install a Rust toolchain"
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  command -v rustup >/dev/null && rustup component add rustfmt clippy
fi
cargo --version
if [ "${SKIP_RUST:-0}" = 1 ]; then
  echo "SKIP_RUST=1: skipping fmt/clippy/build/test (need an existing target/debug build)"
else
  banner "2/5 cargo fmt --check"
  cargo fmt --all -- --check
  banner "2/5 cargo clippy --all-targets -- -D warnings"
  cargo clippy --all-targets -- -D warnings
  banner "2/5 cargo build --all-targets"
  cargo build --all-targets
  banner "2/5 cargo test"
  cargo test
  banner "2/5 fuzz targets compile (run them with cargo fuzz, see fuzz/README.md)"
  cargo check --manifest-path fuzz/Cargo.toml --target-dir target/fuzz-check
fi

# ---------------------------------------------------------------------------
banner "3/5 Python venv tests/.venv"
VENV="$ROOT/tests/.venv"
REQ="$ROOT/tests/integration/requirements.txt"
PY=""
for cand in python3.11 python3 /usr/bin/python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys, venv; assert sys.version_info >= (3, 10)' 2>/dev/null; then
    PY=$(command -v "$cand"); break
  fi
done
[ -n "$PY" ] || die "no python3 >= 3.10 with venv"
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1) $("$PY" -c 'import sys; print(sys.version.split()[0])')"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  printf '*\n' > "$VENV/.gitignore"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ"
  echo "$want" > "$stamp"
else
  echo "tests/.venv up to date ($want)"
fi
"$VENV/bin/python" -c 'import aiortc, av, websockets, pytest; print("aiortc", aiortc.__version__, "av", av.__version__, "pytest", pytest.__version__)'

# ---------------------------------------------------------------------------
banner "4/5 npm ci in tests/e2e"
E2E="$ROOT/tests/e2e"
if [ -f "$E2E/package-lock.json" ]; then
  lock_sum=$(sha256sum "$E2E/package-lock.json" | cut -d' ' -f1)
  if [ -d "$E2E/node_modules" ] && [ "$(cat "$E2E/node_modules/.lock.sha256" 2>/dev/null)" = "$lock_sum" ]; then
    echo "tests/e2e/node_modules up to date"
  else
    (cd "$E2E" && npm ci --no-audit --no-fund)
    echo "$lock_sum" > "$E2E/node_modules/.lock.sha256"
  fi
else
  echo "no tests/e2e/package-lock.json: skipping npm ci"
fi

# ---------------------------------------------------------------------------
banner "5/5 integration tests, in network namespaces"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
export PYTHONDONTWRITEBYTECODE=1
export GATEWAY_BIN="${GATEWAY_BIN:-$ROOT/target/debug/webrtc-sip-gateway}"
read -r -a pytest_args <<< "${PYTEST_ARGS:--x -v}"
if [ -n "${PYTEST_K:-}" ]; then pytest_args+=(-k "$PYTEST_K"); fi
# TEST_SHARDS files run side by side, each shard in a namespace of its own
# (tests/shard.py splits by tests/integration/durations.json); the files
# marked pytest.mark.alone run after them, by themselves.
SHARDS="${TEST_SHARDS:-2}"
mapfile -t plan < <("$PY" "$ROOT/tests/shard.py" plan "$SHARDS" "$ROOT/tests/integration")
alone="${plan[-1]#alone: }"
unset 'plan[-1]'
rm -f "$ARTIFACTS"/junit*.xml

# One pytest in one namespace; its lines prefixed with [name] when shards
# share the console, all of them kept in tests/artifacts/pytest-<name>.log.
run_pytest() {
  local name=$1; shift
  local prefix=""
  [ "${#plan[@]}" -gt 1 ] && prefix="[$name] "
  set -o pipefail
  bash "$ROOT/tests/netns-run.sh" "$VENV/bin/python" -m pytest "${pytest_args[@]}" \
    --junitxml="$ARTIFACTS/junit-$name.xml" "$@" 2>&1 \
    | tee "$ARTIFACTS/pytest-$name.log" | sed -u "s/^/$prefix/"
}

# pytest exit 5 (nothing collected) is a pass for one shard under -k, a
# failure when no shard ran anything.
rc=0; ran=0
record() { case $1 in 0) ran=1 ;; 5) ;; *) rc=$1; ran=1 ;; esac; }
set +e
pids=()
for i in "${!plan[@]}"; do
  read -r -a files <<< "${plan[$i]}"
  echo "shard $i: ${files[*]##*/}"
  run_pytest "$i" "${files[@]}" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; record $?; done
if [ -n "$alone" ] && { [ "$rc" -eq 0 ] || [[ " ${pytest_args[*]} " != *" -x "* ]]; }; then
  read -r -a files <<< "$alone"
  banner "5/5 by themselves: ${files[*]##*/}"
  plan=(alone)
  run_pytest alone "${files[@]}"
  record $?
fi
set -e
[ "$ran" -eq 1 ] || rc=5
banner "done: pytest exit $rc (artifacts in tests/artifacts/; durations: tests/shard.py record tests/integration tests/artifacts/junit-*.xml)"
# 5 = no test collected: that is a failure here, not a pass
exit "$rc"
