// fan_in: S senders (default 1,000) each send M small messages (default 1,000) to one
// receiver. The senders wait for "go"; the clock starts before the first go and stops
// when the receiver (which stamps the time itself) has counted all S*M. Per message.
// Fresh actors per run: warm-up S x M/10, then S x M.
#include "peer.hpp"

#include <vector>

using namespace caf;

using go_atom = atom_constant<atom("go")>;
using msg_atom = atom_constant<atom("msg")>;
using done_atom = atom_constant<atom("done")>;

static behavior receiver(event_based_actor* self, long total, actor report_to) {
  auto seen = std::make_shared<long>(0);
  return {[=](msg_atom, int) {
    if (++*seen == total) {
      self->send(report_to, done_atom::value, peer::now_ns());
      self->quit();
    }
  }};
}

static behavior sender(event_based_actor* self, actor to, int m) {
  return {[=](go_atom) {
    for (int i = 0; i < m; ++i)
      self->send(to, msg_atom::value, i);
    self->quit();
  }};
}

static int64_t run(actor_system& sys, long s, long m) {
  scoped_actor main_actor{sys};
  auto recv = sys.spawn(receiver, s * m, actor{main_actor});
  std::vector<actor> senders;
  for (long i = 0; i < s; ++i)
    senders.push_back(sys.spawn(sender, recv, int(m)));
  int64_t t0 = peer::now_ns(), t1 = 0;
  for (auto& a : senders)
    anon_send(a, go_atom::value);
  main_actor->receive([&](done_atom, int64_t end) { t1 = end; });
  return t1 - t0;
}

int main(int argc, char** argv) {
  peer::config cfg{1000, 1000}; // n: messages per sender, p: senders
  cfg.parse_or_exit(argc, argv);
  actor_system sys{cfg};
  run(sys, cfg.p, cfg.n / 10);
  long total = cfg.p * cfg.n;
  int64_t ns = run(sys, cfg.p, cfg.n);
  char extra[64];
  std::snprintf(extra, sizeof extra, " senders=%ld msgs_per_s=%.0f", cfg.p, total * 1e9 / ns);
  peer::emit("fan_in", total, ns, extra);
}
