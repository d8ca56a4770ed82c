package chaos

import (
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func app(ms int, pod, role string, epoch uint64) AppChange {
	return AppChange{At: at(ms), Group: "g", Pod: pod, Role: role, Epoch: epoch}
}

func TestCheckApps(t *testing.T) {
	for _, tc := range []struct {
		name string
		apps []AppChange
		// want* are substrings of the violations, "" for none.
		wantOverlap, wantEpoch string
		wantGap                time.Duration
	}{{
		name: "clean failover",
		apps: []AppChange{app(0, "a", RoleActive, 1), app(100, "a", Exited, 0), app(250, "b", RoleActive, 2)},
		// a's exit at 100, b active from 250: 150 ms with no active.
		wantGap: 150 * time.Millisecond,
	}, {
		name: "lapse then takeover",
		// a's lapse is written late but timed at its lease's end (120).
		apps:    []AppChange{app(0, "a", RoleActive, 1), app(200, "b", RoleActive, 2), app(120, "a", RoleStandby, 1)},
		wantGap: 80 * time.Millisecond,
	}, {
		name:        "overlap",
		apps:        []AppChange{app(0, "a", RoleActive, 1), app(100, "b", RoleActive, 2), app(130, "a", RoleStandby, 2)},
		wantOverlap: "apps a and b both held the active role for 30ms",
	}, {
		name:        "overlap with an app that never let go",
		apps:        []AppChange{app(0, "a", RoleActive, 1), app(100, "b", RoleActive, 2), app(200, "b", Exited, 0)},
		wantOverlap: "for 100ms",
	}, {
		name: "same app takes its epoch again after a lapse",
		apps: []AppChange{app(0, "a", RoleActive, 1), app(150, "a", RoleStandby, 1), app(160, "a", RoleActive, 1)},
		// 10 ms gap
		wantGap: 10 * time.Millisecond,
	}, {
		name:      "epoch handed to two pods",
		apps:      []AppChange{app(0, "a", RoleActive, 3), app(10, "a", RoleStandby, 3), app(20, "b", RoleActive, 3)},
		wantEpoch: "epoch 3 handed to a and to b",
		wantGap:   10 * time.Millisecond,
	}, {
		name:      "epoch went back",
		apps:      []AppChange{app(0, "a", RoleActive, 5), app(10, "a", Exited, 0), app(20, "b", RoleActive, 4)},
		wantEpoch: "b took epoch 4 after a held 5",
		wantGap:   10 * time.Millisecond,
	}, {
		name:      "forged epoch",
		apps:      []AppChange{app(0, "a", RoleActive, 1), app(10, "b", RoleStandby, 1), app(20, "b", RoleActive, 1<<40)},
		wantEpoch: "forged epoch",
		// b's forged interval overlaps a's: both reported.
		wantOverlap: "apps a and b",
	}, {
		name: "standby records never count",
		apps: []AppChange{app(0, "a", RoleActive, 1), app(5, "b", RoleStandby, 9), app(6, "c", RoleStandby, 1)},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			r := Check(History{Apps: tc.apps, Start: at(0), End: at(300)}, CheckOptions{ForgedEpochs: 1 << 32})
			check := func(what string, vs []Violation, want string) {
				t.Helper()
				if want == "" {
					if len(vs) > 0 {
						t.Errorf("%s: unexpected %v", what, vs)
					}
					return
				}
				for _, v := range vs {
					if strings.Contains(v.What, want) {
						return
					}
				}
				t.Errorf("%s: got %v, want one with %q", what, vs, want)
			}
			check("overlaps", r.AppOverlaps, tc.wantOverlap)
			check("epochs", r.Epochs, tc.wantEpoch)
			if r.MaxNoActive != tc.wantGap {
				t.Errorf("max time with no active = %s, want %s", r.MaxNoActive, tc.wantGap)
			}
		})
	}
}

func TestCheckLabels(t *testing.T) {
	h := History{Labels: []LabelState{
		{At: at(0), ResourceVersion: "1", Group: "g", Active: []string{"a"}},
		{At: at(1), ResourceVersion: "2", Group: "g"},
		{At: at(2), ResourceVersion: "3", Group: "g", Active: []string{"b"}},
		{At: at(3), ResourceVersion: "4", Group: "g", Active: []string{"a", "b"}},
		{At: at(4), ResourceVersion: "5", Group: "h", Active: []string{"c"}},
	}}
	r := Check(h, CheckOptions{})
	if len(r.LabelDoubles) != 1 || !strings.Contains(r.LabelDoubles[0].What, "resourceVersion 4") {
		t.Fatalf("label doubles %v, want the one at resourceVersion 4", r.LabelDoubles)
	}
	if r.Violations() != 1 {
		t.Fatalf("violations %d, want 1", r.Violations())
	}
}

func TestCheckFaults(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	faults := []Fault{
		{ID: 1, Kind: "kill", Start: at(0), Healed: at(0), Settled: at(200), FailedOver: true, TookOver: at(150)},
		{ID: 2, Kind: "kill", Start: at(1000), Healed: at(1000), Settled: at(1300), FailedOver: true, TookOver: at(1250)},
		{ID: 3, Kind: "stop", Start: at(2000), Healed: at(2500), Settled: at(2600)},
		// Settled 9 s after being healed: over the 5 s bound.
		{ID: 4, Kind: "stop", Start: at(3000), Healed: at(3100), Settled: at(12100), Target: "p"},
		{ID: 5, Kind: "cut", Start: at(4000), Err: "boom"},
	}
	rows, unsettled := byKind(faults, 5*time.Second)
	if len(unsettled) != 2 || !strings.Contains(unsettled[0].What, "fault 4 (stop on p)") || !strings.Contains(unsettled[1].What, "boom") {
		t.Fatalf("unsettled %v", unsettled)
	}
	want := []KindRow{
		{Kind: "cut", Faults: 1, Unsettled: 1},
		{Kind: "kill", Faults: 2, FailedOver: 2, FailoverP50: ms(150), FailoverP99: ms(250), SettleP50: ms(200), SettleMax: ms(300)},
		{Kind: "stop", Faults: 2, Unsettled: 1, SettleP50: ms(600), SettleMax: ms(600)},
	}
	if len(rows) != len(want) {
		t.Fatalf("rows %+v", rows)
	}
	for i := range want {
		if rows[i] != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, rows[i], want[i])
		}
	}
}

func TestQuantile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(i))
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50}, {0.99, 99}, {1, 100}, {0, 1}} {
		if got := quantile(ds, tc.q); got != tc.want {
			t.Errorf("quantile(%v) = %d, want %d", tc.q, got, tc.want)
		}
	}
	if quantile(nil, 0.5) != 0 {
		t.Error("quantile of nothing is not 0")
	}
}
