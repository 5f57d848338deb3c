%% gen_server_call: a client process makes N gen_server:call/2 round trips (default
%% timeout, 5 s) to a server that answers each with its integer and counts them. Timed
%% inside the client; per call. One server, a fresh client per run: warm-up N/10, then N.
-module(gen_server_call).
-behaviour(gen_server).
-export([main/0, init/1, handle_call/3, handle_cast/2]).

main() ->
    N = peer_util:arg(n, 1000000),
    {ok, Server} = gen_server:start(?MODULE, 0, []),
    _ = run(Server, N div 10),
    Ns = run(Server, N),
    Served = gen_server:call(Server, count),
    Served = N + N div 10,                     % every call reached the server
    peer_util:emit(gen_server_call, N, Ns, []),
    peer_util:halt().

run(Server, N) ->
    Me = self(),
    spawn(fun() ->
                  T0 = peer_util:now(),
                  calls(Server, N),
                  Me ! {took, peer_util:now() - T0}
          end),
    receive {took, Ns} -> Ns end.

calls(_, 0) -> ok;
calls(Server, K) -> K = gen_server:call(Server, K), calls(Server, K - 1).

init(Count) -> {ok, Count}.
handle_call(count, _From, Count) -> {reply, Count, Count};
handle_call(K, _From, Count) -> {reply, K, Count + 1}.
handle_cast(_, Count) -> {noreply, Count}.
