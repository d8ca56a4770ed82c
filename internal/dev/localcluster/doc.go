// Package localcluster builds and runs a real, throwaway Kubernetes control plane on
// 127.0.0.1 for hapod's demo and tests: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler and kwok (a simulated kubelet that plays nodes and pods).
//
// # Build
//
// [Build] compiles every component from the Go module proxy at pinned versions
// ([DefaultVersions]) into a cache under the repository root:
//
//	.cache/cluster/bin/<component>-<version>/<binary>         the binary
//	.cache/cluster/bin/<component>-<version>/<binary>.stamp   version and sha256 of it
//	.cache/cluster/build/                                     throwaway build modules, logs
//
// A binary is used only if its stamp names the wanted version and the binary's sha256
// still matches; anything else (missing, half-written, corrupt) is rebuilt. Builds go to a
// temporary directory that is renamed into place only after the stamp is written, under a
// file lock so that concurrent test binaries do not build twice. The cold build takes about
// 8 minutes on 2 cores (mostly kube-apiserver and kube-controller-manager); with a warm Go
// build cache it takes about 20 seconds, and a cache hit costs the time to hash the binaries.
//
// # Run
//
// [Start] starts every component on 127.0.0.1 on free ports, in a fresh run directory
// (certificates and keys are generated in Go at start), waits until each is healthy, creates
// two kwok nodes (kwok-node-0 and kwok-node-1) whose pod CIDRs lie inside 127.0.0.0/8, and
// returns a [Cluster]. Several clusters can run at once. [Cluster.Stop] ends exactly the
// processes it started, one at a time in reverse order, and removes the run directory.
// Child processes get SIGKILL when the process that started them dies (Linux Pdeathsig),
// so a crashed test binary leaves no orphans; its run directory is removed by the next
// Start that uses the same run root.
//
// [Cluster.RestartAPIServer] kills kube-apiserver with SIGKILL, as a crash would, and
// starts it again with the same arguments on the same port; etcd and the other
// components run on. It is for tests of what the API server's clients do while it is
// away (the chaos run).
//
// The run directory holds a state file listing the pids, so another process can stop the
// cluster with [StopRunDir] (the hapod-cluster CLI's down does so); pids are checked against
// /proc/<pid>/exe before they are signalled, to guard against pid reuse.
//
// # Pods
//
// kwok marks pods Running and Ready at once and gives them an IP from their node's pod CIDR.
// The annotation [PodIPAnnotation] on a pod chooses its IP instead. kwok leaves status
// written by others alone, so a test can play the kubelet, for instance by marking a
// container terminated.
package localcluster
