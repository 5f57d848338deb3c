// The ping and pong actors that ping_pong and remote_ping_pong share: pong answers each
// (ping, k) with (pong, k); ping sends k = n down to 1 and reports the time taken.
#pragma once
#include "peer.hpp"

using ping_atom = caf::atom_constant<caf::atom("ping")>;
using pong_atom = caf::atom_constant<caf::atom("pong")>;
using done_atom = caf::atom_constant<caf::atom("done")>;

static caf::behavior pong(caf::event_based_actor*) {
  // The returned tuple goes back to the sender.
  return {[](ping_atom, int k) { return std::make_tuple(pong_atom::value, k); }};
}

static caf::behavior ping(caf::event_based_actor* self, caf::actor partner, int n,
                          caf::actor report_to) {
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
