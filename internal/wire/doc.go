// Package wire is the datagram format spoken between the hapod controller
// and the pods it steers: role messages (controller to pod) and acks (pod to
// controller), one JSON object per UDP datagram.
//
// JSON rather than a binary encoding because the messages are rare and tiny,
// and an operator debugging a failover should be able to read them in
// tcpdump. Every message carries "v"; a receiver drops any version it does
// not know (ErrVersion) instead of guessing, so a change that a receiver must
// understand requires a new Version. Unknown fields are ignored, so purely
// informational additions do not.
//
// Encode and Decode apply the same validation, so whatever Encode produces,
// Decode accepts, and a sender cannot put on the wire a message that every
// receiver would drop.
package wire
