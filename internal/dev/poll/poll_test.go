package poll

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestUntilReturnsOnceTrue(t *testing.T) {
	n := 0
	err := Until(t.Context(), time.Minute, func() (bool, error) {
		n++
		return n >= 3, nil
	})
	if err != nil || n != 3 {
		t.Fatalf("Until = %v after %d calls, want nil after 3", err, n)
	}
}

func TestUntilReportsTheLastReason(t *testing.T) {
	why := errors.New("not there yet")
	err := Until(t.Context(), 30*time.Millisecond, func() (bool, error) { return false, why })
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, why) {
		t.Fatalf("Until = %v, want the deadline and the last reason", err)
	}
}

func TestUntilStops(t *testing.T) {
	gone := errors.New("process exited")
	n := 0
	err := Until(t.Context(), time.Minute, func() (bool, error) {
		n++
		return false, Stop(gone)
	})
	if !errors.Is(err, gone) || n != 1 {
		t.Fatalf("Until = %v after %d calls, want the stop error itself after 1", err, n)
	}
}

func TestUntilEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := Until(ctx, time.Minute, func() (bool, error) { return false, nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Until = %v, want context.Canceled", err)
	}
}
