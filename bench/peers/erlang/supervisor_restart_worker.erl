%% The worker of supervisor_restart: tells the driver it is up from init/1, and on
%% `crash` tells it so and raises.
-module(supervisor_restart_worker).
-behaviour(gen_server).
-export([start_link/1, init/1, handle_call/3, handle_cast/2, handle_info/2]).

start_link(Driver) -> gen_server:start_link(?MODULE, Driver, []).

init(Driver) -> Driver ! {up, self()}, {ok, Driver}.

handle_info(crash, Driver) -> Driver ! {crashing, self()}, error(deliberate).

handle_call(_, _, Driver) -> {reply, ok, Driver}.
handle_cast(_, Driver) -> {noreply, Driver}.
