package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/dev/rolerecord"
)

// writeRole replaces the role file by rename, as hapod-agent does.
func writeRole(t *testing.T, path, role string, epoch uint64, fenced bool) {
	t.Helper()
	tmp := path + ".tmp"
	body := fmt.Sprintf("role=%s\nepoch=%d\nchanged=%s\nfenced=%t\n", role, epoch, time.Now().Format(time.RFC3339Nano), fenced)
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// waitFor polls GET / until it answers code with role, or fails at the deadline.
func waitFor(t *testing.T, addr string, code int, role string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			var st status
			_ = json.Unmarshal(b, &st)
			if resp.StatusCode == code && st.Role == role {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, b)
		} else {
			last = err.Error()
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("GET / never answered %d %s; last: %s", code, role, last)
}

func TestFollowsRoleFile(t *testing.T) {
	dir := t.TempDir()
	roleFile, records := filepath.Join(dir, "role"), filepath.Join(dir, "records")
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-http-addr", addr, "-pod-name", "p1", "-role-records", records}, func(k string) string {
			if k == "ROLE_FILE" {
				return roleFile
			}
			return ""
		}, io.Discard, io.Discard)
	}()
	waitFor(t, addr, http.StatusServiceUnavailable, "standby") // no file yet
	writeRole(t, roleFile, "unknown", 0, false)
	waitFor(t, addr, http.StatusServiceUnavailable, "standby")
	writeRole(t, roleFile, "active", 3, false)
	waitFor(t, addr, http.StatusOK, "active")
	writeRole(t, roleFile, "active", 3, true)
	waitFor(t, addr, http.StatusServiceUnavailable, "standby")
	writeRole(t, roleFile, "active", 4, false)
	waitFor(t, addr, http.StatusOK, "active")
	if err := os.WriteFile(roleFile, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, addr, http.StatusServiceUnavailable, "standby")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}

	f, err := os.Open(records)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		c, err := rolerecord.Decode(sc.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s/%d", c.Role, c.Epoch))
	}
	want := "standby/0 active/3 standby/3 active/4 standby/0 stopped/0"
	if s := strings.Join(got, " "); s != want {
		t.Errorf("records = %s, want %s", s, want)
	}
}

func TestParseRoleFile(t *testing.T) {
	r := parseRoleFile([]byte("role=active\nepoch=7\nfenced=false\nextra=1\n"))
	if !r.active() || r.Epoch != 7 {
		t.Errorf("got %+v", r)
	}
	if parseRoleFile(nil).active() || parseRoleFile([]byte("role=active\nfenced=true\n")).active() {
		t.Error("empty or fenced file counted as active")
	}
}
