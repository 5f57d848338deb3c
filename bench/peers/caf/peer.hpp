// Shared helpers of arbor's CAF 0.17 peer workloads (bench/peers/caf).
// Every program prints one line per workload in arbor_bench's format:
//   name=WORKLOAD n=N seconds=S per_op_ns=NS [key=value ...] rss_kb=KB
// The actor system runs two scheduler threads, as arbor's nodes and Erlang (+S 2) do.
// Counts: --n=N (main count) and --p=P (ring size, senders, keys), as arbor_bench -n/-p.
#pragma once

#include <caf/all.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace peer {

// Monotonic clock in nanoseconds.
inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch()).count();
}

// VmRSS of this process in KiB (-1 when unreadable).
inline long rss_kb() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0)
      return std::atol(line.c_str() + 6);
  return -1;
}

// Two scheduler threads and the --n/--p options with the workload's defaults.
struct config : caf::actor_system_config {
  long n, p;
  config(long default_n, long default_p = 0) : n(default_n), p(default_p) {
    set("scheduler.max-threads", 2);
    opt_group{custom_options_, "global"}
      .add(n, "n", "main count")
      .add(p, "p", "ring size / senders");
  }
  void parse_or_exit(int argc, char** argv) {
    if (auto err = parse(argc, argv)) {
      std::fprintf(stderr, "%s\n", caf::to_string(err).c_str());
      std::exit(2);
    }
    if (cli_helptext_printed)
      std::exit(0);
  }
};

// The result line: ns of timed work over n operations, then extra (" key=value ...").
inline void emit(const char* name, long n, int64_t ns, const std::string& extra = "") {
  std::printf("name=%s n=%ld seconds=%.6f per_op_ns=%.1f%s rss_kb=%ld\n", name, n,
              ns / 1e9, double(ns) / double(n), extra.c_str(), rss_kb());
  std::fflush(stdout);
}

// Ends the program when a check fails: a figure from work that did not happen is worse
// than none.
inline void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "check failed: %s\n", what);
    std::exit(1);
  }
}

} // namespace peer
