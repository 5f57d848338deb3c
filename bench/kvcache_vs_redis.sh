#!/usr/bin/env bash
# kvcache beside redis-server, under redis-benchmark, in the same run: GET and SET from
# 50 clients on loopback, without pipelining and with -P 16, each server started fresh on
# a free port (redis-server without persistence). Prints requests/s and p99 for both and
# their ratios, against the target: kvcache at least 0.5x redis's throughput and a p99
# within 2x. Rounds alternate which server goes first; the table shows medians.
#
# --crash instead checks that crashing buckets loses nothing else: redis-benchmark runs
# over a keyspace (-r) while CRASH commands hit random keys of it, and must complete
# every request; then a checker SETs keys, crashes some, and reads all of them back.
#
#   bench/kvcache_vs_redis.sh [-n N] [-N N_PIPELINED] [-c CLIENTS] [-r KEYSPACE]
#                             [-R ROUNDS] [-k path/to/kvcache] [--crash]
# Standalone (not run by make or CI); needs redis-server and redis-tools. Run it on an
# idle machine: both servers and the client share its CPUs.
set -uo pipefail

N=100000 NP=1000000 CLIENTS=50 KEYS= ROUNDS=3 KV=build/examples/kvcache CRASH=0
while [ $# -gt 0 ]; do
    case $1 in
    -n) N=$2; shift ;;
    -N) NP=$2; shift ;;
    -c) CLIENTS=$2; shift ;;
    -r) KEYS=$2; shift ;;
    -R) ROUNDS=$2; shift ;;
    -k) KV=$2; shift ;;
    --crash) CRASH=1 ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
    esac
    shift
done
for t in redis-benchmark redis-cli redis-server "$KV"; do
    command -v "$t" >/dev/null || { echo "missing: $t (apt-get install redis-server redis-tools; make)"; exit 2; }
done

