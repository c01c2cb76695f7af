# Helpers shared by the disaggregation tests (sourced, not run). The caller sets `bin`
# (the kvferry binary) before sourcing; this file makes `work` (a temp dir), the `pids`
# array and an EXIT trap that stops every process started with `start` and removes `work`.
work="$(mktemp -d /tmp/kvf-disagg-XXXXXX)"
pids=()
lib_cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  rm -rf "$work"
}
trap lib_cleanup EXIT
dump_logs() {
  for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -30 "$f"; }; done
}
die() {
  echo "FAIL: $*"
  dump_logs
  exit 1
}

pick() { python3 "$here/pick_port.py" "$work/.ports"; }

common=(--served-model-name tiny --kv-cache-dtype float32 --max-model-len 4096 --host 127.0.0.1)
make_model() {
  "$bin" model make-tiny "$work/m" --dtype f32 --seed 11 --layers 2 --hidden 64 >/dev/null || die "make-tiny"
}

# start NAME [ENV=VALUE ...] -- ARGS...: runs `kvferry ARGS` in the background, log in $work/NAME.log;
# sets the variable pid_NAME.
start() {
  local name="$1"; shift
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" nice -n 19 "$bin" "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  printf -v "pid_$name" '%s' "$!"
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time "${2:-2}" "$1"; }
# wait_healthy URL [SECONDS]
wait_healthy() {
  local n=$(( ${2:-60} * 10 ))
  for _ in $(seq "$n"); do
    [ "$(http_code "$1/health")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}
# metric URL NAME → sum over its samples (labels ignored); -1 when /metrics does not answer
metric() {
  local body
  body="$(curl -s --max-time 5 "$1/metrics")" || { echo -1; return; }
  awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d\n", s }' <<<"$body"
}
# wait_metric URL NAME VALUE SECONDS: true once the metric equals VALUE
wait_metric() {
  local n=$(( $4 * 10 )) v
  for _ in $(seq "$n"); do
    v=$(metric "$1" "$2")
    [ "$v" = "$3" ] && return 0
    sleep 0.1
  done
  echo "  $1 $2 = $v after $4 s (want $3)"
  return 1
}
