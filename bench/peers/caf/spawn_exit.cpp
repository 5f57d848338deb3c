// spawn_exit: spawn N actors that quit at once; timed until every one has terminated
// (actor_system::await_all_actors_done). Per spawn. Warm-up N/10, then N.
// The spawns come from the main thread: spawning from an actor is quadratic under CAF
// 0.17's default work-stealing scheduler (the idle worker steals by walking the
// spawner's whole queue), which would measure that, not spawning.
#include "peer.hpp"

using namespace caf;

static void quitter(event_based_actor* self) {
  self->quit();
}

static int64_t run(actor_system& sys, long n) {
  int64_t t0 = peer::now_ns();
  for (long i = 0; i < n; ++i)
    sys.spawn(quitter);
  sys.await_all_actors_done();
  return peer::now_ns() - t0;
}

int main(int argc, char** argv) {
  peer::config cfg{1000000};
  cfg.parse_or_exit(argc, argv);
  actor_system sys{cfg};
  run(sys, cfg.n / 10);
  peer::emit("spawn_exit", cfg.n, run(sys, cfg.n));
}
