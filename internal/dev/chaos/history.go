// Package chaos is `make chaos`: random faults, mixed and overlapping, under
// real hapod-controller processes and one real app process per pod, and an
// independent check of the whole recorded history for the single-active
// guarantee, the way etcd's robustness tests and Jepsen work.
//
// The recorder shares no code with the controller: label changes come from
// its own watch of the pods (labels.go), every app's role changes from the
// app itself (hapod-demo's -role-records, which each app writes with its own
// clock when its pkg/role listener accepts a message or its lease lapses),
// and the faults from the run that injected them. Check (check.go) is a
// pure function of that history.
package chaos

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// History is everything a run recorded.
type History struct {
	// Labels are the pods labelled active in one group after each pod
	// event of the recorder's watch, in the order the watch delivered them
	// (resourceVersion order).
	Labels []LabelState `json:"labels"`
	// Apps are the role changes the apps reported, and their exits.
	Apps []AppChange `json:"apps"`
	// Faults are the faults injected, with how the group recovered.
	Faults []Fault `json:"faults"`
	// Start and End bound the run's fault phase: the check of the time
	// with no active counts from Start.
	Start, End time.Time
}

// LabelState is one group's active-labelled pods after a watch event.
type LabelState struct {
	At              time.Time `json:"at"` // when the recorder saw the event
	ResourceVersion string    `json:"rv"`
	Group           string    `json:"group"`
	Active          []string  `json:"active,omitempty"`
}

// App roles as the check reads them: the role strings of pkg/role (and
// rolerecord.Stopped) plus Exited, which the recorder adds when an app's
// process has been reaped.
const (
	RoleActive  = "active"
	RoleStandby = "standby"
	Exited      = "exited"
)

// AppChange is one role change an app reported (timed by the app), or its
// process's exit (timed by the recorder once it was reaped: no later than
// the app could act).
type AppChange struct {
	At    time.Time `json:"at"`
	Group string    `json:"group"`
	Pod   string    `json:"pod"`
	Role  string    `json:"role"`
	Epoch uint64    `json:"epoch,omitempty"`
}

// Fault is one injected fault and its outcome.
type Fault struct {
	ID    int    `json:"id"`
	Kind  string `json:"kind"`
	Group string `json:"group,omitempty"` // "" for a fault of the whole cluster
	// Target is the pod, process or node the fault hit.
	Target string `json:"target,omitempty"`
	// Start is when the fault began, Healed when it was taken away (a
	// resumed app, a reconnected node, a restarted process).
	Start  time.Time `json:"start"`
	Healed time.Time `json:"healed"`
	// Settled is the first moment after Healed at which the group had
	// exactly one pod labelled active whose app held the role at the
	// group's newest epoch, and no other app held it; zero if it did not
	// within the bound.
	Settled time.Time `json:"settled"`
	// FailedOver says the active changed; TookOver is when the new active's
	// app reported the role.
	FailedOver bool      `json:"failedOver,omitempty"`
	TookOver   time.Time `json:"tookOver"`
	From       string    `json:"from,omitempty"`
	To         string    `json:"to,omitempty"`
	// Err is why the fault could not be injected or did not settle.
	Err string `json:"err,omitempty"`
}

// Recorder collects a History, safe for concurrent use. If Sink is set,
// every entry is also written to it as one JSON line as it comes, so that a
// run that is interrupted still leaves its history.
type Recorder struct {
	mu   sync.Mutex
	h    History
	sink *json.Encoder
}

// NewRecorder returns a recorder; sink may be nil.
func NewRecorder(sink io.Writer) *Recorder {
	r := &Recorder{}
	if sink != nil {
		r.sink = json.NewEncoder(sink)
	}
	return r
}

func (r *Recorder) write(kind string, v any) {
	if r.sink != nil {
		_ = r.sink.Encode(map[string]any{kind: v}) // the history in memory is the one checked
	}
}

// Label records one group's active-labelled pods after a watch event.
func (r *Recorder) Label(s LabelState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.h.Labels = append(r.h.Labels, s)
	r.write("label", s)
}

// App records an app's role change or exit.
func (r *Recorder) App(c AppChange) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.h.Apps = append(r.h.Apps, c)
	r.write("app", c)
}

// Fault records a fault once it is over.
func (r *Recorder) Fault(f Fault) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.h.Faults = append(r.h.Faults, f)
	r.write("fault", f)
}

// Bound sets the fault phase's start or end (zero leaves one as it is).
func (r *Recorder) Bound(start, end time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !start.IsZero() {
		r.h.Start = start
	}
	if !end.IsZero() {
		r.h.End = end
	}
}

// History returns a copy of what was recorded so far.
func (r *Recorder) History() History {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.h
	h.Labels = append([]LabelState(nil), h.Labels...)
	h.Apps = append([]AppChange(nil), h.Apps...)
	h.Faults = append([]Fault(nil), h.Faults...)
	return h
}
