#!/usr/bin/env bash
# SIGTERM while a stream is running: the server stops intake, ends the stream (finished or
# aborted at --shutdown-timeout) with [DONE], and exits 0 within the bound.
# Usage: serve_shutdown_test.sh KVFERRY_BINARY SOURCE_DIR
set -euo pipefail
bin="$1"
src="$2"
dir="$(mktemp -d)"
source "$src/tests/serve_lib.sh"
trap 'stop_server; rm -rf "$dir"' EXIT
"$bin" model make-tiny "$dir/m" --dtype f32 --seed 5 --vocab 267 >/dev/null
start_server "$bin" "$dir/m" "$dir/server.log" --threads 1 --shutdown-timeout 2
body='{"model":"tiny","prompt":[1,2,3],"max_tokens":4000,"ignore_eos":true,"temperature":0,"stream":true}'
curl -sN --max-time 60 "http://127.0.0.1:$PORT/v1/completions" -d "$body" >"$dir/stream.txt" &
curl_pid=$!
for _ in $(seq 1 100); do grep -q '^data: ' "$dir/stream.txt" 2>/dev/null && break; sleep 0.05; done
grep -q '^data: ' "$dir/stream.txt" || { echo "the stream never started"; exit 1; }
start=$(date +%s.%N)
kill -TERM "$SERVER_PID"
code=""
for _ in $(seq 1 200); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    set +e; wait "$SERVER_PID"; code=$?; set -e
    break
  fi
  sleep 0.05
done
end=$(date +%s.%N)
SERVER_PID=""
test -n "$code" || { echo "server still running 10 s after SIGTERM"; exit 1; }
test "$code" -eq 0 || { echo "server exited $code"; cat "$dir/server.log"; exit 1; }
wait "$curl_pid" || true
tail -c 300 "$dir/stream.txt"
grep -q '^data: \[DONE\]' "$dir/stream.txt" || { echo "the stream was not ended with [DONE]"; exit 1; }
grep -q 'SIGTERM' "$dir/server.log" || { echo "no drain line in the log"; exit 1; }
echo "exited 0 $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }') s after SIGTERM"
echo OK
