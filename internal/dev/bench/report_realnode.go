package bench

import "fmt"

// mdRealNode: the real-node scenario, end to end.
func (r *Results) mdRealNode(p printf) {
	rn := r.RealNode
	if rn == nil {
		return
	}
	p("## End to end on real nodes\n\n")
	p("Two real nodes (kubelet, containerd, runc, CNI bridge; one kube-proxy in nftables mode) in a network namespace of the bench's own; ")
	p("the pods are real containers of hapod-demo (init %s) with the pause binary as a non-critical sidecar, the controller the shipped binary. ", r.Settings.InitDelay)
	p("Each time runs from the trigger: the SIGKILL of the active's critical process (found by its cgroup), or the DELETE request. ")
	p("\"kube-proxy rule\" is when `nft monitor` in the namespace printed kube-proxy's rule sending the Service to the new pod (stamped when read: it trails the kernel's change by the pipe). ")
	p("\"First answer via ClusterIP\" is the first of the bench's requests (one every 2 ms, a new connection each, through kube-proxy's rules) answered 200 by the new pod: what a client sees. ")
	p("hapod's rows run as `deploy/example` ships (the critical container `restartPolicy: Never`); the restart baseline uses the pod's default policy ")
	p("and this cluster's kubelet `crashLoopBackOff.maxContainerRestartPeriod: 1s` (the default back-off grows from 10 s to 300 s with repeated crashes, so in production it is slower than measured here).\n\n")
	for _, row := range rn.Rows {
		p("**%s**", row.Trigger)
		if rs := rn.Reasons[row.Trigger]; len(rs) > 0 {
			p(" (failover reasons: %s)", reasons(rs))
		}
		p("\n\n| stage | n | p50 | p90 | p99 | max |\n|---|--:|--:|--:|--:|--:|\n")
		for _, st := range row.Stages {
			if st.Name == StageFailedReqs {
				s := st.Summary
				p("| %s (per event) | %d | %.0f | %.0f | %.0f | %.0f |\n", st.Name, s.N, s.P50, s.P90, s.P99, s.Max)
				continue
			}
			p("| %s | %s |\n", st.Name, summaryCells(st.Summary))
		}
		p("\n")
	}
	p("Two apps held the active role at once, or one epoch went to two apps (from every app's own records, a killed app's role ending at its kill): **%d** times.\n\n", rn.Overlaps)
}

// realNodeCDF are the end-to-end lines of the chart: the first answer via
// the ClusterIP per row.
func (r *Results) realNodeCDF() []cdfLine {
	if r.RealNode == nil {
		return nil
	}
	colors := map[string]string{RealKill: "#1b9e77", RealKillAPI: "#66a61e", RealDelete: "#7570b3", RealRestart: "#d95f02", RealNoStandby: "#e7298a", RealLEDefault: "#a6761d", RealLEAggressive: "#e6ab02"}
	var lines []cdfLine
	for _, row := range r.RealNode.Rows {
		for _, st := range row.Stages {
			if st.Name == StageClusterIP {
				lines = append(lines, cdfLine{label: fmt.Sprintf("real node, %s: first answer via ClusterIP", row.Trigger), ms: st.Ms, color: colors[row.Trigger], dash: "4 2"})
			}
		}
	}
	return lines
}
