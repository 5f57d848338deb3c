%% fan_in: S senders (default 1,000) each send M small messages (default 1,000) to one
%% receiver; timed from the first "go" until the receiver has them all. Per message.
%% Fresh processes per run: warm-up S x M/10, then S x M.
-module(fan_in).
-export([main/0]).

main() ->
    S = peer_util:arg(p, 1000),
    M = peer_util:arg(n, 1000),
    _ = run(S, M div 10),
    Ns = run(S, M),
    peer_util:emit(fan_in, S * M, Ns, [{senders, S}, {msgs_per_s, S * M * 1.0e9 / Ns}]),
    peer_util:halt().

run(S, M) ->
    Me = self(),
    Recv = spawn(fun() -> count(S * M), Me ! all_in end),
    Senders = [spawn(fun() -> receive go -> blast(Recv, M) end end) || _ <- lists:seq(1, S)],
    T0 = peer_util:now(),
    [Pid ! go || Pid <- Senders],
    receive all_in -> peer_util:now() - T0 end.

blast(_, 0) -> ok;
blast(To, K) -> To ! {msg, K}, blast(To, K - 1).

count(0) -> ok;
count(K) -> receive {msg, _} -> count(K - 1) end.
