package poll

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Interval is the pause between two calls of a condition. Conditions here are
// cheap local reads or loopback requests, so a short pause costs little and
// keeps the waits that the demo times close to the event.
const Interval = 10 * time.Millisecond

// Until calls cond at once and then every Interval until it returns true, ctx
// ends or timeout passes. An error from cond means "not yet, because ...": it
// does not stop the polling, and the last one is part of the error returned
// when time runs out. To stop at once (the process being waited for has
// exited, say), cond returns Stop(err).
func Until(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	var last error
	for {
		ok, err := cond()
		var s stopError
		if errors.As(err, &s) {
			return s.err
		}
		if ok && err == nil {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%w (last: %w)", ctx.Err(), last)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Stop wraps an error that ends Until at once; Until returns err itself.
func Stop(err error) error { return stopError{err} }

type stopError struct{ err error }

func (s stopError) Error() string { return s.err.Error() }
func (s stopError) Unwrap() error { return s.err }

// Pause waits d unless ctx ends first, and returns ctx's error then. It is for
// simulated time and pacing (the tour's kubelet restarting a container after a
// while, the bench spacing its failovers), never for waiting for something to
// happen: that is Until's, or a watch's.
func Pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
