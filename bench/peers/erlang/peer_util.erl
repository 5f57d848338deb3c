%% Shared helpers of arbor's Erlang peer workloads (bench/peers/erlang).
%% Each workload module prints exactly one line, in arbor_bench's format:
%%   name=WORKLOAD n=N seconds=S per_op_ns=NS [key=value ...]
%% Counts can be changed on the command line: erl ... -n 1000 -p 10 (as arbor_bench -n/-p).
-module(peer_util).
-export([now/0, arg/2, rss_kb/0, emit/4, halt/0]).

%% Monotonic clock in nanoseconds.
now() -> erlang:monotonic_time(nanosecond).

%% An integer from `-Flag Value` on erl's command line, or Default.
arg(Flag, Default) ->
    case init:get_argument(Flag) of
        {ok, [[V | _] | _]} -> list_to_integer(V);
        _ -> Default
    end.

%% VmRSS of the emulator in KiB, read from /proc (-1 when unreadable).
rss_kb() ->
    case file:read_file("/proc/self/status") of
        {ok, Bin} ->
            case re:run(Bin, "VmRSS:\\s+(\\d+)", [{capture, all_but_first, list}]) of
                {match, [Kb]} -> list_to_integer(Kb);
                nomatch -> -1
            end;
        _ -> -1
    end.

%% The result line: Ns is the timed work in nanoseconds over N operations.
emit(Name, N, Ns, Extra) ->
    Fields = [{seconds, Ns / 1.0e9}, {per_op_ns, Ns / N} | Extra] ++ [{rss_kb, rss_kb()}],
    io:format("name=~s n=~b~s~n",
              [Name, N, [io_lib:format(" ~s=~s", [K, fmt(V)]) || {K, V} <- Fields]]).

fmt(V) when is_integer(V) -> integer_to_list(V);
fmt(V) when is_float(V) -> float_to_list(V, [{decimals, 6}, compact]);
fmt(V) when is_atom(V) -> atom_to_list(V).

%% Ends the emulator at once (init:stop would wait for every process).
halt() -> erlang:halt(0).
