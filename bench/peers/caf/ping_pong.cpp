// ping_pong: two actors, N round trips of a small message (atom + integer K; pong
// answers with K). Timed inside the ping actor, from its first send to the last pong;
// per round trip. A fresh pair per run: warm-up N/10, then N.
#include "peer.hpp"

using namespace caf;

using ping_atom = atom_constant<atom("ping")>;
using pong_atom = atom_constant<atom("pong")>;
using done_atom = atom_constant<atom("done")>;

static behavior pong(event_based_actor*) {
  // The returned tuple goes back to the sender.
  return {[](ping_atom, int k) { return std::make_tuple(pong_atom::value, k); }};
}

static behavior ping(event_based_actor* self, actor partner, int n, actor report_to) {
  int64_t t0 = peer::now_ns();
  self->send(partner, ping_atom::value, n);
  return {[=](pong_atom, int k) {
    if (k > 1) {
      self->send(partner, ping_atom::value, k - 1);
      return;
    }
    self->send(report_to, done_atom::value, peer::now_ns() - t0);
    self->quit();
  }};
}

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
