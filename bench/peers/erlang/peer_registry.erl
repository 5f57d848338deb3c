%% A keyed registry as Erlang users build one (Elixir's Registry and gproc work this way):
%% a registry process owns a protected ETS table Key -> Pid (read_concurrency) and monitors
%% each entry; callers read the table themselves and call the registry only on a miss.
%% Entries count the messages they get and report once they have the share they expect.
-module(peer_registry).
-export([start/0, stop/1, get_or_spawn/2, lookup/2]).

%% Returns {RegistryPid, Table}.
start() ->
    Me = self(),
    Reg = spawn(fun() ->
                        Tab = ets:new(?MODULE, [set, protected, {read_concurrency, true}]),
                        Me ! {table, Tab},
                        loop(Tab)
                end),
    receive {table, Tab} -> {Reg, Tab} end.

stop({Reg, _}) ->
    Ref = monitor(process, Reg),
    Reg ! stop,
    receive {'DOWN', Ref, _, _, _} -> ok end.

lookup({_, Tab}, Key) -> ets:lookup_element(Tab, Key, 2).

%% The entry's pid; spawned by the registry when the key is new.
get_or_spawn({Reg, Tab}, Key) ->
    case ets:lookup(Tab, Key) of
        [{_, Pid}] -> Pid;
        [] ->
            Ref = monitor(process, Reg),
            Reg ! {get_or_spawn, self(), Ref, Key},
            receive
                {Ref, Pid} -> demonitor(Ref, [flush]), Pid;
                {'DOWN', Ref, _, _, Why} -> exit(Why)
            end
    end.

loop(Tab) ->
    receive
        {get_or_spawn, From, Ref, Key} ->
            Pid = case ets:lookup(Tab, Key) of
                      [{_, P}] -> P;
                      [] ->
                          {P, _} = spawn_monitor(fun() -> entry(0, 0, none) end),
                          ets:insert(Tab, {Key, P}),
                          P
                  end,
            From ! {Ref, Pid},
            loop(Tab);
        {'DOWN', _, process, Pid, _} ->
            ets:match_delete(Tab, {'_', Pid}),
            loop(Tab);
        stop ->
            [exit(P, kill) || {_, P} <- ets:tab2list(Tab)]
    end.

%% Seen messages so far; reports `counted` to To once Seen reaches Want (either order).
entry(Seen, Want, To) when To =/= none, Seen >= Want -> To ! counted, entry(Seen, Want, none);
entry(Seen, Want, To) ->
    receive
        {expect, W, T} -> entry(Seen, W, T);
        {msg, _} -> entry(Seen + 1, Want, To)
    end.
