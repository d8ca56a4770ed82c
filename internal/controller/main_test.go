package controller_test

import (
	"os"
	"testing"

	"github.com/hapod/hapod/internal/dev/clustertest"
)

func TestMain(m *testing.M) {
	if os.Getenv(envListenerChild) != "" {
		runListenerChild() // BenchmarkLeaseRenewals' apps, in a process of their own
		return
	}
	clustertest.Main(m)
}
