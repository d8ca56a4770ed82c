// Package poll is the one poll-with-deadline of hapod's dev tooling: the
// local cluster, the test helpers, the tour and the bench all wait for a
// condition with [Until]. A wait that can follow a watch should (the tour's
// and the bench's observers do); polling is for what has no watch, such as
// an HTTP health endpoint or a process's state.
package poll
