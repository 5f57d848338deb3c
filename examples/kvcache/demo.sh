#!/usr/bin/env bash
# The kvcache demo (make demo): starts kvcache on a free loopback port, drives it with
# redis-cli through sets, gets, an expiry, INCR, a crashed bucket, a crashed connection,
# an idle reap and INFO, while kvcache's own lines (lifecycle events, crash reports) show
# as they happen; then stops it with SIGINT (an ordered stop) and checks its summary.
# Exits 0 only if every check held.   usage: demo.sh [path/to/kvcache]
set -uo pipefail

KV=${1:-build/examples/kvcache}
LOG=$(mktemp /tmp/kvcache-demo.XXXXXX)
KV_PID=
fails=0
trap '[ -n "$KV_PID" ] && kill -KILL "$KV_PID" 2>/dev/null; rm -f "$LOG"' EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
check() { # check WHAT GOT WANT
    if [ "$2" = "$3" ]; then echo "   ok: $1"; else echo "   FAILED: $1: got '$2', want '$3'"; fails=$((fails + 1)); fi
}
# Polls until a command's output equals want, for at most 5 s; prints the last output.
wait_for() { # wait_for WANT CMD...
    local want=$1 got=; shift
    for _ in $(seq 100); do
        got=$("$@" 2>&1) && [ "$got" = "$want" ] && break
        sleep 0.05
    done
    echo "$got"
}
# Polls kvcache's output for a line matching an extended regex, for at most 5 s.
wait_log() { for _ in $(seq 100); do grep -qE "$1" "$LOG" && return 0; sleep 0.05; done; return 1; }
logged() { if wait_log "$2"; then check "$1" yes yes; else check "$1" "not seen" "a line matching /$2/"; fi; }

command -v redis-cli >/dev/null || { echo "demo: redis-cli is missing (Debian: redis-tools)"; exit 1; }
say "start kvcache (port 0: the system picks one; buckets idle 300 ms are reaped)"
"$KV" --listen 127.0.0.1:0 --idle-ms 300 > >(tee "$LOG") 2>&1 &
KV_PID=$!
wait_log 'listening on 127\.0\.0\.1:[0-9]+' || { echo "demo: kvcache did not start"; exit 1; }
PORT=$(sed -nE 's/.*listening on 127\.0\.0\.1:([0-9]+).*/\1/p' "$LOG" | head -1)
cli() { redis-cli -p "$PORT" "$@"; }

say "SET and GET: each key is a bucket process, started by its first write"
check "SET greeting hello" "$(cli SET greeting hello)" OK
check "GET greeting" "$(cli GET greeting)" hello
check "GET missing (starts nothing)" "$(cli GET missing)" ""
check "SET binary-safe value" "$(printf 'a\0b' | cli -x SET blob)" OK
check "GET blob: its 3 bytes, the NUL too (od)" "$(cli GET blob | od -An -c | tr -s ' ')" " a \\0 b \\n"

say "SET with PX 200: the bucket arms a timer and ends when it fires"
check "SET session abc PX 200" "$(cli SET session abc PX 200)" OK
check "GET session before" "$(cli GET session)" abc
check "GET session after it expired" "$(wait_for "" cli GET session)" ""

say "INCR"
cli INCR hits >/dev/null; cli INCR hits >/dev/null
check "INCR hits (third)" "$(cli INCR hits)" 3
check "INCR greeting" "$(cli INCR greeting)" "ERR value is not an integer or out of range"

say "CRASH victim: that key's bucket fails on purpose; nothing else does"
check "SET victim 1" "$(cli SET victim 1)" OK
check "CRASH victim" "$(cli CRASH victim)" "ERR bucket crashed"
logged "its EXIT event" 'EXIT .*kv\.bucket .*told to crash'
logged "its crash report" 'arbor: EXIT .*behaviour=kv\.bucket reason=error'
check "GET victim (its value went with it)" "$(cli GET victim)" ""
check "GET greeting (other keys intact)" "$(cli GET greeting)" hello
check "SET victim 2 (the key works again)" "$(cli SET victim 2)" OK
check "GET victim" "$(cli GET victim)" 2

say "CRASH CONNECTION: this client's connection process fails; it is not restarted"
cli CRASH CONNECTION >/dev/null 2>&1
logged "its EXIT event" 'EXIT .*kv\.conn .*CRASH CONNECTION'
logged "its crash report" 'arbor: EXIT .*behaviour=kv\.conn reason=error'
check "PING on a new connection" "$(cli PING)" PONG

say "CRASH ACCEPTOR: the acceptor dies; the root supervisor restarts it on the same port"
check "CRASH ACCEPTOR" "$(cli CRASH ACCEPTOR)" OK
logged "its RESTART event" 'RESTART .*kv\.acceptor .*acceptor \(was <'
logged "the crash report of the restart" 'arbor: RESTART supervisor=<.* child=acceptor'
check "GET greeting through the new acceptor" "$(wait_for hello cli GET greeting)" hello

say "idle reap: untouched for 300 ms, every bucket is reaped and DBSIZE drops to 0"
echo "   DBSIZE now: $(cli DBSIZE)"
check "DBSIZE after the reaper" "$(wait_for 0 cli DBSIZE)" 0
logged "REAP events" 'REAP .*kv\.bucket .*key "greeting"'

say "INFO: arbor's counters and the stats process's event tallies"
cli INFO | tr -d '\r' | sed -n '/# Clients/,$p' | sed 's/^/   /'
check "INFO counts the reaps" "$(cli INFO | tr -d '\r' | grep -c '^reap:[1-9]')" 1

say "SIGINT: the tree stops in order (acceptor, connections, buckets, stats)"
kill -INT "$KV_PID"
wait "$KV_PID"
status=$?
KV_PID=
check "kvcache exit status" "$status" 0
logged "its summary" 'kvcache: served [0-9]+ requests on [0-9]+ connections'

echo
if [ "$fails" -eq 0 ]; then echo "demo: all checks passed"; else echo "demo: $fails checks FAILED"; fi
[ "$fails" -eq 0 ]
