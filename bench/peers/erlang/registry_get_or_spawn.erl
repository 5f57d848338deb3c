%% registry_get_or_spawn: one client process gets-or-spawns N distinct keys (default
%% 1,000,000) through peer_registry, each a new idle entry. Timed inside the client; per
%% key. A fresh registry per run: warm-up N/10, then N.
-module(registry_get_or_spawn).
-export([main/0]).

main() ->
    N = peer_util:arg(n, 1000000),
    _ = run(N div 10),
    peer_util:emit(registry_get_or_spawn, N, run(N), []),
    peer_util:halt().

run(N) ->
    Reg = peer_registry:start(),
    Me = self(),
    spawn(fun() ->
                  T0 = peer_util:now(),
                  keys(Reg, N),
                  Me ! {took, peer_util:now() - T0}
          end),
    Ns = receive {took, T} -> T end,
    N = ets:info(element(2, Reg), size),         % every key made its entry
    peer_registry:stop(Reg),
    Ns.

keys(_, 0) -> ok;
keys(Reg, I) ->
    _ = peer_registry:get_or_spawn(Reg, <<"key-", (integer_to_binary(I))/binary>>),
    keys(Reg, I - 1).
