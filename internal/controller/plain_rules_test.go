package controller

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/hapod/hapod/internal/config"
	"github.com/hapod/hapod/internal/election"
	"github.com/hapod/hapod/pkg/role"
)

func TestPlainMode(t *testing.T) {
	mode := role.RoleMessagesAnnotation
	def := plainSpec{port: plainDefaultPort, payload: []byte(plainDefaultPayload), repeats: plainDefaultRepeats}
	for _, tc := range []struct {
		name      string
		ann       map[string]string
		want      plainSpec
		wantPlain bool
		wantErr   string // a substring; "" for none
	}{
		// The hapod protocol, whatever the plain annotations say.
		{"no annotation", nil, plainSpec{}, false, ""},
		{"hapod", map[string]string{mode: "hapod", role.PlainPortAnnotation: "x"}, plainSpec{}, false, ""},
		// Plain, with the seed design's defaults.
		{"plain defaults", map[string]string{mode: "plain"}, def, true, ""},
		{"plain configured", map[string]string{mode: "plain", role.PlainPortAnnotation: "9000",
			role.PlainPayloadAnnotation: "GO", role.PlainRepeatsAnnotation: "1"},
			plainSpec{port: 9000, payload: []byte("GO"), repeats: 1}, true, ""},
		// An unknown mode assumes the least of the app: plain, sent nothing.
		{"unknown mode", map[string]string{mode: "Plain"}, plainSpec{}, true, "neither hapod nor plain"},
		{"port zero", map[string]string{mode: "plain", role.PlainPortAnnotation: "0"}, plainSpec{}, true, "not a port"},
		{"port too big", map[string]string{mode: "plain", role.PlainPortAnnotation: "65536"}, plainSpec{}, true, "not a port"},
		{"port not a number", map[string]string{mode: "plain", role.PlainPortAnnotation: "udp"}, plainSpec{}, true, "not a port"},
		{"empty payload", map[string]string{mode: "plain", role.PlainPayloadAnnotation: ""}, plainSpec{}, true, "1 to 1024 bytes"},
		{"payload too long", map[string]string{mode: "plain", role.PlainPayloadAnnotation: strings.Repeat("x", plainMaxPayload+1)}, plainSpec{}, true, "1 to 1024 bytes"},
		{"no copies", map[string]string{mode: "plain", role.PlainRepeatsAnnotation: "0"}, plainSpec{}, true, "from 1 to 10"},
		{"too many copies", map[string]string{mode: "plain", role.PlainRepeatsAnnotation: "11"}, plainSpec{}, true, "from 1 to 10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, plain, err := plainMode(tc.ann)
			if plain != tc.wantPlain {
				t.Errorf("plain = %v, want %v", plain, tc.wantPlain)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
			if got.port != tc.want.port || string(got.payload) != string(tc.want.payload) || got.repeats != tc.want.repeats {
				t.Errorf("spec = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestPlainBlocker(t *testing.T) {
	r := New(config.Default(), Deps{})
	plainPod := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name),
			Annotations: map[string]string{role.RoleMessagesAnnotation: "plain"}}}
	}
	dead := func(p *corev1.Pod) *corev1.Pod { p.Status.Phase = corev1.PodFailed; return p }
	protocol := func(p *corev1.Pod) *corev1.Pod { p.Annotations = nil; return p }
	next := &member{pod: plainPod("next"), Member: election.Member{Name: "next", Role: "standby"}}
	for _, tc := range []struct {
		name  string
		other *member
		told  *told
		want  bool
	}{
		// A standby that was never promoted holds nothing.
		{"plain standby", &member{pod: plainPod("b"), Member: election.Member{Role: "standby"}}, nil, false},
		// Labelled, told, or once promoted (an epoch, from any controller
		// process): its app may act as active until its end.
		{"plain labelled active", &member{pod: plainPod("b"), Member: election.Member{Role: "active"}}, nil, true},
		{"plain told active", &member{pod: plainPod("b"), Member: election.Member{Role: "standby"}}, &told{role: "active", epoch: 3}, true},
		{"plain with an epoch", &member{pod: plainPod("b"), Member: election.Member{Role: "standby", Epoch: 3}}, nil, true},
		// The API proves its app dead.
		{"plain active, pod failed", &member{pod: dead(plainPod("b")), Member: election.Member{Role: "active", Epoch: 3}}, nil, false},
		// A protocol-mode pod is fenced by its lease and standby message.
		{"protocol active", &member{pod: protocol(plainPod("b")), Member: election.Member{Role: "active", Epoch: 3}}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGroupState()
			if tc.told != nil {
				g.told[tc.other.pod.UID] = tc.told
			}
			members := func(yield func(*member) bool) {
				for _, m := range []*member{next, tc.other} {
					if !yield(m) {
						return
					}
				}
			}
			if got := r.plainBlocker(g, members, next); (got != nil) != tc.want {
				t.Errorf("blocker = %v, want one: %v", got, tc.want)
			}
		})
	}
}
