// Package podstatus writes a pod's status the way a kubelet does (ready,
// a container terminated, a container restarted), for the places where this
// project plays the kubelet over kwok: the tests, the demo and the benchmark.
package podstatus
