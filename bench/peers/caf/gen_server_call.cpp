// gen_server_call: a client actor makes N request/response round trips, one at a time,
// to a server actor that answers each with its integer and counts them; each request has
// gen_server:call's default 5 s timeout, as arbor's and Erlang's calls do. Timed inside
// the client; per call. One server, a fresh client per run: warm-up N/10, then N. The
// server's count is checked. CAF 0.17 keeps a request's timeout pending until it fires,
// so the same run without one (infinite) is reported too, as no_timeout_per_op_ns; it
// runs first, before any timeout is pending.
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
static void call(event_based_actor* self, actor srv, int k, int64_t t0, actor report_to,
                 duration timeout) {
  self->request(srv, timeout, echo_atom::value, k).then(
    [=](int reply) {
      peer::check(reply == k, "gen_server_call: wrong reply");
      if (k > 1)
        call(self, srv, k - 1, t0, report_to, timeout);
      else {
        self->send(report_to, done_atom::value, peer::now_ns() - t0);
        self->quit();
      }
    },
    [](error&) { peer::check(false, "gen_server_call: request failed"); });
}

static void client(event_based_actor* self, actor srv, int n, actor report_to,
                   duration timeout) {
  call(self, srv, n, peer::now_ns(), report_to, timeout);
}

int main(int argc, char** argv) {
  peer::config cfg{1000000};
  cfg.parse_or_exit(argc, argv);
  actor_system sys{cfg};
  scoped_actor main_actor{sys};
  auto srv = sys.spawn(server);
  auto run = [&](long n, duration timeout) {
    int64_t ns = 0;
    sys.spawn(client, srv, int(n), actor{main_actor}, timeout);
    main_actor->receive([&](done_atom, int64_t took) { ns = took; });
    return ns;
  };
  duration five_s{std::chrono::seconds(5)};
  run(cfg.n / 10, infinite);
  int64_t untimed = run(cfg.n, infinite);
  run(cfg.n / 10, five_s);
  int64_t ns = run(cfg.n, five_s);
  main_actor->request(srv, infinite, count_atom::value).receive(
    [&](long served) { peer::check(served == 2 * (cfg.n + cfg.n / 10), "gen_server_call: count"); },
    [](error&) { peer::check(false, "gen_server_call: count request"); });
  char extra[48];
  std::snprintf(extra, sizeof extra, " no_timeout_per_op_ns=%.1f", double(untimed) / cfg.n);
  peer::emit("gen_server_call", cfg.n, ns, extra);
  anon_send_exit(srv, exit_reason::user_shutdown);
}
