package bench

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// mdLease: the kill -9 scenario and the renewal cost.
func (r *Results) mdLease(p printf) {
	if r.Lease != nil {
		p("## The role lease: kill -9 of the active app\n\n")
		p("One group of two pods; each app is a hapod-demo process (it links pkg/role), and the active's is killed with SIGKILL at a random moment of the renewal cycle. ")
		p("Times run from the kill to the new active's app holding the role (its own report). The controller runs with its default lease flags ")
		p("(`-lease-renew 50ms -lease-ttl 150ms -lease-margin 10ms`). On the API path the bench writes the critical container terminated right after the kill: ")
		p("the best case of that path, since a real kubelet notices a dead container at its next PLEG relist (up to 1 s) and a lost node is noticed after 40–50 s; the lease catches both in its own time.\n\n")
		p("| the kill is noticed through | n | p50 | p90 | p99 | max | failover reasons |\n|---|--:|--:|--:|--:|--:|---|\n")
		for _, k := range r.Lease.Kills {
			p("| %s | %s | %s |\n", k.Detection, summaryCells(k.Series.Summary), reasons(k.Reasons))
		}
		p("\nTwo apps held the active role at once (from every app's own reports, the killed one's interval ending at its kill): **%d** times.\n\n", r.Lease.Overlaps)
	}
	if rn := r.Renewals; rn != nil {
		p("## The role lease: what renewals cost\n\n")
		p("%d groups of one pod, every active holding its lease, %.1f s in which nothing but renewals happens:\n\n", rn.Groups, rn.Seconds)
		p("| renewals sent/s | acks/s | controller CPU | per renewal and its ack | apps (bench process) CPU | kube-apiserver CPU | controller API requests | missed | lapsed |\n")
		p("|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		perRenewal := "–"
		if rn.SentPerSec > 0 {
			perRenewal = fmt.Sprintf("%.1f µs", rn.ControllerCPU/rn.SentPerSec*1e6)
		}
		p("| %.0f | %.0f | %.3f CPU-s/s | %s | %.3f CPU-s/s | %s | %.0f | %.0f | %.0f |\n\n",
			rn.SentPerSec, rn.AckedPerSec, rn.ControllerCPU, perRenewal, rn.BenchCPU, cpuRate(rn.APIServerCPU), rn.APIRequests, rn.Missed, rn.Lapses)
	}
}

// mdSoak: healthy groups held with every core busy.
func (r *Results) mdSoak(p printf) {
	s := r.Soak
	if s == nil {
		return
	}
	p("## Soak: no false failover with every core busy\n\n")
	p("%d healthy groups of two pods (apps in the bench process), the controller's default lease flags, and %d busy loops (`while :; do :; done`, one per core, default priority) beside the control plane, the controller and the bench, for %.0f s. ",
		s.Groups, s.BusyLoops, s.Seconds)
	p("Load average (1 min) p50 %.1f, max %.1f.\n\n", s.Load1.P50, s.Load1.Max)
	p("| renewals sent/s | missed | leases lapsed | failovers | apps fenced, then granted again | controller CPU | apps (bench) CPU |\n|--:|--:|--:|--:|--:|--:|--:|\n")
	p("| %.0f | %.0f | %.0f | %d | %d | %.3f CPU-s/s | %.3f CPU-s/s |\n\n", s.SentPerSec, s.Missed, s.Lapses, s.Failovers, s.Fenced, s.ControllerCPU, s.BenchCPU)
	p("A missed renewal got no ack before the next one. A fenced app's lease ran out before a renewal reached it (the controller or the app starved for longer than the lease's slack, 50–100 ms): it was standby, with no failover, until the controller granted it the role again a round trip later.\n\n")
	verdict := "none failed over"
	if n := s.FalseFailovers(); n > 0 {
		verdict = fmt.Sprintf("**%d false failovers**", n)
	}
	p("Result: %s.\n\n", verdict)
}

// leaseTargets are the role lease's targets (issue 9).
func (r *Results) leaseTargets(verdict func(bool) string) []string {
	var out []string
	if r.Lease != nil {
		for _, k := range r.Lease.Kills {
			if k.Detection == DetectLease && k.Series.Summary.N > 0 {
				out = append(out, fmt.Sprintf("kill -9 of the active app, noticed by the role lease alone, p99 under 200 ms to the new active's app holding the role: %s, %s.",
					fmtMs(k.Series.Summary.P99), verdict(k.Series.Summary.P99 < 200)))
			}
		}
		out = append(out, fmt.Sprintf("never two apps active: %d overlaps, %s.", r.Lease.Overlaps, verdict(r.Lease.Overlaps == 0)))
	}
	if r.Soak != nil {
		out = append(out, fmt.Sprintf("%.0f s with every core busy, %d healthy groups: %d false failovers, %s.",
			r.Soak.Seconds, r.Soak.Groups, r.Soak.FalseFailovers(), verdict(r.Soak.FalseFailovers() == 0 && r.Soak.Seconds >= 600)))
	}
	return out
}

func reasons(m map[string]int) string {
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func cpuRate(s float64) string {
	if s == 0 {
		return "–"
	}
	return fmt.Sprintf("%.3f CPU-s/s", s)
}
