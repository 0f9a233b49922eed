#!/usr/bin/env bash
# CPU used by an idle daemon between ticks: starts `run` with a schedule that does not fire
# during the measurement, samples utime+stime from /proc after start-up settles, and prints
# the CPU time per minute and the share of one core. Needs the database of scripts/test-db
# (or DATABASE_URL); runs in a database of its own, dropped at the end. Usage: bench/idle.sh [SECONDS]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
master=${DATABASE_URL:-postgres://backfill_test:backfill_test@127.0.0.1:5432/backfill_test}
db=backfill_idle_$$
url="${master%/*}/$db"
bin=target/release/backfill-reporter
cargo build --release --locked -q
psql -q "$master" -c "CREATE DATABASE $db"
dir=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    psql -q "$master" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
    rm -rf "$dir"
}
trap cleanup EXIT
cat > "$dir/config.toml" <<TOML
[provider]
base_url = "http://127.0.0.1:9/otp"
api_key = "idleKey1"
api_secret_file = "$dir/secret"
[database]
url = "$url"
[schedule]
cron = "0 0 1 1 *"
TOML
echo idlesecret > "$dir/secret"
chmod 600 "$dir/config.toml" "$dir/secret"
RUST_LOG=warn "$bin" --config "$dir/config.toml" run 2>"$dir/log" &
pid=$!
sleep 3
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks)
ctx_before=$(awk '/voluntary_ctxt_switches/ && !/non/ {s+=$2} END {print s}' /proc/$pid/task/*/status)
sleep "$secs"
after=$(ticks)
ctx_after=$(awk '/voluntary_ctxt_switches/ && !/non/ {s+=$2} END {print s}' /proc/$pid/task/*/status)
rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
used_ms=$(( (after - before) * 1000 / hz ))
echo "idle daemon: ${used_ms} ms CPU in ${secs} s ($(awk -v m="$used_ms" -v s="$secs" 'BEGIN {printf "%.4f", m / (s * 10)}')% of one core), $(( (ctx_after - ctx_before) / secs )) wake-ups/s, RSS ${rss} kB"
