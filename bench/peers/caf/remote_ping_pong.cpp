// remote_ping_pong: two OS processes on loopback TCP with caf::io (BASP). The program
// forks before any CAF state exists: the parent publishes a pong actor on 127.0.0.1 (a
// port of the kernel's choice, handed over through a pipe); the child connects to it and
// runs a ping actor: N round trips (default 100,000) after a warm-up of N/10, timed
// inside the ping actor; per round trip. Each process runs its own actor system with two
// scheduler threads (plus CAF's I/O thread), as arbor's two nodes do.
#include "ping_pong_actors.hpp"

#include <caf/io/all.hpp>

#include <sys/wait.h>
#include <unistd.h>

using namespace caf;

struct remote_config : peer::config {
  remote_config() : peer::config(100000) {
    load<io::middleman>();
  }
};

// The child: connects and pings; returns the exit status.
static int client(remote_config& cfg, uint16_t port) {
  actor_system sys{cfg};
  auto partner = sys.middleman().remote_actor("127.0.0.1", port);
  peer::check(bool(partner), "remote_ping_pong: connecting");
  scoped_actor main_actor{sys};
  int64_t ns = 0;
  for (long n : {cfg.n / 10, cfg.n}) {
    sys.spawn(ping, *partner, int(n), actor{main_actor});
    main_actor->receive([&](done_atom, int64_t took) { ns = took; });
  }
  peer::emit("remote_ping_pong", cfg.n, ns);
  return 0;
}

int main(int argc, char** argv) {
  remote_config cfg;
  cfg.parse_or_exit(argc, argv);
  int fds[2];
  peer::check(pipe(fds) == 0, "pipe");
  pid_t child = fork();
  peer::check(child >= 0, "fork");
  if (child == 0) {
    uint16_t port = 0;
    close(fds[1]);
    peer::check(read(fds[0], &port, sizeof port) == sizeof port && port != 0,
                "remote_ping_pong: no port from the server");
    return client(cfg, port);
  }
  close(fds[0]);
  int status = 1;
  {
    actor_system sys{cfg};
    auto p = sys.spawn(pong);
    auto port = sys.middleman().publish(p, 0, "127.0.0.1");
    uint16_t pn = port ? *port : 0; // 0 tells the child publishing failed
    peer::check(write(fds[1], &pn, sizeof pn) == sizeof pn, "pipe write");
    waitpid(child, &status, 0);
    anon_send_exit(p, exit_reason::user_shutdown);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
