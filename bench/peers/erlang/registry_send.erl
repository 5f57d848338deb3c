%% registry_send: K live keys (default 10,000, -p); one client process sends N messages
%% (default 1,000,000) round-robin, each through a registry lookup; timed from the
%% client's first send until every entry has counted its N/K. Per message. A fresh
%% registry per run: warm-up N/10, then N.
-module(registry_send).
-export([main/0]).

main() ->
    K = peer_util:arg(p, 10000),
    N = peer_util:arg(n, 1000000),
    _ = run(K, N div 10),
    Sent = N div K * K,
    peer_util:emit(registry_send, Sent, run(K, N), [{keys, K}]),
    peer_util:halt().

run(K, N) ->
    Reg = peer_registry:start(),
    Keys = list_to_tuple([<<"key-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, K)]),
    Per = N div K,
    Me = self(),
    %% The keys are live, and know their share, before the clock starts.
    [peer_registry:get_or_spawn(Reg, Key) ! {expect, Per, Me} || Key <- tuple_to_list(Keys)],
    spawn(fun() -> Me ! {start, peer_util:now()}, send(Reg, Keys, K, Per * K) end),
    T0 = receive {start, T} -> T end,
    [receive counted -> ok end || _ <- lists:seq(1, K)],
    Ns = peer_util:now() - T0,
    peer_registry:stop(Reg),
    Ns.

send(_, _, _, 0) -> ok;
send(Reg, Keys, K, I) ->
    peer_registry:lookup(Reg, element(I rem K + 1, Keys)) ! {msg, I},
    send(Reg, Keys, K, I - 1).
