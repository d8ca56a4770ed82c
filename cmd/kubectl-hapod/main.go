// Command kubectl-hapod is the kubectl plugin kubectl hapod: status,
// history, planned switchover and pause of hapod's HAGroups. The commands
// are in internal/hapodctl; README.md ("kubectl hapod") shows them.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/hapod/hapod/internal/hapodctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	// After the first signal, restore the default behaviour so that a
	// second one ends a wait that hangs.
	context.AfterFunc(ctx, stop)
	err := hapodctl.Run(ctx, os.Args[1:], genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %s\n", hapodctl.OneLine(err))
		os.Exit(1)
	}
}
