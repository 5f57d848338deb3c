// ping_pong: two actors, N round trips of a small message (atom + integer K; pong
// answers with K). Timed inside the ping actor, from its first send to the last pong;
// per round trip. A fresh pair per run: warm-up N/10, then N.
#include "ping_pong_actors.hpp"

using namespace caf;

static int64_t run(actor_system& sys, int n) {
  scoped_actor main_actor{sys};
  auto partner = sys.spawn(pong);
  sys.spawn(ping, partner, n, actor{main_actor});
  int64_t ns = 0;
  main_actor->receive([&](done_atom, int64_t took) { ns = took; });
  anon_send_exit(partner, exit_reason::user_shutdown);
  return ns;
}

int main(int argc, char** argv) {
  peer::config cfg{1000000};
  cfg.parse_or_exit(argc, argv);
  actor_system sys{cfg};
  run(sys, int(cfg.n / 10));
  peer::emit("ping_pong", cfg.n, run(sys, int(cfg.n)));
}
