%% supervisor_restart: a one_for_one supervisor (intensity 1,000,000 per second) with one
%% permanent gen_server worker (supervisor_restart_worker, brutal_kill). Per cycle, timed
%% by the driver: send `crash` to the current child, hear its `crashing`, hear the new
%% child's `up` from its init/1. per_op_ns is the mean cycle, seconds their sum.
%% Warm-up: 1,000 restarts on a fresh supervisor. Then N (default 10,000) restarts on
%% fresh supervisors of P (default 100) restarts each, so OTP's restart history (a list
%% it walks on each restart) stays short, as arbor's run does. Starting and stopping the
%% supervisors is not timed. Logging is off: crash reports would dominate the cost.
-module(supervisor_restart).
-behaviour(supervisor).
-export([main/0, init/1]).

main() ->
    N = peer_util:arg(n, 10000),
    P = peer_util:arg(p, 100),
    ok = logger:set_primary_config(level, none),
    process_flag(trap_exit, true),
    _ = cycles_on_fresh_sup(1000),
    Cycles = lists:append([cycles_on_fresh_sup(P) || _ <- lists:seq(1, N div P)]),
    Sum = lists:sum(Cycles),
    Sorted = lists:sort(Cycles),
    Median = lists:nth((length(Sorted) + 1) div 2, Sorted),
    peer_util:emit(supervisor_restart, length(Cycles), Sum,
                   [{cycle_median_ns, Median}, {restarts_per_sup, P}]),
    peer_util:halt().

%% K restarts on a new supervisor; returns the cycle times.
cycles_on_fresh_sup(K) ->
    {ok, Sup} = supervisor:start_link(?MODULE, self()),
    Child = receive {up, C} -> C end,
    Cycles = crash(Child, K, []),
    unlink(Sup),
    exit(Sup, shutdown),
    Cycles.

crash(_, 0, Acc) -> Acc;
crash(Child, K, Acc) ->
    T0 = peer_util:now(),
    Child ! crash,
    receive {crashing, Child} -> ok end,
    receive {up, New} -> crash(New, K - 1, [peer_util:now() - T0 | Acc]) end.

init(Driver) ->
    Worker = #{id => worker, start => {supervisor_restart_worker, start_link, [Driver]},
               restart => permanent, shutdown => brutal_kill},
    {ok, {#{strategy => one_for_one, intensity => 1000000, period => 1}, [Worker]}}.
