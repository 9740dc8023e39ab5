#!/usr/bin/env bash
# Scale-out figures: videos/s with 1, 2 and 3 `momentminer worker` processes (one thread each)
# sharing one Redis stream, and how long the others take to take over the messages of a
# worker killed with SIGKILL. Needs redis-server and redis-cli (scripts/setup.sh test) and a
# release build (cargo build --release). Usage: scripts/queue-bench.sh [videos] [dim]
set -euo pipefail
cd "$(dirname "$0")/.."
videos=${1:-2000}
dim=${2:-1024}
bin=$PWD/target/release/momentminer
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly yes --dir "$work" >/dev/null &
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
"$bin" synth --out "$work/world" --videos "$videos" --dim "$dim" \
  --set synth.frames_min=90 --set synth.frames_max=90 >/dev/null
rc() { redis-cli -p "$port" "$@"; }
settings=(--set "queue.url=redis://127.0.0.1:$port" --set daemon.workers=1 --set queue.block_ms=200)
pids=()
stop_workers() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=(); }
run() { # $1 = workers, $2 = claim idle ms; leaves the workers running
  rc flushall >/dev/null
  rm -rf "$work/out" "$work/q" "$work/state"
  "$bin" enqueue "$work/world/features" "${settings[@]}" >/dev/null
  start=$(date +%s.%N)
  for i in $(seq 1 "$1"); do
    "$bin" worker --name "w$i" "${settings[@]}" --set "queue.claim_idle_ms=$2" \
      --set "daemon.output=$work/out" --set "daemon.quarantine=$work/q" \
      --set "daemon.state=$work/state" 2>/dev/null &
    pids+=($!)
  done
}
wait_done() {
  until [ "$(ls "$work/out/proposals" 2>/dev/null | wc -l)" -ge "$videos" ] &&
        [ "$(rc xpending momentminer:inputs momentminer | head -1)" = 0 ]; do sleep 0.02; done
}
for n in 1 2 3; do
  run "$n" 30000
  wait_done
  end=$(date +%s.%N)
  stop_workers
  python3 -c "print('$n worker(s): %.0f videos/s' % ($videos / ($end - $start)))"
done
# Reclaim: kill w1 of three mid-run, time until nothing is pending for it.
claim=2000
run 3 "$claim"
until [ "$(ls "$work/out/proposals" 2>/dev/null | wc -l)" -ge $((videos / 4)) ]; do sleep 0.01; done
kill -KILL "${pids[0]}"
killed=$(date +%s.%N)
held() { rc xinfo consumers momentminer:inputs momentminer | grep -A3 '^w1$' | sed -n 3p; }
before=$(held)
until [ "$(held)" = 0 ]; do sleep 0.01; done
taken=$(date +%s.%N)
wait_done
python3 -c "print('w1 killed holding $before messages; taken over after %.2f s (queue.claim_idle_ms = $claim)' % ($taken - $killed))"
stop_workers
