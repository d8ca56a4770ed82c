package realpod

import (
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/rolerecord"
)

func TestOverlaps(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	rec := func(pod string, ms int, role string, epoch uint64) rolerecord.Change {
		return rolerecord.Change{At: at(ms), Pod: pod, Role: role, Epoch: epoch}
	}
	now := at(10000)
	for _, tc := range []struct {
		name      string
		records   map[string][]rolerecord.Change
		killed    map[string][]time.Time
		overlaps  int
		sameEpoch int
	}{
		{name: "handover after a demotion",
			records: map[string][]rolerecord.Change{
				"a": {rec("a", 0, "active", 1), rec("a", 100, "standby", 2)},
				"b": {rec("b", 0, "standby", 1), rec("b", 101, "active", 2)},
			}},
		{name: "promoted before the old one let go",
			records: map[string][]rolerecord.Change{
				"a": {rec("a", 0, "active", 1), rec("a", 200, "standby", 2)},
				"b": {rec("b", 150, "active", 2)},
			}, overlaps: 1},
		{name: "a killed app ends at its death",
			records: map[string][]rolerecord.Change{
				"a": {rec("a", 0, "active", 1)},
				"b": {rec("b", 300, "active", 2)},
			}, killed: map[string][]time.Time{"a": {at(100)}}},
		{name: "a killed app never told anything again holds active until now",
			records: map[string][]rolerecord.Change{
				"a": {rec("a", 0, "active", 1)},
				"b": {rec("b", 300, "active", 2)},
			}, overlaps: 1},
		{name: "killed, restarted in place, told standby later: the death ends it",
			records: map[string][]rolerecord.Change{
				"a": {rec("a", 0, "active", 1), rec("a", 900, "standby", 2)},
				"b": {rec("b", 300, "active", 2)},
			}, killed: map[string][]time.Time{"a": {at(100)}}},
		{name: "stopped ends the role",
			records: map[string][]rolerecord.Change{
				"a": {rec("a", 0, "active", 1), rec("a", 50, rolerecord.Stopped, 0)},
				"b": {rec("b", 60, "active", 2)},
			}},
		{name: "same epoch to two apps",
			records: map[string][]rolerecord.Change{
				"a": {rec("a", 0, "active", 1), rec("a", 10, "standby", 1)},
				"b": {rec("b", 20, "active", 1)},
			}, sameEpoch: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, s := Overlaps(tc.records, tc.killed, now)
			if len(o) != tc.overlaps || len(s) != tc.sameEpoch {
				t.Fatalf("overlaps %v, same epoch %v; want %d and %d", o, s, tc.overlaps, tc.sameEpoch)
			}
		})
	}
}

func TestTemplateRoleFile(t *testing.T) {
	tpl := Template(Options{Labels: map[string]string{"app": "hapod-file"}, Records: "/tmp/r", RoleFile: true})
	c := tpl.Spec.Containers
	if len(c) != 2 || c[0].Image != FileAppImage || c[1].Image != AgentImage {
		t.Fatalf("containers: %+v", c)
	}
	if len(c[0].Ports) != 1 || len(c[1].Ports) != 1 || c[1].Ports[0].Protocol != "UDP" {
		t.Errorf("the role port belongs to the agent: app %v, agent %v", c[0].Ports, c[1].Ports)
	}
	if len(tpl.Spec.Volumes) != 2 || tpl.Spec.Volumes[1].EmptyDir == nil {
		t.Errorf("volumes: %+v", tpl.Spec.Volumes)
	}
}
