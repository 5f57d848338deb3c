%% spawn_exit: one process spawns N processes that end at once; timed until every one of
%% them has ended. The last child to finish (found with a shared atomic counter, as
%% arbor's terminate callbacks do) tells the spawner. Per spawn. Warm-up N/10, then N.
-module(spawn_exit).
-export([main/0]).

main() ->
    N = peer_util:arg(n, 1000000),
    _ = run(N div 10),
    peer_util:emit(spawn_exit, N, run(N), []),
    peer_util:halt().

run(N) ->
    Left = atomics:new(1, []),
    atomics:put(Left, 1, N),
    Me = self(),
    Child = fun() -> atomics:sub_get(Left, 1, 1) =:= 0 andalso (Me ! all_done) end,
    T0 = peer_util:now(),
    spawn_n(Child, N),
    receive all_done -> peer_util:now() - T0 end.

spawn_n(_, 0) -> ok;
spawn_n(F, K) -> spawn(F), spawn_n(F, K - 1).
