package record

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Kind says what a Record reports.
type Kind string

// Kinds of records.
const (
	// Promoted: a pod was made active. Written once the new active's app
	// acked its role (Acked set) or its notification gave up (Acked zero).
	Promoted Kind = "promoted"
)

// Record is one line of the stream. Times are the controller's wall clock
// (RFC 3339 with nanoseconds); zero times are written as absent.
type Record struct {
	Kind  Kind   `json:"kind"`
	Group string `json:"group"` // namespace/group
	Pod   string `json:"pod"`
	UID   string `json:"uid,omitempty"`
	Epoch uint64 `json:"epoch"`
	// Reason is why the promotion happened: the old active's fault
	// (election.Fault) or "Initial".
	Reason string `json:"reason,omitempty"`
	// Replaced names the previous active, empty if none was known.
	Replaced string `json:"replaced,omitempty"`
	// Seen is the first watch event of the trigger: the start of the
	// failover clock.
	Seen time.Time `json:"seen,omitzero"`
	// Labelled is when the new active's label write returned; zero if it
	// failed.
	Labelled time.Time `json:"labelled,omitzero"`
	// Acked is when the new active's app acknowledged its role; zero if it
	// did not.
	Acked time.Time `json:"acked,omitzero"`
	// Status is the ack's status ("ok", "stale", "wrong-pod") or "timeout".
	Status   string `json:"status,omitempty"`
	Attempts int    `json:"attempts,omitempty"`
}

// Writer appends records to an io.Writer, one line each. It is safe for
// concurrent use; each line is written with one Write call, so lines from
// one Writer never interleave.
type Writer struct {
	mu sync.Mutex
	w  io.Writer
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write appends r.
func (w *Writer) Write(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("record: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err = w.w.Write(append(b, '\n'))
	return err
}

// Create opens path for appending records (creating it if needed), so that
// a restarted controller adds to the history rather than replacing it.
func Create(path string) (*Writer, io.Closer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("record: %w", err)
	}
	return NewWriter(f), f, nil
}

// Decode parses one line. Unknown fields are ignored.
func Decode(line []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		return Record{}, fmt.Errorf("record: %w", err)
	}
	if r.Kind == "" || r.Group == "" || r.Pod == "" {
		return Record{}, errors.New("record: kind, group and pod are required")
	}
	return r, nil
}

// Follow reads the records in path as they are appended, calling fn for each
// in order, until ctx is done; it returns ctx's error then. It waits for the
// file to appear. A line that does not decode is an error: the file is the
// controller's, and a reader that skipped lines would report wrong numbers.
func Follow(ctx context.Context, path string, poll time.Duration, fn func(Record)) error {
	tick := time.NewTicker(poll)
	defer tick.Stop()
	var f *os.File
	for f == nil {
		var err error
		f, err = os.Open(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("record: %w", err)
		}
		if f != nil {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	defer func() { _ = f.Close() }()
	rd := bufio.NewReader(f)
	var partial []byte
	for {
		chunk, err := rd.ReadBytes('\n')
		partial = append(partial, chunk...)
		switch {
		case err == nil:
			r, derr := Decode(bytes.TrimSpace(partial))
			partial = partial[:0]
			if derr != nil {
				return derr
			}
			fn(r)
			continue
		case !errors.Is(err, io.EOF):
			return fmt.Errorf("record: %w", err)
		}
		// At the end of what is written so far; a half-written line stays in
		// partial until its newline arrives.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
