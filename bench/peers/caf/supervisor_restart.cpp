// supervisor_restart: CAF has no supervisors, so this is the mechanism one would use: a
// supervising actor monitors its worker and spawns a new one when a down message says
// the old one ended. The worker tells the driver it is up when it starts, and on "crash"
// tells the driver so and quits with an error (CAF's crash: no exception unwinding).
// Per cycle, timed by a driver actor: send crash to the current worker, hear its
// "crashing", hear the new worker's "up". per_op_ns is the mean cycle, seconds their sum.
// Warm-up 1,000 restarts, then N (default 10,000), each on its own supervisor (a CAF
// supervisor keeps no restart history, so arbor's and Erlang's 100 per supervisor would
// change nothing but untimed start-ups).
#include "peer.hpp"

using namespace caf;

using up_atom = atom_constant<atom("up")>;
using crash_atom = atom_constant<atom("crash")>;
using crashing_atom = atom_constant<atom("crashing")>;
using go_atom = atom_constant<atom("go")>;
using done_atom = atom_constant<atom("done")>;

static behavior worker(event_based_actor* self, actor driver) {
  self->send(driver, up_atom::value, actor{self});
  return {[=](crash_atom) {
    self->send(driver, crashing_atom::value);
    self->quit(make_error(sec::runtime_error));
  }};
}

static behavior supervisor(event_based_actor* self, actor driver) {
  self->set_down_handler([=](down_msg& dm) {
    if (dm.reason) // abnormal, as a permanent child's any exit: restart it
      self->spawn<monitored>(worker, driver);
  });
  self->spawn<monitored>(worker, driver);
  return {[](int) {}}; // stays alive
}

struct driver_state {
  long left = 0, crashings = 0;
  int64_t t0 = 0, sum = 0;
  actor child, report_to;
};

static behavior driver(stateful_actor<driver_state>* self) {
  auto crash = [=] {
    self->state.t0 = peer::now_ns();
    self->send(self->state.child, crash_atom::value);
  };
  return {
    [=](go_atom, long restarts, actor report_to) {
      self->state.left = restarts;
      self->state.sum = 0;
      self->state.report_to = report_to;
      if (self->state.child) crash();
    },
    [=](crashing_atom) { ++self->state.crashings; },
    [=](up_atom, actor child) {
      auto& st = self->state;
      bool first = !st.child;
      st.child = child;
      if (first) {
        if (st.left > 0) crash(); // go came before the first worker was up
        return;
      }
      st.sum += peer::now_ns() - st.t0;
      if (--st.left > 0)
        crash();
      else
        self->send(st.report_to, done_atom::value, st.sum, st.crashings);
    },
  };
}

static int64_t run(actor_system& sys, long restarts) {
  scoped_actor main_actor{sys};
  auto d = sys.spawn(driver);
  auto sup = sys.spawn(supervisor, d);
  int64_t sum = 0;
  long crashings = 0;
  main_actor->send(d, go_atom::value, restarts, actor{main_actor});
  main_actor->receive([&](done_atom, int64_t s, long c) { sum = s, crashings = c; });
  peer::check(crashings == restarts, "supervisor_restart: crash count");
  anon_send_exit(sup, exit_reason::user_shutdown);
  anon_send_exit(d, exit_reason::user_shutdown);
  return sum;
}

int main(int argc, char** argv) {
  peer::config cfg{10000};
  cfg.parse_or_exit(argc, argv);
  actor_system sys{cfg};
  run(sys, 1000);
  peer::emit("supervisor_restart", cfg.n, run(sys, cfg.n));
}
