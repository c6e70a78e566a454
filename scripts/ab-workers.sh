#!/usr/bin/env bash
# ab -n 100000 -c 1000 against examples/hello with a rolling restart and an
# upgrade in the middle, in process mode (4 worker processes) and, for
# comparison, in goroutine mode (where a roll does not apply: two upgrades).
#   scripts/ab-workers.sh [process|goroutine]...
set -euo pipefail
cd "$(dirname "$0")/.."
modes=("${@:-process goroutine}")
dir=$(mktemp -d)
trap 'kill -9 $(cat "$dir"/run/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$dir"' EXIT
go build -ldflags "-X main.version=ab" -o "$dir/hello" ./examples/hello
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
port=$((20000 + RANDOM % 20000))
for mode in ${modes[@]}; do
	args=(--listen 127.0.0.1:$port --pidfile "$dir/run/hello.pid" --log-level warn)
	[ "$mode" = process ] && args+=(--workers 4 --worker-mode process)
	"$dir/hello" "${args[@]}" 2>"$dir/$mode.log" &
	for _ in $(seq 100); do [ -s "$dir/run/hello.pid" ] && break; sleep 0.05; done
	ab -q -n 100000 -c 1000 "http://127.0.0.1:$port/" >"$dir/ab.txt" 2>&1 &
	abpid=$!
	sleep 3
	if [ "$mode" = process ]; then kill -USR2 "$(cat "$dir/run/hello.pid")"; else kill -HUP "$(cat "$dir/run/hello.pid")"; fi
	sleep 3
	kill -HUP "$(cat "$dir/run/hello.pid")"
	wait $abpid || true
	echo "== $mode mode"
	grep -E "Complete requests|Failed requests|Non-2xx|Requests per second|Time taken" "$dir/ab.txt"
	grep -ciE "level=(warn|error)" "$dir/$mode.log" | sed 's/^/warn+error log lines: /' || true
	echo "after: $(curl -s "http://127.0.0.1:$port/healthz")"
	kill -TERM "$(cat "$dir/run/hello.pid")"
	while [ -e "$dir/run/hello.pid" ]; do sleep 0.1; done
done
