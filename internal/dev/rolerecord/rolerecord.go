// Package rolerecord is the demo app's machine-readable account of its role:
// cmd/hapod-demo -role-records FILE appends one JSON line per role change it
// applied, and the tour reads them instead of the app's log text.
package rolerecord

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Change is one line: the role the app applied, as pkg/role reported it.
type Change struct {
	// At is when the app's listener accepted the message (role.State.Changed).
	At    time.Time `json:"at"`
	Pod   string    `json:"pod,omitempty"`
	Role  string    `json:"role"`
	Epoch uint64    `json:"epoch"`
	Group string    `json:"group,omitempty"`
}

// Stopped is the Role of the line an app writes when it begins to shut
// down: from then on it acts on no role (hapod-demo answers 503).
const Stopped = "stopped"

// Writer appends Changes, one line each, safe for concurrent use.
type Writer struct {
	mu sync.Mutex
	w  io.Writer
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write appends c with one Write call, so lines never interleave.
func (w *Writer) Write(c Change) error {
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("rolerecord: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err = w.w.Write(append(b, '\n'))
	return err
}

// Decode parses one line.
func Decode(line []byte) (Change, error) {
	var c Change
	if err := json.Unmarshal(line, &c); err != nil {
		return Change{}, fmt.Errorf("rolerecord: %w", err)
	}
	if c.Role == "" || c.At.IsZero() {
		return Change{}, errors.New("rolerecord: role and at are required")
	}
	return c, nil
}
