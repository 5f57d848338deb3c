// spawn_idle_memory: N idle actors alive at once (each installs a behaviour and waits for
// a message that never comes). bytes_per_proc is the VmRSS growth divided by N, read once
// every actor has run its start-up. per_op_ns: per spawn. One actor is spawned and
// stopped first, so lazily built runtime structures are in the baseline; the vector of
// handles is allocated and touched before the baseline too.
#include "peer.hpp"

#include <atomic>
#include <thread>
#include <vector>

using namespace caf;

static std::atomic<long> started{0};

static behavior idle(event_based_actor*) {
  started.fetch_add(1, std::memory_order_relaxed);
  return {[](int) {}};
}

int main(int argc, char** argv) {
  peer::config cfg{1000000};
  cfg.parse_or_exit(argc, argv);
  actor_system sys{cfg};
  anon_send_exit(sys.spawn(idle), exit_reason::user_shutdown);
  sys.await_all_actors_done();
  started = 0;
  std::vector<actor> alive(cfg.n); // keeps them alive: CAF ends unreferenced actors
  long rss0 = peer::rss_kb();
  int64_t t0 = peer::now_ns();
  for (auto& a : alive)
    a = sys.spawn(idle);
  int64_t spawned = peer::now_ns() - t0;
  while (started.load() < cfg.n)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  long rss1 = peer::rss_kb();
  char extra[96];
  std::snprintf(extra, sizeof extra, " bytes_per_proc=%.1f rss_before_kb=%ld",
                (rss1 - rss0) * 1024.0 / cfg.n, rss0);
  peer::emit("spawn_idle_memory", cfg.n, spawned, extra);
  for (auto& a : alive)
    anon_send_exit(a, exit_reason::user_shutdown);
}