TMP=$(mktemp -d /tmp/kvbench.XXXXXX)
KV_PID= RS_PID=
cleanup() {
    [ -n "$KV_PID" ] && kill -INT "$KV_PID" 2>/dev/null && wait "$KV_PID" 2>/dev/null
    [ -n "$RS_PID" ] && kill "$RS_PID" 2>/dev/null && wait "$RS_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

start_kvcache() { # start_kvcache [extra flags]: sets KV_PORT
    "$KV" --listen 127.0.0.1:0 "$@" >"$TMP/kv.log" 2>&1 &
    KV_PID=$!
    for _ in $(seq 200); do
        KV_PORT=$(sed -nE 's/.*listening on 127\.0\.0\.1:([0-9]+).*/\1/p' "$TMP/kv.log" | head -1)
        [ -n "$KV_PORT" ] && return 0
        sleep 0.05
    done
    echo "kvcache did not start:"; cat "$TMP/kv.log"; exit 1
}

start_redis() { # sets RS_PORT; retries another random port if one is taken
    for _ in $(seq 20); do
        RS_PORT=$((20000 + RANDOM % 30000))
        redis-server --port "$RS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no >"$TMP/redis.log" 2>&1 &
        RS_PID=$!
        for _ in $(seq 100); do
            [ "$(redis-cli -p "$RS_PORT" PING 2>/dev/null)" = PONG ] && return 0
            kill -0 "$RS_PID" 2>/dev/null || break
            sleep 0.05
        done
        kill "$RS_PID" 2>/dev/null; wait "$RS_PID" 2>/dev/null; RS_PID=
    done
    echo "redis-server did not start:"; cat "$TMP/redis.log"; exit 1
}

# bench PORT PIPELINE REQUESTS: prints "TEST rps p99_ms" per test, from redis-benchmark's
# CSV ("test","rps","avg","min","p50","p95","p99","max"). Fails if it did not finish.
bench() {
    local out
    out=$(timeout 600 redis-benchmark -h 127.0.0.1 -p "$1" -c "$CLIENTS" -n "$3" -P "$2" \
        -t set,get ${KEYS:+-r "$KEYS"} --csv 2>"$TMP/bench.err") || {
        echo "redis-benchmark failed on port $1:"; cat "$TMP/bench.err"; return 1; }
    echo "$out" | tr -d '"' | awk -F, 'NR > 1 && NF >= 7 { print $1, $2, $7 }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

compare() {
    start_kvcache --quiet
    start_redis
    echo "kvcache on port $KV_PORT, redis-server $(redis-server --version | sed -E 's/.*v=([^ ]+).*/\1/') on port $RS_PORT;" \
        "$CLIENTS clients, -n $N (-P 16: -n $NP)${KEYS:+, -r $KEYS}, $ROUNDS rounds"
    for r in $(seq "$ROUNDS"); do
        for p in 1 16; do
            n=$N; [ "$p" = 16 ] && n=$NP
            order="kvcache redis"; [ $((r % 2)) = 0 ] && order="redis kvcache"
            for s in $order; do
                port=$KV_PORT; [ "$s" = redis ] && port=$RS_PORT
                bench "$port" "$p" "$n" | sed "s/^/$s $p /" >>"$TMP/results" || exit 1
            done
        done
        echo "  round $r done"
    done
    echo
    printf '%-4s %-3s %12s %12s %6s   %9s %9s %6s   %s\n' test -P "kvcache r/s" "redis r/s" ratio \
        "kv p99" "redis p99" ratio target
    miss=0
    for p in 1 16; do
        for t in SET GET; do
            pick() { awk -v s="$1" -v p="$p" -v t="$t" -v f="$2" '$1 == s && $2 == p && $3 == t { print $f }' "$TMP/results" | median; }
            kr=$(pick kvcache 4) rr=$(pick redis 4) kl=$(pick kvcache 5) rl=$(pick redis 5)
            line=$(awk -v kr="$kr" -v rr="$rr" -v kl="$kl" -v rl="$rl" -v t="$t" -v p="$p" 'BEGIN {
                tr = kr / rr; lr = kl / rl; ok = (tr >= 0.5 && lr <= 2.0)
                printf "%-4s %-3s %12.0f %12.0f %5.2fx   %7.3fms %7.3fms %5.2fx   %s\n", t, p, kr, rr, tr, kl, rl, lr, ok ? "ok" : "MISSED" }')
            echo "$line"
            case $line in *MISSED) miss=1 ;; esac
        done
    done
    echo
    echo "target: kvcache >= 0.5x redis-server's requests/s, p99 <= 2x; $([ $miss = 0 ] && echo met || echo MISSED)"
    return $miss
}

crash_run() {
    KEYS=${KEYS:-10000}
    start_kvcache --quiet
    local cli="redis-cli -p $KV_PORT" fails=0
    echo "kvcache on port $KV_PORT: redis-benchmark over -r $KEYS keys while CRASH hits random keys"
    for p in 1 16; do
        n=$N; [ "$p" = 16 ] && n=$NP
        bench "$KV_PORT" "$p" "$n" >"$TMP/crash.$p" &
        local bpid=$! crashes=0 hit=0
        while kill -0 "$bpid" 2>/dev/null; do
            r=$($cli CRASH "$(printf 'key:%012d' $(((RANDOM * 32768 + RANDOM) % KEYS)))" 2>&1)
            crashes=$((crashes + 1))
            [ "$r" = "ERR bucket crashed" ] && hit=$((hit + 1))
        done
        if wait "$bpid" && [ "$(wc -l <"$TMP/crash.$p")" = 2 ]; then
            echo "  -P $p: every request of SET and GET answered ($n each) with $hit buckets crashed" \
                "($crashes CRASH sent; the rest found no key):" $(awk '{ printf "%s %.0f r/s  ", $1, $2 }' "$TMP/crash.$p")
        else
            echo "  -P $p: FAILED: redis-benchmark did not complete"; fails=$((fails + 1))
        fi
    done

    local m=2000 i
    echo "checker: SET $m keys, CRASH every 10th, GET all back"
    for i in $(seq "$m"); do echo "SET chk:$i v$i"; done | $cli >"$TMP/set.out"
    [ "$(grep -c '^OK$' "$TMP/set.out")" = "$m" ] || { echo "  FAILED: the SETs"; fails=$((fails + 1)); }
    for i in $(seq 10 10 "$m"); do echo "CRASH chk:$i"; done | $cli >"$TMP/crash.out"
    local crashed; crashed=$(grep -c '^ERR bucket crashed$' "$TMP/crash.out")
    for i in $(seq "$m"); do echo "GET chk:$i"; done | $cli >"$TMP/get.out"
    local lost; lost=$(awk '{ want = (NR % 10) ? "v" NR : "" } $0 != want { bad++ } END { print bad + 0 }' "$TMP/get.out")
    echo "  $crashed of $((m / 10)) crashed as asked; $((m - m / 10)) others read back with $lost wrong" \
        "(the crashed ones read as missing)"
    [ "$crashed" = $((m / 10)) ] && [ "$lost" = 0 ] || fails=$((fails + 1))
    [ "$($cli PING)" = PONG ] || { echo "  FAILED: kvcache does not answer"; fails=$((fails + 1)); }
    echo "crash reports logged: $(grep -c 'arbor: EXIT .*kv.bucket' "$TMP/kv.log")"
    echo "crash run: $([ $fails = 0 ] && echo passed || echo "$fails FAILED")"
    return $fails
}

if [ "$CRASH" = 1 ]; then crash_run; else compare; fi
