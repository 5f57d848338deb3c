%% spawn_idle_memory: N processes alive at once, each parked in receive. bytes_per_proc
%% is the growth of the emulator's VmRSS divided by N, read once the run queues are empty
%% (every process has run up to its receive), as arbor's and CAF's figures are RSS too;
%% erts_bytes_per_proc is erlang:memory(processes)'s growth, the VM's own count.
%% per_op_ns: per spawn. No warm-up run.
-module(spawn_idle_memory).
-export([main/0]).

main() ->
    N = peer_util:arg(n, 1000000),
    erlang:garbage_collect(),
    idle_queues(),
    {Rss0, Mem0} = {peer_util:rss_kb(), erlang:memory(processes)},
    T0 = peer_util:now(),
    spawn_n(N),
    Ns = peer_util:now() - T0,
    idle_queues(),
    {Rss1, Mem1} = {peer_util:rss_kb(), erlang:memory(processes)},
    peer_util:emit(spawn_idle_memory, N, Ns,
                   [{bytes_per_proc, (Rss1 - Rss0) * 1024 / N},
                    {erts_bytes_per_proc, (Mem1 - Mem0) / N},
                    {processes, erlang:system_info(process_count)}]),
    peer_util:halt().

spawn_n(0) -> ok;
spawn_n(K) -> spawn(fun() -> receive never -> ok end end), spawn_n(K - 1).

idle_queues() ->
    case erlang:statistics(total_run_queue_lengths_all) of
        0 -> ok;
        _ -> timer:sleep(5), idle_queues()
    end.
