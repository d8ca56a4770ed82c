package controller

import "testing"

func TestEpochAfterLostLease(t *testing.T) {
	tests := []struct {
		name        string
		known, want uint64
	}{
		// A new group: nothing was ever handed out, the first epoch is 1.
		{"no history", 0, 0},
		// Pods or memory show epoch 3; the lost Lease may have reserved up
		// to 3+8 (an app told 4 whose annotation was never written).
		{"history", 3, 3 + epochBlock},
		// Past the Lease's limit: the next promotion is refused
		// (epochsExhausted), never wrapped.
		{"near the limit", maxEpoch - 1, maxEpoch - 1 + epochBlock},
	}
	for _, tc := range tests {
		if got := epochAfterLostLease(tc.known); got != tc.want {
			t.Errorf("%s: epochAfterLostLease(%d) = %d, want %d", tc.name, tc.known, got, tc.want)
		}
	}
}
