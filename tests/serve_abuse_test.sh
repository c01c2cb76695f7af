#!/usr/bin/env bash
# At least 200 malformed or hostile requests against `kvferry serve`; it must keep serving and
# free every KV block afterwards. Usage: serve_abuse_test.sh KVFERRY_BINARY SOURCE_DIR
set -euo pipefail
bin="$1"
src="$2"
dir="$(mktemp -d)"
source "$src/tests/serve_lib.sh"
trap 'stop_server; rm -rf "$dir"' EXIT
"$bin" model make-tiny "$dir/m" --dtype f32 --seed 5 --vocab 267 >/dev/null
start_server "$bin" "$dir/m" "$dir/server.log" --threads 1 --max-model-len 256 --api-key secret
timeout 240 node "$src/tests/serve_abuse_test.mjs" "http://127.0.0.1:$PORT"
kill -0 "$SERVER_PID" || { echo "server died"; cat "$dir/server.log"; exit 1; }
stop_server
echo OK
