// Package role tells an application whether the hapod controller has made its
// pod the active one or a standby.
//
// The controller labels exactly one pod of a group role=active, which is what
// routes traffic to it. Labels reach a process only slowly and indirectly, so
// the controller also sends the pod a small UDP datagram as soon as it changes
// the label. Listen receives those datagrams, keeps the latest role and
// answers each one with an ack; the application reads the role with
// Listener.State, Listener.Changes or Config.OnChange.
//
// # Delivery contract
//
// The role is Unknown until the first message arrives; treat Unknown, like
// Fenced, as Standby. The controller tells a standby that it is standby when it joins,
// and retries each message until it is acked or a deadline passes (3s by
// default), so a pod that is running and reachable learns its role within
// milliseconds of the label change.
//
// Each message carries the group's epoch, a counter the controller increments
// on every promotion. The listener applies a message when its epoch is newer
// than the one it holds, and refuses older ones (acked "stale"), so a delayed
// or retried message can never undo a later decision. Within one epoch the
// controller tells one pod active and every other pod standby, so two roles
// at the same epoch for the same pod only arise from a controller fault; the
// listener then keeps or moves to Standby, because two active pods are worse
// than none (the controller repairs "none" by promoting again, at a new
// epoch). In full, for a message (role r, epoch e) against the held (R, E):
//
//	e > E                          applied, acked "ok"
//	e == E, r Active, R Active     a renewal: the lease extends, acked "ok"
//	e == E, r Active, R Fenced     applied (a renewal round), acked "ok"
//	e == E, r Standby, R Standby   duplicate: acked "ok", nothing changes
//	e == E, R Unknown              applied, acked "ok"
//	e == E, r Standby, R Active    applied, acked "ok"
//	e == E, r Active, R Standby    refused, acked "stale"
//	e < E                          refused, acked "stale"
//
// An active role that would be applied or renewed further needs a valid
// echo (see The role lease below); without one nothing changes and the ack
// is "retry", carrying the nonce to echo.
//
// If Config.PodUID or Config.PodName is set, a message addressed to another
// UID or name is refused and acked "wrong-pod": a pod IP can be reused by a
// new pod while the controller still holds the old pod's address. Likewise a
// listener serves Config.Group, if set, or else the first group it hears
// from, since epochs of two groups cannot be compared. Datagrams that are
// oversized, not valid JSON of the known version, or otherwise malformed
// (an epoch above 2^31-1, which the controller never sends, among them) are
// dropped without a reply and counted in Stats.
//
// The ack means the listener has recorded the state: when the controller sees
// it, State already returns the new role. It does not mean the application
// has acted on it. The ack is sent before the application is notified, so a
// slow OnChange does not slow the controller's view of the failover; then
// OnChange runs, then Changes receives the state.
//
// OnChange is called once per applied change and per lapse, in order, from
// the listener's goroutine; further datagrams wait while it runs, so keep it
// short. Changes is a latest-value channel with a buffer of one: the
// listener never blocks on it, and a slow reader may skip intermediate
// states but always receives the newest. Duplicates, renewals and refused
// messages notify nothing.
//
// # The role lease
//
// The active role is a lease (docs/protocol.md has the protocol and its
// proof). The controller renews it every few tens of milliseconds (50ms by
// default), and the message carries the TTL (150ms by default), so an
// application needs no configuration. The listener measures the lease on
// its own clock from the moment it sent the ack that the controller's
// message echoes, so no delay, loss or replay of datagrams can carry it past
// what the controller accounts for; the clocks need not be synchronised,
// only their rates sane.
//
// When the TTL passes without a valid renewal (the pod was cut off, paused,
// or the controller has lost sight of it), the listener fences itself: it
// delivers a State with Role Standby and Fenced set, on Changes and to
// OnChange, the moment the lease runs out, with Changed and Expiry set to
// that moment. The controller, for its part, promotes no other pod before
// that lease has certainly run out (unless the app acks standby first, or
// the API proves it dead): at no instant do two listeners hold the active
// role with an unexpired lease. A fenced listener becomes Active again at
// the same epoch only through a fresh lease from the controller (which it
// grants only while it still holds this pod to be the active one), or at a
// higher epoch through a promotion; once told Standby at an epoch, never at
// that epoch.
//
// Changes tells the application when to start and stop; Active (or
// State().ActiveAt(time.Now())) is the check to make right before each
// action only the active pod may take, such as a write, since a change is
// delivered a scheduling delay after it happens. Renewals move State's
// Expiry without a notification.
//
// A grant takes two round trips: the listener answers the first active
// message "retry" with a nonce, and is active once the controller echoes it.
// A listener restarted in place knows none of its predecessor's nonces; the
// controller's next renewal gets it going again within a round trip.
//
// The held epoch lives in memory only. A restarted process starts at Unknown
// with epoch 0 and accepts whatever the controller sends next.
//
// # Authentication
//
// With Config.KeyDir holding keys (the group's subkeys, from a mounted
// Secret; see the README), every message must carry a valid HMAC-SHA256
// under one of them, a timestamp within Config.Freshness of this
// process's clock, and a counter not seen before from its sender: anything
// else is dropped without a reply, changes nothing and is counted in Stats
// by reason (Unauthenticated, UnknownKey, BadMAC, Expired, Replayed). Acks
// are signed too. A listener that cannot verify its renewals therefore
// lapses to Standby by itself; it never becomes or stays Active on a
// message it could not verify. The directory is read again every
// Config.KeyPoll and when a message names a key the listener lacks, so a
// rotated Secret is picked up without a restart; a read that fails keeps
// the keys in use and is reported by Listener.KeyError.
//
// Without keys there is no authentication: anything that can reach the
// port can set the role. Restrict the port with a NetworkPolicy to the
// controller's pods either way.
package role
