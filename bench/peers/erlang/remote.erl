%% remote_ping_pong and remote_oneway: two nodes (two OS processes) on loopback.
%% Started on the driving node with the peer node's name; the peer is a bare node with
%% the same cookie and this directory on its code path (compare.sh starts both):
%%   erl -sname b -setcookie C -noshell -pa ebin &
%%   erl -sname a -setcookie C -noshell -pa ebin -s remote main b@HOST
%% remote_ping_pong: a local ping and a pong spawned on the peer, N round trips (default
%% 100,000); per round trip. remote_oneway: M one-way messages (default 1,000,000) to a
%% sink on the peer, timed until the sink says it has them all; per message.
%% Each has a warm-up of a tenth first. Prints both lines, then halts the peer.
-module(remote).
-export([main/1, pong/0, sink/2]).

main([Peer]) ->
    N = peer_util:arg(n, 100000),
    M = peer_util:arg(m, 1000000),
    ok = connect(Peer, 100),
    _ = ping_pong(Peer, N div 10),
    peer_util:emit(remote_ping_pong, N, ping_pong(Peer, N), []),
    _ = oneway(Peer, M div 10),
    Ns = oneway(Peer, M),
    peer_util:emit(remote_oneway, M, Ns, [{msgs_per_s, M * 1.0e9 / Ns}]),
    spawn(Peer, erlang, halt, []),
    timer:sleep(100),
    peer_util:halt().

%% The peer may still be starting: retry for up to 10 s.
connect(_, 0) -> {error, no_peer};
connect(Peer, Tries) ->
    case net_kernel:connect_node(Peer) of
        true -> ok;
        _ -> timer:sleep(100), connect(Peer, Tries - 1)
    end.

ping_pong(Peer, N) ->
    Pong = spawn(Peer, ?MODULE, pong, []),
    T0 = peer_util:now(),
    ping(Pong, N),
    Ns = peer_util:now() - T0,
    Pong ! stop,
    Ns.

ping(_, 0) -> ok;
ping(Pong, K) -> Pong ! {self(), K}, receive K -> ping(Pong, K - 1) end.

pong() ->
    receive
        {From, K} -> From ! K, pong();
        stop -> ok
    end.

oneway(Peer, M) ->
    Sink = spawn(Peer, ?MODULE, sink, [self(), M]),
    T0 = peer_util:now(),
    blast(Sink, M),
    receive {all_in, Sink} -> peer_util:now() - T0 end.

blast(_, 0) -> ok;
blast(Sink, K) -> Sink ! {msg, K}, blast(Sink, K - 1).

sink(Driver, 0) -> Driver ! {all_in, self()};
sink(Driver, K) -> receive {msg, _} -> sink(Driver, K - 1) end.
