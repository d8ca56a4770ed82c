// Package notify is the controller's side of the role protocol: it tells a
// pod its new role over UDP and waits for the pod's ack, retrying with
// exponential backoff until a deadline.
//
// One Notifier owns one socket and one reading goroutine for the whole
// controller. Send blocks its caller and adds no goroutine of its own, so a
// mass failover can run thousands of Sends at once at the cost of their
// callers' goroutines, a map entry and a timer each. Acks are matched to
// their Send by (uid, epoch, seq); seq is unique per Notifier, so a late ack
// for an earlier Send to the same pod is never mistaken for a newer one.
//
// A pod that never answers costs only its own caller the Deadline; it never
// delays another Send. An ack saying "stale" or "wrong-pod" ends the Send at
// once: retrying cannot change the pod's answer.
package notify
