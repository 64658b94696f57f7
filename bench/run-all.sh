#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md once, in order, with the commands it
# gives, and keeps what each printed in bench/results/<UTC time>/. Run it on
# a quiet machine: every figure shares the machine's cores with Redis, the
# load generator and the peer.
#
#   bash bench/run-all.sh            # full sizes (about 10 minutes)
#   TASKS=10000 bash bench/run-all.sh  # a quick pass with fewer tasks
#
# Needs: cargo, redis-server, node + npm (BullMQ), wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."

tasks="${TASKS:-100000}"
latency_tasks="${LATENCY_TASKS:-10000}"
scale_tasks="${SCALE_TASKS:-1000000}"
out="bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"

cargo build --release --bins
(cd bench/bullmq && npm ci --silent)
bench=./target/release/savestream-bench

run() {
    local name="$1"
    shift
    echo "== $name: $*" | tee "$out/$name.txt"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/$name.txt"
    "$@" 2>&1 | tee -a "$out/$name.txt"
}

run queue "$bench" queue --tasks "$tasks" --slots 64
run phases "$bench" phases --tasks "$((tasks / 2))" --batch 64
run latency "$bench" latency --tasks "$latency_tasks"
run api "$bench" api --seconds 10 --connections 64
run download "$bench" download
run scale "$bench" scale --tasks "$scale_tasks" --samples 1000
echo "results in $out"
