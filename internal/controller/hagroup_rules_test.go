package controller

import (
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hapod/hapod/api/v1alpha1"
	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/election"
)

func TestUnsupportedSpec(t *testing.T) {
	c := config.Default()
	for _, tc := range []struct {
		name string
		spec v1alpha1.HAGroupSpec
		want string // a substring; "" for accepted
	}{
		{name: "empty spec takes the flags", spec: v1alpha1.HAGroupSpec{}},
		{name: "the flags' own values", spec: v1alpha1.HAGroupSpec{RoleLabel: "role", ActiveValue: "active", RolePort: 7477,
			LeaseTTL: &metav1.Duration{Duration: 150 * time.Millisecond}}},
		{name: "another role label", spec: v1alpha1.HAGroupSpec{RoleLabel: "tier"}, want: `spec.roleLabel "tier" differs from the controller's -role-label "role"`},
		{name: "another port", spec: v1alpha1.HAGroupSpec{RolePort: 9000}, want: "-role-port"},
		{name: "another lease", spec: v1alpha1.HAGroupSpec{LeaseTTL: &metav1.Duration{Duration: time.Second}}, want: "-lease-ttl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := unsupportedSpec(&tc.spec, &c)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("unsupportedSpec = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSwitchoverOutcome(t *testing.T) {
	a, b := election.Member{Name: "a", UID: "ua"}, election.Member{Name: "b", UID: "ub"}
	move := election.Decision{Promote: &b, Demote: []election.Demotion{{Member: a, Reason: election.PlannedSwitchover}}, Reason: election.PlannedSwitchover}
	held := election.Decision{Keep: &a}                                      // the lease gate held the move back
	failover := election.Decision{Promote: &b, Reason: election.LeaseLapsed} // the gated move, carried out
	inFlight := &v1alpha1.SwitchoverStatus{ID: "x", Phase: v1alpha1.SwitchoverInProgress, From: "a", To: "b"}
	req := &v1alpha1.SwitchoverRequest{ID: "x"}
	for _, tc := range []struct {
		name   string
		req    *v1alpha1.SwitchoverRequest
		prev   *v1alpha1.SwitchoverStatus
		paused bool
		active string
		asked  election.Decision
		d      election.Decision
		err    error
		phase  v1alpha1.SwitchoverPhase
		to     string
	}{
		{name: "carried out at once", req: req, active: "a", asked: move, d: move, phase: v1alpha1.SwitchoverSucceeded, to: "b"},
		{name: "held by the lease gate", req: req, active: "a", asked: move, d: held, phase: v1alpha1.SwitchoverInProgress, to: "b"},
		{name: "switch cut short", req: req, active: "a", asked: move, d: move, err: errors.New("timeout"), phase: v1alpha1.SwitchoverInProgress, to: "b"},
		{name: "gated move done", req: req, prev: inFlight, active: "b", asked: failover, d: failover, phase: v1alpha1.SwitchoverSucceeded, to: "b"},
		{name: "still in flight", req: req, prev: inFlight, active: "a", asked: held, d: held, phase: v1alpha1.SwitchoverInProgress, to: "b"},
		{name: "paused", req: req, paused: true, active: "a", asked: held, d: held, phase: v1alpha1.SwitchoverFailed},
		{name: "target already active", req: &v1alpha1.SwitchoverRequest{ID: "x", To: "a"}, active: "a", asked: held, d: held, phase: v1alpha1.SwitchoverSucceeded, to: "a"},
		{name: "target not eligible", req: &v1alpha1.SwitchoverRequest{ID: "x", To: "c"}, active: "a", asked: held, d: held, phase: v1alpha1.SwitchoverFailed, to: "c"},
		{name: "no standby", req: req, active: "a", asked: held, d: held, phase: v1alpha1.SwitchoverFailed},
		{name: "no active", req: req, asked: election.Decision{}, d: election.Decision{}, phase: v1alpha1.SwitchoverFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := switchoverOutcome(tc.req, tc.prev, tc.paused, tc.active, tc.asked, tc.d, tc.err)
			if s.ID != tc.req.ID || s.Phase != tc.phase || s.To != tc.to {
				t.Errorf("outcome %+v, want id %s phase %s to %q", *s, tc.req.ID, tc.phase, tc.to)
			}
			if s.Phase == v1alpha1.SwitchoverFailed && s.Message == "" {
				t.Errorf("failed without a message")
			}
		})
	}
}
