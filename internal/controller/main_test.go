package controller_test

import (
	"testing"

	"github.com/hapod/hapod/internal/dev/clustertest"
)

func TestMain(m *testing.M) { clustertest.Main(m) }
