#!/usr/bin/env bash
# bench/compare.sh: arbor's benchmarks beside the same workloads on Erlang/OTP and CAF.
# `make bench-compare` builds everything and runs this; by hand:
#
#   bench/compare.sh [-r ROUNDS] [-w "WORKLOADS"] -a ARBOR_BENCH -p PEER_BUILD_DIR
#
# PEER_BUILD_DIR holds ebin/ (bench/peers/erlang compiled), caf/ (bench/peers/caf built)
# and floor/tcp_floor. Each round runs, workload by workload, arbor then Erlang then CAF,
# so machine drift over the run hits all three alike; the raw TCP floor runs once a round
# when a remote workload is chosen. Every program prints `name=W n=N seconds=S
# per_op_ns=NS ...`; the table gives the medians over the rounds and the ratios
# arbor/erlang and arbor/caf (below 1: arbor is faster, or smaller for spawn_idle_memory,
# whose figure is bytes_per_proc). A peer without the workload shows "-".
set -uo pipefail

rounds=3
workloads="spawn_exit spawn_exit_monitor spawn_idle_memory ping_pong ring fan_in gen_server_call
  supervisor_restart registry_get_or_spawn registry_send remote_ping_pong remote_oneway"
arbor= peers=
while getopts "r:w:a:p:" opt; do
  case $opt in
    r) rounds=$OPTARG ;; w) workloads=$OPTARG ;; a) arbor=$OPTARG ;; p) peers=$OPTARG ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
  esac
done
[ -x "$arbor" ] && [ -d "$peers/ebin" ] || { sed -n '2,14p' "$0" >&2; exit 2; }

raw=$peers/compare-raw.txt   # one line per result: "sys=S name=W ... per_op_ns=NS ..."
: >"$raw"
limit=900                    # seconds any one program may run

# Tags each `name=` line on stdin with sys=$1, keeping those of the chosen workloads.
keep() { grep '^name=' | while read -r line; do
  case " $workloads " in *" $(sed 's/^name=\([^ ]*\).*/\1/' <<<"$line") "*) echo "sys=$1 $line" ;; esac
done >>"$raw"; }

erl_run() { timeout "$limit" erl +S 2 +P 2000000 -noshell -pa "$peers/ebin" "$@"; }

# remote: a bare peer node, then the driving node, which prints both remote lines.
erlang_remote() {
  local cookie=c$RANDOM$RANDOM b=peer_b_$$@127.0.0.1
  erl_run -name "$b" -setcookie "$cookie" &
  local pid=$!
  erl_run -name "peer_a_$$@127.0.0.1" -setcookie "$cookie" -s remote main "$b"
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
}

run_erlang() {
  case $1 in
    remote_ping_pong | remote_oneway) erlang_remote ;;
    *) [ -e "$peers/ebin/$1.beam" ] && erl_run -s "$1" main ;;
  esac
}
run_caf() { [ -x "$peers/caf/$1" ] && timeout "$limit" "$peers/caf/$1"; }

for round in $(seq 1 "$rounds"); do
  remote_done=
  for w in $workloads; do
    echo "bench-compare: round $round/$rounds: $w" >&2
    timeout "$limit" "$arbor" "$w" | keep arbor
    erl_w=$w   # one Erlang remote run prints both remote lines: run it once a round
    case $w in remote_ping_pong | remote_oneway) [ -n "$remote_done" ] && erl_w=; remote_done=1 ;; esac
    [ -n "$erl_w" ] && run_erlang "$erl_w" 2>/dev/null | keep erlang
    run_caf "$w" 2>/dev/null | keep caf
  done
  case " $workloads " in *" remote_"*)
    echo "bench-compare: round $round/$rounds: raw TCP floor" >&2
    "$peers/floor/tcp_floor" | sed 's/^name=tcp_round_trip/name=remote_ping_pong/;
      s/^name=tcp_oneway/name=remote_oneway/' | keep floor ;;
  esac
done

# median SYS WORKLOAD: the median of that system's figures for the workload, or "".
median() {
  local key=per_op_ns
  [ "$2" = spawn_idle_memory ] && key=bytes_per_proc
  grep "^sys=$1 name=$2 " "$raw" | sed -n "s/.* $key=\([0-9.e+-]*\).*/\1/p" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR) printf "%.1f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
fmt() { [ -n "$1" ] && awk -v x="$1" 'BEGIN { printf(x < 100 ? "%.1f" : "%.0f", x) }' || printf -- "-"; }
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }' || printf -- "-"; }

echo
echo "| workload | unit | arbor | erlang | caf | arbor/erlang | arbor/caf |"
echo "|---|---|---|---|---|---|---|"
for w in $workloads; do
  a=$(median arbor "$w") e=$(median erlang "$w") c=$(median caf "$w") unit=ns/op
  [ "$w" = spawn_idle_memory ] && unit=bytes/process
  echo "| $w | $unit | $(fmt "$a") | $(fmt "$e") | $(fmt "$c") | $(ratio "$a" "$e") | $(ratio "$a" "$c") |"
done
for w in remote_ping_pong remote_oneway; do
  f=$(median floor "$w")
  [ -n "$f" ] && echo "| $w: raw TCP floor (bench/peers/floor) | ns/op | $(fmt "$f") | | | | |"
done
echo
echo "Medians of $rounds round(s), each runtime with 2 scheduler threads; raw lines in $raw."
