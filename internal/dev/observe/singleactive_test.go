package observe

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestSingleActive(t *testing.T) {
	pod := func(name, role, rv string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: rv, Labels: map[string]string{"role": role}}}
	}
	type ev struct {
		p       *corev1.Pod
		deleted bool
	}
	tests := []struct {
		name   string
		events []ev
		want   string // in the violation; "" for none
	}{
		{"a handover: the old active relabelled first", []ev{{pod("a", "active", "1"), false}, {pod("a", "standby", "2"), false}, {pod("b", "active", "3"), false}}, ""},
		{"the old active deleted first", []ev{{pod("a", "active", "1"), false}, {pod("a", "active", "2"), true}, {pod("b", "active", "3"), false}}, ""},
		{"the new one labelled before the old one was relabelled", []ev{{pod("a", "active", "1"), false}, {pod("b", "active", "2"), false}, {pod("a", "standby", "3"), false}}, "at resourceVersion 2"},
	}
	for _, tc := range tests {
		c := &SingleActive{Label: "role", Value: "active"}
		for _, e := range tc.events {
			c.See(e.p, e.deleted)
		}
		got := c.Violation()
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: violation %q, want %q", tc.name, got, tc.want)
		}
	}
}
