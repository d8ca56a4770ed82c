package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Write writes results.md, results.json and cdf.svg into dir, each through
// a temporary file renamed into place.
func (r *Results) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	var md, svg strings.Builder
	r.Markdown(&md)
	r.CDF(&svg)
	for name, data := range map[string][]byte{
		"results.json": append(js, '\n'),
		"results.md":   []byte(md.String()),
		"cdf.svg":      []byte(svg.String()),
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path+".tmp", data, 0o644); err != nil {
			return err
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			return err
		}
	}
	return nil
}

// fmtMs renders milliseconds with a unit and three significant digits.
func fmtMs(v float64) string {
	switch {
	case math.IsNaN(v):
		return "–"
	case v >= 1000:
		return fmt.Sprintf("%.2f s", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	case v >= 10:
		return fmt.Sprintf("%.1f ms", v)
	default:
		return fmt.Sprintf("%.2f ms", v)
	}
}

func summaryCells(s Summary) string {
	if s.N == 0 {
		return "0 | – | – | – | –"
	}
	return fmt.Sprintf("%d | %s | %s | %s | %s", s.N, fmtMs(s.P50), fmtMs(s.P90), fmtMs(s.P99), fmtMs(s.Max))
}

// Markdown writes the report.
func (r *Results) Markdown(w io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	r.mdHeader(p)
	r.mdOneGroup(p)
	r.mdAlternatives(p)
	r.mdLease(p)
	r.mdScale(p)
	r.mdSoak(p)
	r.mdRealNode(p)
	p("## Distribution\n\n![CDF of failover latency per system](cdf.svg)\n\n")
	p("## How it was measured\n\n")
	for _, n := range notes(r) {
		p("- %s\n", n)
	}
}

// printf is the writer of one Markdown report.
type printf func(format string, a ...any)

// mdHeader: the run, the machine, the cluster, the controller, the targets and
// the scenarios that failed.
func (r *Results) mdHeader(p printf) {
	p("# hapod failover benchmark\n\n")
	commit := ""
	if r.Commit != "" {
		commit = fmt.Sprintf(", commit `%s`", r.Commit)
	}
	p("`hapod-bench` (%s mode), %s%s, took %s. Reproduce with `make bench` (`make bench BENCH_FLAGS=-short` for the quick mode).\n\n", r.Mode, r.Started.Format("2006-01-02 15:04 MST"), commit,
		(time.Duration(r.Seconds) * time.Second).String())
	m := r.Machine
	p("- **Machine:** %d × %s, %d GiB, Linux %s, %s. Load average (1/5/15 min) before %s, after %s.\n",
		m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, m.Go, m.LoadBefore, m.LoadAfter)
	if m.Concurrency != "" {
		p("  %s\n", m.Concurrency)
	}
	p("- **Cluster:** %s\n", r.Cluster)
	s := r.Settings
	p("- **Controller:** its own process, `-workers %d -kube-api-qps %g -kube-api-burst %d -notify-cidrs %s`, other flags at their defaults.\n\n",
		s.Workers, s.QPS, s.Burst, s.NotifyCIDRs)
	if t := r.targets(); len(t) > 0 {
		p("**Targets** (issues 5 and 9):\n\n")
		for _, line := range t {
			p("- %s\n", line)
		}
		p("\n")
	}
	if len(r.Unasked) > 0 {
		p("**Failovers the bench did not cause** (a healthy active's role lease lapsed: the machine starved it; left out of the samples):")
		for _, k := range slices.Sorted(maps.Keys(r.Unasked)) {
			p(" %s %d;", k, r.Unasked[k])
		}
		p("\n\n")
	}
	if len(r.Errors) > 0 {
		p("**Scenarios that failed:**\n\n")
		for _, e := range r.Errors {
			p("- %s\n", e)
		}
		p("\n")
	}
}

func (r *Results) mdOneGroup(p printf) {
	if len(r.OneGroup) == 0 {
		return
	}
	p("## hapod, one group\n\n")
	p("Failovers of one group (two pods), the triggers alternating. Each time runs from the start of the trigger's API write. ")
	p("The app has the role when its pkg/role listener accepted the message (it acks at once); the controller tells the new active before it writes any label.\n\n")
	p("| trigger | stage | n | p50 | p90 | p99 | max |\n|---|---|--:|--:|--:|--:|--:|\n")
	for _, t := range r.OneGroup {
		for _, st := range t.Stages {
			p("| %s | %s | %s |\n", t.Trigger, st.Name, summaryCells(st.Summary))
		}
	}
	p("\n")
}

func (r *Results) mdAlternatives(p printf) {
	p("## Against the alternatives\n\n")
	p("Same cluster, same run. The last column is each median over hapod's median from the active pod's deletion to the new active's label committed.\n\n")
	p("| system | measured | n | p50 | p90 | p99 | max | p50 ÷ hapod |\n|---|---|--:|--:|--:|--:|--:|--:|\n")
	for _, t := range r.OneGroup {
		if t.Trigger != TriggerDelete {
			continue
		}
		for _, st := range t.Stages {
			switch st.Name {
			case StageAck:
				p("| hapod | active pod deleted → new active's app has the role | %s | %s |\n", summaryCells(st.Summary), ratio(st.Summary.P50, r.labelMedian()))
			case StageLabelled:
				p("| hapod | active pod deleted → new active's label committed | %s | 1 |\n", summaryCells(st.Summary))
			}
		}
	}
	for _, b := range r.Baselines {
		p("| %s | %s | %s | %s |\n", b.System, b.Measure, summaryCells(b.Series.Summary), ratio(b.Series.Summary.P50, r.labelMedian()))
	}
	for _, b := range r.Baselines {
		if b.Acquired != nil {
			p("\n%s: %s p50 %s, p99 %s.", b.System, b.Acquired.Name, fmtMs(b.Acquired.Summary.P50), fmtMs(b.Acquired.Summary.P99))
		}
	}
	p("\n\n")
}

func (r *Results) mdScale(p printf) {
	if len(r.Scale) == 0 {
		return
	}
	p("## Scale: every group fails over at once\n\n")
	p("Two pods per group, all actives on one kwok node, all standbys on another; trigger: %s. ", massText(r.Settings.Mass))
	p("Times per group from the trigger. CPU, requests and peak memory are the controller process's over the window from the trigger until its API requests stopped; ")
	p("peak RSS is VmHWM, reset just before the trigger.\n\n")
	p("| groups | failed over | app has the role p50 / p99 / max | label committed p50 / p99 / max | API requests per failover |\n")
	p("|--:|--:|--:|--:|--:|\n")
	for _, sc := range r.Scale {
		done := strconv.Itoa(sc.Completed)
		if sc.FalseBefore > 0 {
			done += fmt.Sprintf(" (+%d before the trigger)", sc.FalseBefore)
		}
		p("| %s | %s | %s / %s / %s | %s / %s / %s | %.1f (%s) |\n",
			scaleName(sc), done, fmtMs(sc.Ack.Summary.P50), fmtMs(sc.Ack.Summary.P99), fmtMs(sc.Ack.Summary.Max),
			fmtMs(sc.Labelled.Summary.P50), fmtMs(sc.Labelled.Summary.P99), fmtMs(sc.Labelled.Summary.Max),
			sc.APIPerGroup, methods(sc.APIRequests))
	}
	p("\nWhere the CPU went over the same windows (the machine has %d cores; – where the bench did not start the cluster):\n\n", r.Machine.CPUs)
	p("| groups | window | controller CPU | controller peak RSS | kube-apiserver | etcd | kube-controller-manager | bench (watches, listeners) |\n")
	p("|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, sc := range r.Scale {
		p("| %s | %.2f s | %.2f s | %.0f MiB | %s | %s | %s | %.2f s |\n",
			scaleName(sc), sc.WindowSeconds, sc.CPUSeconds, sc.PeakRSSMiB,
			cpuCell(sc.APIServerCPUSeconds), cpuCell(sc.EtcdCPUSeconds), cpuCell(sc.KCMCPUSeconds), sc.BenchCPUSeconds)
	}
	p("\n")
}

// scaleName names a mass failover's row: its size, and whether every
// group had an HAGroup whose status was written too.
func scaleName(sc ScaleResult) string {
	if sc.HAGroups {
		return fmt.Sprintf("%d, with HAGroups", sc.Groups)
	}
	return strconv.Itoa(sc.Groups)
}

// targets checks the targets: one group under 10 ms (p99) to the
// app's ack, 1,000 groups at once under 1 s (p99).
func (r *Results) targets() []string {
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	var out []string
	for _, t := range r.OneGroup {
		for _, st := range t.Stages {
			if st.Name == StageAck && st.Summary.N > 0 {
				out = append(out, fmt.Sprintf("one group, %s, p99 to the app having the role under 10 ms: %s, %s.",
					t.Trigger, fmtMs(st.Summary.P99), verdict(st.Summary.P99 < 10)))
			}
		}
	}
	out = append(out, r.leaseTargets(verdict)...)
	for _, sc := range r.Scale {
		if sc.Groups < 1000 {
			continue
		}
		out = append(out,
			fmt.Sprintf("%d groups at once, p99 under 1 s to the app having the role: %s, %s; to the label committed: %s, %s.",
				sc.Groups, fmtMs(sc.Ack.Summary.P99), verdict(sc.Ack.Summary.P99 < 1000 && sc.Completed == sc.Groups),
				fmtMs(sc.Labelled.Summary.P99), verdict(sc.Labelled.Summary.P99 < 1000 && sc.Completed == sc.Groups)))
	}
	return out
}

func ratio(v, ref float64) string {
	if ref <= 0 || v <= 0 {
		return "–"
	}
	switch r := v / ref; {
	case r >= 100:
		return fmt.Sprintf("%.0f×", r)
	case r >= 10:
		return fmt.Sprintf("%.1f×", r)
	default:
		return fmt.Sprintf("%.2f×", r)
	}
}

func cpuCell(s float64) string {
	if s == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f s", s)
}

func methods(m map[string]float64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %.0f", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func massText(mass string) string {
	if mass == MassNode {
		return "the actives' node turns NotReady (its Ready condition written Unknown, as the node lifecycle controller does when a kubelet stops posting status)"
	}
	return "every active pod deleted at once (one DELETE per pod, 64 in flight); each group's time starts at its own DELETE"
}

func notes(r *Results) []string {
	n := []string{
		"The controller runs in its own process: the real hapod-controller binary, with -failover-records (each promotion's timestamps as JSON lines, which the bench reads) and -pprof-bind-address on 127.0.0.1. Its CPU time and peak RSS come from /proc/<pid>/stat and /proc/<pid>/status, its API requests from rest_client_requests_total on its /metrics.",
		"Apps are pkg/role listeners in the bench process, one per pod, each bound to its own 127.x.y.z address; the controller runs with -notify-cidrs 127.0.0.0/8 and sends nowhere else. Pods are created bare (the bench is their ReplicaSet) with the hapod.io/pod-ip annotation, so every address is known, and bound, before the pod exists.",
		"One group: pod IPs are in 198.18.0.0/15 (RFC 2544 benchmark range, API data only: nothing is sent there) because the API server refuses loopback addresses in EndpointSlices; the hapod.io/role-address annotation points the controller at the listener. The EndpointSlice stage is the first watch event after which the Service's ready addresses are exactly the new active's (what kube-proxy consumes). Between failovers the bench waits for a steady state: replacement standby Running, labelled and told, EndpointSlice settled.",
		"The reference rows are a label PATCH by the bench itself, on the standby before each failover: what one API write costs here, to its response and to its event on a watch. A failover's label stage is two such writes in a row (the old active's label removed, then the new one's set, so that the Service never selects two pods), after the new active has been told.",
		"The EndpointSlice tail comes from kube-controller-manager, not hapod: when the pod changes of a failover come within a few milliseconds of each other, its EndpointSlice controller can find its informer behind its own previous write (it logs \"EndpointSlice informer cache is out of date\") and retries after a 1 s back-off.",
		"Times start when the trigger's write request is sent (so they include the API server's commit of it) and end at the event's arrival in the bench (watch events, listener state) or at the controller's own timestamps (seen, label committed, ack received); all on one machine's clock.",
		"Leader election: each app replica is a goroutine with its own client and connection (50 requests/s, above what the timings need) running client-go leaderelection on a Lease; the leader labels its own pod active. A crash is the leader's context canceled without releasing the Lease (ReleaseOnCancel false), at a random moment of its renewal cycle; several groups run in parallel to save time.",
		fmt.Sprintf("No standby: a 1-replica ReplicaSet (through the scheduler); its pod is deleted and the replacement's Ready event timed, one replacement a second (kube-controller-manager's default client limit of 20 requests/s throttles back-to-back replacements). kwok starts pods at once, so this is a floor for a real kubelet; the demo app's %s initialisation (cmd/hapod-demo's default -init-delay) is added by arithmetic, not run.", r.Settings.InitDelay),
	}
	if r.Settings.Mass == MassNode {
		n = append(n, "Node failure as localcluster.FailNode does it: kwok stops playing the node's kubelet (no more heartbeats), then the node's Ready condition is written Unknown, as the node lifecycle controller writes it when a kubelet stops posting status; the clock starts at that second write. The node lifecycle controller then reacts as it would (taints, pods marked not Ready). The actives' listeners are closed at the trigger, as their node is gone: the controller's fencing messages to them time out, as they would.")
	}
	n = append(n, "In a mass failover the labels are bound by the API server: each failover is two pod PATCHes in a row and one Event, and here kube-apiserver shares 2 cores with etcd, kube-controller-manager, kwok, the controller and the bench (see the CPU table). The controller tells every new active before its writes, and takes at most 64 switches' writes at once, so that the acks do not wait for the API server and labels are committed group by group.")
	n = append(n, "Percentiles are nearest-rank (p99 of 100 samples is the second largest). The machine runs the whole control plane, the controller and the bench: on 2 cores they compete, so absolute numbers are higher than on a real cluster, where the API server has its own machines.")
	return n
}

// cdfLine is one system in the chart.
type cdfLine struct {
	label string
	ms    []float64
	color string
	dash  string
}

func (r *Results) cdfLines() []cdfLine {
	var lines []cdfLine
	for _, t := range r.OneGroup {
		if t.Trigger != TriggerDelete {
			continue
		}
		for _, st := range t.Stages {
			switch st.Name {
			case StageAck:
				lines = append(lines, cdfLine{label: "hapod, 1 group: app has the role", ms: st.Ms, color: "#1b9e77"})
			case StageLabelled:
				lines = append(lines, cdfLine{label: "hapod, 1 group: label committed", ms: st.Ms, color: "#1b9e77", dash: "6 3"})
			case StageEndpoints:
				lines = append(lines, cdfLine{label: "hapod, 1 group: EndpointSlice", ms: st.Ms, color: "#1b9e77", dash: "2 2"})
			}
		}
	}
	if i := slices.IndexFunc(r.Scale, func(sc ScaleResult) bool { return sc.HAGroups }); i != 0 && len(r.Scale) > 0 {
		if i < 0 {
			i = len(r.Scale)
		}
		sc := r.Scale[i-1] // the largest without HAGroups
		lines = append(lines,
			cdfLine{label: fmt.Sprintf("hapod, %d groups at once: app has the role", sc.Groups), ms: sc.Ack.Ms, color: "#7570b3"},
			cdfLine{label: fmt.Sprintf("hapod, %d groups at once: label committed", sc.Groups), ms: sc.Labelled.Ms, color: "#7570b3", dash: "6 3"})
	}
	colors := []string{"#d95f02", "#e7298a", "#66a61e"}
	for i, b := range r.Baselines {
		lines = append(lines, cdfLine{label: b.System + ": " + b.Measure, ms: b.Series.Ms, color: colors[i%len(colors)]})
	}
	return append(lines, r.realNodeCDF()...)
}

// CDF writes an SVG chart of the cumulative distribution of failover
// latency per system, on a logarithmic time axis.
func (r *Results) CDF(w io.Writer) {
	lines := r.cdfLines()
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, l := range lines {
		for _, v := range l.ms {
			if v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if math.IsInf(lo, 0) {
		lo, hi = 1, 10
	}
	d0, d1 := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if d1 <= d0 {
		d1 = d0 + 1
	}
	const (
		width, left, right, top, plotH = 820.0, 60.0, 30.0, 30.0, 360.0
		legendRow                      = 18.0
	)
	plotW := width - left - right
	height := top + plotH + 50 + legendRow*float64(len(lines)) + 10
	x := func(v float64) float64 {
		v = math.Max(v, math.Pow(10, d0))
		return left + (math.Log10(v)-d0)/(d1-d0)*plotW
	}
	y := func(f float64) float64 { return top + (1-f)*plotH }

	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%.0f" y="18" font-size="14" font-weight="bold">Failover latency, cumulative distribution (log time axis)</text>`+"\n", left)
	// Grid: decades (with 2x and 5x ticks) and quartiles.
	for d := d0; d <= d1; d++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, d)
			if math.Log10(v) > d1+1e-9 {
				continue
			}
			stroke := "#eee"
			if m == 1 {
				stroke = "#ccc"
			}
			p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", x(v), y(0), x(v), y(1), stroke)
			if m == 1 {
				p(`<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x(v), y(0)+16, axisLabel(v))
			}
		}
	}
	for _, f := range []float64{0, 0.25, 0.5, 0.75, 0.9, 0.99, 1} {
		p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(f), left+plotW, y(f))
		if f == 0.99 { // too close to 1 on the left: labelled on the right
			p(`<text x="%.1f" y="%.1f" font-size="10">p99</text>`+"\n", left+plotW+2, y(f)+8)
			continue
		}
		p(`<text x="%.1f" y="%.1f" text-anchor="end">%g</text>`+"\n", left-6, y(f)+4, f)
	}
	p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#888"/>`+"\n", left, top, plotW, plotH)
	p(`<text x="%.1f" y="%.1f" text-anchor="middle">time from the trigger</text>`+"\n", left+plotW/2, y(0)+34)
	p(`<text x="14" y="%.1f" text-anchor="middle" transform="rotate(-90 14 %.1f)">fraction of failovers</text>`+"\n", top+plotH/2, top+plotH/2)

	for i, l := range lines {
		s := slices.Clone(l.ms)
		slices.Sort(s)
		dash := ""
		if l.dash != "" {
			dash = fmt.Sprintf(` stroke-dasharray="%s"`, l.dash)
		}
		if len(s) > 0 {
			var pts strings.Builder
			fmt.Fprintf(&pts, "%.1f,%.1f", x(s[0]), y(0))
			for j, v := range s {
				fmt.Fprintf(&pts, " %.1f,%.1f %.1f,%.1f", x(v), y(float64(j)/float64(len(s))), x(v), y(float64(j+1)/float64(len(s))))
			}
			p(`<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", l.color, dash, pts.String())
		}
		ly := top + plotH + 50 + legendRow*float64(i)
		p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`+"\n", left, ly-4, left+30, ly-4, l.color, dash)
		p(`<text x="%.1f" y="%.1f">%s (n=%d, p50 %s)</text>`+"\n", left+38, ly, xmlEscape(l.label), len(s), fmtMs(summarise(s).P50))
	}
	p("</svg>\n")
}

func axisLabel(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%g s", v/1000)
	case v >= 1:
		return fmt.Sprintf("%g ms", v)
	default:
		return fmt.Sprintf("%g µs", v*1000)
	}
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}
