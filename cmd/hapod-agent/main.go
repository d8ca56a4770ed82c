// Command hapod-agent is a role sidecar: it relays the hapod controller's
// role messages to an application in any language as a file, a command and
// a local HTTP API. The logic is in internal/agent; docs/agent.md has the
// guide.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hapod/hapod/internal/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	// After the first signal, restore the default behaviour so that a second
	// one ends a shutdown that hangs.
	context.AfterFunc(ctx, stop)
	err := agent.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "hapod-agent: %v\n", err)
	}
	os.Exit(agent.ExitCode(err))
}
