// Command hapod-file-app is a dev/demo application that knows nothing of
// hapod except a role file: the hapod-agent sidecar writes it (role=,
// epoch=, changed=, fenced= lines, replaced atomically by rename) and this
// app reads it. GET / answers 200 only while the file says active and not
// fenced; anything else (absent, unreadable, unknown, fenced) is standby.
//
// It polls the file (every -poll, 5 ms by default) rather than using
// inotify: polling needs no dependency, and works on any volume, including
// ones where inotify events do not arrive (network or overlay mounts, and
// an atomic rename that replaces the watched inode).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "hapod-file-app:", err)
		os.Exit(2)
	}
}
