// gen_server_call: a client actor makes N request/response round trips, one at a time,
// to a server actor that answers each with its integer and counts them; each request has
// gen_server:call's default 5 s timeout. Timed inside the client; per call. One server,
// a fresh client per run: warm-up N/10, then N. The server's count is checked.
#include "peer.hpp"

using namespace caf;

using echo_atom = atom_constant<atom("echo")>;
using count_atom = atom_constant<atom("count")>;
using done_atom = atom_constant<atom("done")>;

static behavior server(event_based_actor*) {
  auto served = std::make_shared<long>(0);
  return {
    [=](echo_atom, int k) { ++*served; return k; },
    [=](count_atom) { return *served; },
  };
}

// Sends request K; on its reply, the next one (K-1) or, after 1, the report.
static void call(event_based_actor* self, actor srv, int k, int64_t t0, actor report_to) {
  self->request(srv, std::chrono::seconds(5), echo_atom::value, k).then(
    [=](int reply) {
      peer::check(reply == k, "gen_server_call: wrong reply");
      if (k > 1)
        call(self, srv, k - 1, t0, report_to);
      else {
        self->send(report_to, done_atom::value, peer::now_ns() - t0);
        self->quit();
      }
    },
    [](error&) { peer::check(false, "gen_server_call: request failed"); });
}

static void client(event_based_actor* self, actor srv, int n, actor report_to) {
  call(self, srv, n, peer::now_ns(), report_to);
}

int main(int argc, char** argv) {
  peer::config cfg{1000000};
  cfg.parse_or_exit(argc, argv);
  actor_system sys{cfg};
  scoped_actor main_actor{sys};
  auto srv = sys.spawn(server);
  int64_t ns = 0;
  for (long n : {cfg.n / 10, cfg.n}) {
    sys.spawn(client, srv, int(n), actor{main_actor});
    main_actor->receive([&](done_atom, int64_t took) { ns = took; });
  }
  main_actor->request(srv, infinite, count_atom::value).receive(
    [&](long served) { peer::check(served == cfg.n + cfg.n / 10, "gen_server_call: count"); },
    [](error&) { peer::check(false, "gen_server_call: count request"); });
  peer::emit("gen_server_call", cfg.n, ns);
  anon_send_exit(srv, exit_reason::user_shutdown);
}
