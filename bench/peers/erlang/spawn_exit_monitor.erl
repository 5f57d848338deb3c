%% spawn_exit_monitor: one process spawn_monitors N processes that end at once and waits
%% for every 'DOWN'. Timed from the first spawn to the last DOWN; per spawn.
%% Warm-up N/10, then N.
-module(spawn_exit_monitor).
-export([main/0]).

main() ->
    N = peer_util:arg(n, 1000000),
    _ = run(N div 10),
    peer_util:emit(spawn_exit_monitor, N, run(N), []),
    peer_util:halt().

run(N) ->
    T0 = peer_util:now(),
    spawn_n(N),
    downs(N),
    peer_util:now() - T0.

spawn_n(0) -> ok;
spawn_n(K) -> spawn_monitor(fun() -> ok end), spawn_n(K - 1).

downs(0) -> ok;
downs(K) -> receive {'DOWN', _, process, _, _} -> downs(K - 1) end.
