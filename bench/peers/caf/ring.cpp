// ring: P actors in a ring (default 10,000) pass a token H hops (default 1,000,000).
// A master actor stamps the start, sends the token to the first member, and stamps the
// end when the member that gets it with 0 hops to go tells it. Per hop. One ring: a pass
// of H/10 as warm-up, then H. The ring is wired (and every member acknowledged its
// successor) before any pass.
#include "peer.hpp"

#include <vector>

using namespace caf;

using next_atom = atom_constant<atom("next")>;
using token_atom = atom_constant<atom("token")>;
using home_atom = atom_constant<atom("home")>;
using pass_atom = atom_constant<atom("pass")>;

struct member_state {
  actor next, master;
};

static behavior member(stateful_actor<member_state>* self, actor master) {
  self->state.master = master;
  return {
    [=](next_atom, actor next) {
      self->state.next = next;
      return next_atom::value; // the acknowledgement
    },
    [=](token_atom, int left) {
      if (left == 0)
        self->send(self->state.master, home_atom::value);
      else
        self->send(self->state.next, token_atom::value, left - 1);
    },
  };
}

struct master_state {
  int64_t t0 = 0;
  actor first, report_to;
};

static behavior master(stateful_actor<master_state>* self) {
  return {
    [=](pass_atom, actor first, int hops, actor report_to) {
      self->state.first = first;
      self->state.report_to = report_to;
      self->state.t0 = peer::now_ns();
      self->send(first, token_atom::value, hops);
    },
    [=](home_atom) {
      self->send(self->state.report_to, home_atom::value, peer::now_ns() - self->state.t0);
    },
  };
}

int main(int argc, char** argv) {
  peer::config cfg{1000000, 10000};
  cfg.parse_or_exit(argc, argv);
  actor_system sys{cfg};
  scoped_actor main_actor{sys};
  auto m = sys.spawn(master);
  std::vector<actor> ring;
  for (long i = 0; i < cfg.p; ++i)
    ring.push_back(sys.spawn(member, m));
  for (long i = 0; i < cfg.p; ++i)
    main_actor->request(ring[i], infinite, next_atom::value, ring[(i + 1) % cfg.p])
      .receive([](next_atom) {}, [](error&) { peer::check(false, "ring: wiring"); });
  int64_t ns = 0;
  for (long hops : {cfg.n / 10, cfg.n}) {
    main_actor->send(m, pass_atom::value, ring[0], int(hops), actor{main_actor});
    main_actor->receive([&](home_atom, int64_t took) { ns = took; });
  }
  char extra[32];
  std::snprintf(extra, sizeof extra, " procs=%ld", cfg.p);
  peer::emit("ring", cfg.n, ns, extra);
  for (auto& a : ring)
    anon_send_exit(a, exit_reason::user_shutdown);
  anon_send_exit(m, exit_reason::user_shutdown);
}
