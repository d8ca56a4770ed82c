// Command pause is the sandbox ("pause") container of the local cluster's
// real nodes: it holds a pod's namespaces and does nothing else until it is
// told to stop. Kubernetes' own pause is C; this one is a static Go binary
// built from this module, so no image is ever pulled.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// As PID 1 of its PID namespace the kernel delivers it only the signals
	// it handles: SIGTERM and SIGINT end it; everything else is ignored.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
}
