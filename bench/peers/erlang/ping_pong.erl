%% ping_pong: two processes, N round trips of a small message ({Ping, K} out, K back).
%% Timed inside the ping process; per round trip. A fresh pair per run: warm-up N/10,
%% then N.
-module(ping_pong).
-export([main/0]).

main() ->
    N = peer_util:arg(n, 1000000),
    _ = run(N div 10),
    peer_util:emit(ping_pong, N, run(N), []),
    peer_util:halt().

run(N) ->
    Me = self(),
    Pong = spawn(fun pong/0),
    spawn(fun() ->
                  T0 = peer_util:now(),
                  ping(Pong, N),
                  Me ! {took, peer_util:now() - T0}
          end),
    receive {took, Ns} -> Pong ! stop, Ns end.

ping(_, 0) -> ok;
ping(Pong, K) ->
    Pong ! {self(), K},
    receive K -> ping(Pong, K - 1) end.

pong() ->
    receive
        {From, K} -> From ! K, pong();
        stop -> ok
    end.
