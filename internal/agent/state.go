package agent

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/hapod/hapod/pkg/role"
)

// view is one state as the agent hands it on: the Listener's State plus a
// sequence number that HTTP clients use to wait for the next one.
type view struct {
	Role    string    `json:"role"`
	Epoch   uint64    `json:"epoch"`
	Changed time.Time `json:"changed"`
	Fenced  bool      `json:"fenced"`
	Seq     uint64    `json:"seq"`
}

func viewOf(s role.State, seq uint64) view {
	r := string(s.Role)
	if s.Role == role.Unknown {
		r = "unknown"
	}
	return view{Role: r, Epoch: s.Epoch, Changed: s.Changed.UTC(), Fenced: s.Fenced, Seq: seq}
}

// changed is RFC3339Nano in UTC; the zero time (no message yet) is the
// agent's start.
func (v view) changedText() string { return v.Changed.UTC().Format(time.RFC3339Nano) }

// fileText is the role file's content: exactly these four lines.
func (v view) fileText() []byte {
	return fmt.Appendf(nil, "role=%s\nepoch=%d\nchanged=%s\nfenced=%t\n", v.Role, v.Epoch, v.changedText(), v.Fenced)
}

// env is what the on-change command gets in its environment.
func (v view) env() []string {
	return []string{
		"ROLE=" + v.Role,
		"EPOCH=" + strconv.FormatUint(v.Epoch, 10),
		"CHANGED=" + v.changedText(),
		"FENCED=" + strconv.FormatBool(v.Fenced),
	}
}

func (v view) json() []byte {
	b, _ := json.Marshal(v) // cannot fail: plain fields
	return b
}
