package controller_test

import (
	"testing"

	"github.com/hapod/hapod/internal/clustertest"
)

func TestMain(m *testing.M) { clustertest.Main(m) }
