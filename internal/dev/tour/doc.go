// Package tour plays hapod's whole job on the local control plane, for `make demo`
// (cmd/hapod-tour) and for its own end-to-end test.
//
// It applies the seed's example (deploy/example) into one namespace, runs the real
// hapod-controller as a separate process (internal/dev/ctrlproc), and plays the two parts
// of Kubernetes that the local cluster does not have:
//
//   - the kubelet: for every pod that kwok makes Running, it starts a real hapod-demo
//     process bound to a loopback address of its own (netplan.TourDemo: 127.192.0.N), annotates the pod
//     hapod.io/role-address so that the controller's role messages reach that process,
//     probes the process's /readyz and only then writes the pod Ready (kwok leaves pods
//     annotated hapod.io/external-readiness not Ready); it stops the process when the pod
//     is deleted, and writes container deaths and restarts into the pod status as a
//     kubelet would;
//   - kube-proxy: a load generator sends HTTP requests to the Service by reading its
//     EndpointSlices, mapping each ready endpoint's IP to the pod that has it and that
//     pod's loopback address.
//
// Pod IPs come from the tour's own kwok node, whose pod CIDR is TEST-NET-2
// (198.51.100.0/24, netplan.TestNet2): the API server refuses loopback addresses in EndpointSlices, so the
// pods need IPs it accepts. Those IPs are API data only: the tour never sends a packet to
// them, and the controller runs with -notify-cidrs 127.0.0.0/8 so it cannot either.
//
// Then it plays scenes (initial election, active deleted, active's critical container
// dies, a sidecar dies, the standby's critical container dies), each reported as a
// timeline in milliseconds from its trigger, and checks that each behaved as expected.
//
// Everything on a timeline comes from data, never from log text: the cluster as the
// tour's watches saw it (internal/dev/observe), the controller's failover records
// (-failover-records: when it saw the trigger, committed the label, got the ack) and
// Events, and each demo process's role records (hapod-demo -role-records, written to a
// pipe the tour reads).
package tour
