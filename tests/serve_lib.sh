# Helpers for the serve tests (sourced). Start `kvferry serve` on 127.0.0.1 with port 0, learn
# the port from its startup line, wait (bounded) for /health.
#   start_server BIN MODEL_DIR LOG [extra flags...]   sets SERVER_PID and PORT
#   stop_server                                      SIGTERM, bounded wait, SIGKILL as a last resort

start_server() {
  local bin="$1" model="$2" log="$3"
  shift 3
  "$bin" serve "$model" --host 127.0.0.1 --port 0 --served-model-name tiny "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  PORT=""
  for _ in $(seq 1 600); do
    PORT="$(grep -o 'at http://127.0.0.1:[0-9]*' "$log" | head -1 | sed 's/.*://')" || true
    if [ -n "$PORT" ] && curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "server died:"; cat "$log"; return 1; fi
    sleep 0.1
  done
  echo "server did not become healthy in 60 s:"; cat "$log"; return 1
}

stop_server() {
  [ -n "${SERVER_PID:-}" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

# Prints the value of a Prometheus sample (first match of the metric name).
metric() {
  curl -sf "http://127.0.0.1:$PORT/metrics" | grep -E "^$1[{ ]" | head -1 | awk '{print $NF}'
}
