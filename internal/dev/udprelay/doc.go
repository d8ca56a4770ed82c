// Package udprelay is a faulty network between the hapod controller and one
// pod's application, for the chaos suite: a UDP relay on 127.0.0.1 that
// forwards role messages and their acks, and loses, duplicates, reorders,
// delays or cuts them on demand, keeps the last role messages it forwarded
// so that they can be replayed, and sends forged datagrams to the
// application.
//
// # Where it sits
//
// The chaos run gives the controller the relay's front address (Addr) as
// the pod's role address (the hapod.io/role-address annotation) instead of
// the application's. A datagram the controller sends to the front socket
// goes on to the application from an upstream socket of the relay's, one
// per controller address (a controller restarted, or a second replica,
// sends from another port and gets its own, as behind a NAT). What the
// application answers on an upstream socket goes back to that controller
// address from the front socket: the controller refuses an ack that does
// not come from the address it sent to (docs/protocol.md, "wrong-source"),
// and the front address is that address.
//
//	controller ──▶ front (Addr) ──[faults ToApp]──▶ upstream ──▶ app
//	controller ◀── front (Addr) ◀─[faults ToController]── upstream ◀── app
//
// # Faults
//
// SetFaults sets, for one direction or both, the probability of loss,
// duplication and reordering and a fixed extra delay; Cut(true) drops
// everything both ways (a partitioned pod), in flight included; Reset
// restores a clean network. All of them may be called at any time from
// any goroutine. The random choices come from one generator seeded by
// Config.Seed, so a run with the same seed and the same traffic in the
// same order makes the same choices.
//
// A reordered datagram is held back and released right after the next
// datagram of its direction is written, or when its own random hold (up
// to Faults.ReorderMax) ends, whichever comes first: it arrives after a
// later one, never lost.
//
// # Attacks
//
// Replay sends captured controller→app datagrams again, in another order,
// from the upstream socket they first went out of, as an attacker on the
// path could; Captured returns them for a chaos run that picks its own.
// SendToApp sends any bytes to the application from a socket of its own
// (forged datagrams; the caller crafts them with internal/wire), and
// ForgedReply reads what the application answered to that socket. Neither
// goes through the faults: the attacker is next to the pod.
//
// Everything is bound to 127.0.0.1 and the application's address must be
// a loopback one: the relay sends nothing off the machine.
package udprelay
