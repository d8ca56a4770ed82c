package main

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
	"time"
)

// fileRole is what the role file says; the zero value is standby.
type fileRole struct {
	Role    string // "active", "standby" or "unknown"
	Epoch   uint64
	Changed time.Time
	Fenced  bool
}

// active is true only for an unfenced active: every other state, including
// a file that cannot be read, must not serve.
func (r fileRole) active() bool { return r.Role == "active" && !r.Fenced }

// served is the role the app acts on: "active" or "standby".
func (r fileRole) served() string {
	if r.active() {
		return "active"
	}
	return "standby"
}

// parseRoleFile reads key=value lines; unknown keys are ignored so that the
// agent may add some.
func parseRoleFile(b []byte) fileRole {
	var r fileRole
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		switch k {
		case "role":
			r.Role = v
		case "epoch":
			r.Epoch, _ = strconv.ParseUint(v, 10, 64)
		case "changed":
			r.Changed, _ = time.Parse(time.RFC3339Nano, v)
		case "fenced":
			r.Fenced = v == "true"
		}
	}
	if r.Role == "" {
		r.Role = "unknown"
	}
	return r
}
