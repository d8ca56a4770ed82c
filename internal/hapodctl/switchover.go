package hapodctl

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hapod/hapod/api/v1alpha1"
)

// pollInterval is how often switchover --wait reads the HAGroup. A Get
// every quarter second is nothing to an API server, and unlike a watch it
// needs no resync when the connection drops during a long wait.
const pollInterval = 250 * time.Millisecond

func newSwitchoverCommand(o *options) *cobra.Command {
	var to string
	var waitFor bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "switchover GROUP [--to POD]",
		Short: "Ask the controller for a planned switchover of the active role, to POD or to the best eligible standby",
		Long: "switchover writes spec.switchover with a new id; the controller moves the active role once\n" +
			"(the old active acks standby before the new one is told active) and reports the id's outcome\n" +
			"in status.switchover. With --wait (the default) it waits for that outcome and exits non-zero\n" +
			"if the switchover failed or no outcome came within --timeout.",
		Example: "  kubectl hapod switchover web\n" +
			"  kubectl hapod switchover web --to web-7d9f-x2v4q --timeout 1m\n" +
			"  kubectl hapod switchover web --wait=false",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return fmt.Errorf("--timeout must be positive, not %v", timeout)
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			id, err := newID(time.Now(), rand.Reader)
			if err != nil {
				return err
			}
			name := args[0]
			if err := requestSwitchover(cmd.Context(), c, ns, name, id, to); err != nil {
				return err
			}
			fmt.Fprintf(o.streams.Out, "hagroup/%s switchover %s requested (to %s)\n", name, id, target(to))
			if !waitFor {
				return nil
			}
			return waitSwitchover(cmd.Context(), c, client.ObjectKey{Namespace: ns, Name: name}, id, timeout, o.streams.Out)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the pod to promote (default: the controller picks the best eligible standby)")
	cmd.Flags().BoolVar(&waitFor, "wait", true, "wait for the controller to report the outcome")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long --wait waits for the outcome")
	return cmd
}

// newID is a switchover id: the time, for a reader of status and history,
// and 32 random bits, so that two requests in the same second (two users,
// or a retry) never share an id the controller would carry out only once.
func newID(now time.Time, random io.Reader) (string, error) {
	b := make([]byte, 4)
	if _, err := io.ReadFull(random, b); err != nil {
		return "", fmt.Errorf("switchover id: %w", err)
	}
	return now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b), nil
}

// refuseSwitchover says why a group cannot be asked for a switchover now,
// or nil. The controller fails a paused group's request at once ("the
// group is paused"); refusing before writing it says what to do instead.
func refuseSwitchover(g *v1alpha1.HAGroup) error {
	paused, why := pausedBy(g)
	switch {
	case !paused:
		return nil
	case why == "":
		return fmt.Errorf("hagroup/%s is paused, and a paused group does not switch over: kubectl hapod resume %s first", g.Name, g.Name)
	default:
		return fmt.Errorf("hagroup/%s is paused by the controller (%s), and a paused group does not switch over", g.Name, why)
	}
}

// switchoverPatch is the merge patch that asks for switchover id. It
// carries the resourceVersion the checks were made on, so that a pause
// written between the check and the patch makes the patch fail with a
// conflict instead of being ignored, and it writes to as null when absent,
// since a merge patch would otherwise keep an earlier request's target.
func switchoverPatch(resourceVersion, id, to string) ([]byte, error) {
	var toValue any
	if to != "" {
		toValue = to
	}
	return json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": resourceVersion},
		"spec":     map[string]any{"switchover": map[string]any{"id": id, "to": toValue}},
	})
}

// requestSwitchover checks that the group exists and is not paused and that
// the target pod exists, then writes spec.switchover, again from the top
// if the group changed in between.
func requestSwitchover(ctx context.Context, c client.Client, ns, name, id, to string) error {
	if to != "" {
		var pod corev1.Pod
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: to}, &pod); err != nil {
			if apierrors.IsNotFound(err) {
				return fmt.Errorf("--to: pod %q not found in namespace %q", to, ns)
			}
			return err
		}
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		g, err := getGroup(ctx, c, ns, name)
		if err != nil {
			return err
		}
		if err := refuseSwitchover(g); err != nil {
			return err
		}
		patch, err := switchoverPatch(g.ResourceVersion, id, to)
		if err != nil {
			return err
		}
		return c.Patch(ctx, g, client.RawPatch(types.MergePatchType, patch), client.FieldOwner(FieldManager))
	})
}

// switchoverDone says whether status reports the end of switchover id, and
// whether it failed. A status of another id is an earlier request's.
func switchoverDone(st *v1alpha1.SwitchoverStatus, id string) (done, failed bool) {
	if st == nil || st.ID != id {
		return false, false
	}
	switch st.Phase {
	case v1alpha1.SwitchoverSucceeded:
		return true, false
	case v1alpha1.SwitchoverFailed:
		return true, true
	default:
		return false, false
	}
}

// readTimeout bounds one read of the group during a wait, so that a hung
// API server cannot hold the wait much past its timeout.
const readTimeout = 10 * time.Second

// waitSwitchover polls the group until the controller reports switchover
// id Succeeded or Failed, printing each phase it sees on the way, and
// returns an error if it failed or timeout passed first. The timeout is
// checked between reads rather than put on their context: client-go's rate
// limiter refuses a read early when it would wait past a context's
// deadline, which would report a spurious error at the end of a wait.
func waitSwitchover(ctx context.Context, c client.Client, key client.ObjectKey, id string, timeout time.Duration, out io.Writer) error {
	// Neither a timeout nor ^C withdraws the request: the controller may
	// still carry it out, and status will say so.
	stands := fmt.Sprintf("the request stands: kubectl hapod status %s shows its outcome", key.Name)
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last *v1alpha1.SwitchoverStatus
	var lastErr error
	for {
		rctx, cancel := context.WithTimeout(ctx, readTimeout)
		g, err := getGroup(rctx, c, key.Namespace, key.Name)
		cancel()
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("switchover %s: interrupted before its outcome; %s", id, stands)
		case apierrors.IsNotFound(err):
			// Deleted while we wait: it will never report.
			return err
		case err != nil:
			// May pass (an API server restarting): keep polling.
			lastErr = err
		default:
			st := g.Status.Switchover
			if st != nil && st.ID == id && (last == nil || last.Phase != st.Phase) {
				last = st.DeepCopy()
				if done, _ := switchoverDone(st, id); !done {
					fmt.Fprintf(out, "switchover %s: %s\n", id, st.Phase)
				}
			}
			if done, failed := switchoverDone(st, id); done {
				fmt.Fprintf(out, "switchover %s\n", outcome(st))
				if failed {
					return fmt.Errorf("switchover %s failed: %s", id, orNone(oneLine(st.Message)))
				}
				return nil
			}
		}
		if time.Now().After(deadline) {
			why := "the controller has not reported it (is hapod-controller running, and does it serve this HAGroup?)"
			if last != nil {
				why = "last reported " + string(last.Phase)
			} else if lastErr != nil {
				why = "last read failed: " + OneLine(lastErr)
			}
			return fmt.Errorf("switchover %s: no outcome within %v: %s; %s", id, timeout, why, stands)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("switchover %s: interrupted before its outcome; %s", id, stands)
		case <-tick.C:
		}
	}
}
