package apifault

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Faults are what the proxy does to requests besides forwarding them. The zero value
// does nothing to them.
type Faults struct {
	// WriteFailure is the probability (0 to 1) that a write (POST, PUT, PATCH or
	// DELETE) is answered with an injected error instead of being forwarded. Each
	// write rolls the dice once while it is above 0.
	WriteFailure float64
	// Failure is the error a failed write gets.
	Failure FailureKind
	// Delay holds every write back this long before it is forwarded or failed (the
	// API server or the network being slow); with DelayAll, every request.
	Delay    time.Duration
	DelayAll bool
}

// FailureKind is the error an injected write failure answers with: a Kubernetes
// Status as the API server writes it.
type FailureKind int

const (
	// InternalError is 500 InternalError (etcd failed, say). client-go returns it
	// at once; apierrors.IsInternalError reports it.
	InternalError FailureKind = iota
	// TooManyRequests is 429 TooManyRequests with Retry-After: 1, as the API
	// server sheds load (priority and fairness). client-go waits and retries it,
	// up to 10 times; apierrors.IsTooManyRequests reports the last.
	TooManyRequests
	// Mixed draws InternalError or TooManyRequests for each failed write, even odds.
	Mixed
)

func (k FailureKind) String() string {
	switch k {
	case InternalError:
		return "InternalError"
	case TooManyRequests:
		return "TooManyRequests"
	case Mixed:
		return "Mixed"
	}
	return "FailureKind(" + strconv.Itoa(int(k)) + ")"
}

// Stats counts what the proxy did since Start.
type Stats struct {
	// Passed requests were forwarded to the upstream (however that ended).
	Passed int64
	// Failed writes were answered with an injected error.
	Failed int64
	// Delayed requests were held back by Faults.Delay (then forwarded, failed or cut).
	Delayed int64
	// Refused counts the connections reset as they came, and the requests turned
	// away, while partitioned or closed.
	Refused int64
	// Cut requests were in flight (watches, mostly) when Partition(true) or Close
	// reset their connections.
	Cut int64
	// UpstreamErrors are forwarded requests that the upstream did not answer (it
	// was down), answered 503 by the proxy.
	UpstreamErrors int64
}

// SetFaults replaces the faults; requests that arrive from now on meet them.
func (p *Proxy) SetFaults(f Faults) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = f
}

// Faults returns the faults in force.
func (p *Proxy) Faults() Faults {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faults
}

// Partition with on makes the API server unreachable through the proxy: every open
// connection is reset (watches end with an error, requests in flight are cut) and so
// is every new one, until Partition(false) or Reset. Faults set with SetFaults stay
// as they are meanwhile.
func (p *Proxy) Partition(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.partitioned = on
	if on {
		p.cutLocked()
	}
}

// Partitioned reports whether the proxy is partitioned.
func (p *Proxy) Partitioned() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.partitioned
}

// Reset makes the proxy healthy: no faults, no partition. Requests being delayed
// wait out their delay. The counters stay.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = Faults{}
	p.partitioned = false
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// decision is what happens to one request.
type decision struct {
	delay   time.Duration
	failure *metav1.Status // nil: forward
}

func (p *Proxy) decideLocked(method string) decision {
	var d decision
	f := p.faults
	write := isWrite(method)
	if f.Delay > 0 && (write || f.DelayAll) {
		d.delay = f.Delay
	}
	if !write || f.WriteFailure <= 0 {
		return d
	}
	// One draw per write decides both whether it fails and, for Mixed, how:
	// below WriteFailure/2 is the first kind.
	u := p.dice.Float64()
	if u >= f.WriteFailure {
		return d
	}
	kind := f.Failure
	if kind == Mixed {
		kind = InternalError
		if u >= f.WriteFailure/2 {
			kind = TooManyRequests
		}
	}
	d.failure = injected(kind)
	return d
}

func isWrite(method string) bool {
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return true
	}
	return false
}

// newDice returns the seeded source of the failure draws. Only decideLocked uses
// it, under Proxy.mu, so draws happen one at a time in the order requests arrive.
func newDice(seed uint64) *rand.Rand {
	// PCG wants two words; the second is fixed, so that one seed names one stream.
	return rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
}

// injectedMessage starts the message of every injected error, so that a log shows
// which failures were the chaos run's.
const injectedMessage = "apifault: injected"

func injected(kind FailureKind) *metav1.Status {
	if kind == TooManyRequests {
		return &apierrors.NewTooManyRequests(injectedMessage, 1).ErrStatus
	}
	return &apierrors.NewInternalError(errors.New(injectedMessage)).ErrStatus
}

func serviceUnavailable(err error) *metav1.Status {
	return &apierrors.NewServiceUnavailable("apifault: the upstream API server did not answer: " + err.Error()).ErrStatus
}

// writeStatus answers with st as the API server would: JSON, with Retry-After if
// st asks the client to wait.
func writeStatus(w http.ResponseWriter, st *metav1.Status) {
	out := *st
	out.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	body, err := json.Marshal(&out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if out.Details != nil && out.Details.RetryAfterSeconds > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(out.Details.RetryAfterSeconds)))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(int(out.Code))
	_, _ = w.Write(body) // the client may be gone; nothing to do then
}
