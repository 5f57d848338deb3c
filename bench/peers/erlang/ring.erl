%% ring: P processes in a ring (default 10,000) pass a token H hops (default 1,000,000);
%% the process that receives it with 0 hops to go tells the driver. Per hop. One ring:
%% a pass of H/10 as warm-up, then H.
-module(ring).
-export([main/0]).

main() ->
    P = peer_util:arg(p, 10000),
    H = peer_util:arg(n, 1000000),
    First = build(P),
    _ = pass(First, H div 10),
    peer_util:emit(ring, H, pass(First, H), [{procs, P}]),
    peer_util:halt().

%% Spawns P members, then tells each its successor.
build(P) ->
    Me = self(),
    Pids = [spawn(fun() -> receive {next, Next} -> member(Next, Me) end end)
            || _ <- lists:seq(1, P)],
    [First | _] = Pids,
    Nexts = tl(Pids) ++ [First],
    lists:foreach(fun({Pid, Next}) -> Pid ! {next, Next} end, lists:zip(Pids, Nexts)),
    First.

member(Next, Driver) ->
    receive
        {token, 0} -> Driver ! token_home;
        {token, K} -> Next ! {token, K - 1}
    end,
    member(Next, Driver).

pass(First, H) ->
    T0 = peer_util:now(),
    First ! {token, H},
    receive token_home -> peer_util:now() - T0 end.
