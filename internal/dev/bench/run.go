package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hapod/hapod/internal/dev/ctrlproc"
)

// Options says what to measure and how the controller runs.
type Options struct {
	// Mode names the option set in the report ("full", "short").
	Mode string
	// Failovers per trigger in the one-group scenario.
	Failovers int
	// Election runs of the leader-election baselines; Groups 0 skips one.
	ElectionDefault, ElectionAggressive ElectionRun
	// NoStandby is how many single-replica replacements to time.
	NoStandby int
	// InitDelay is the app's initialisation time, added to each
	// no-standby sample: cmd/hapod-demo's default -init-delay.
	InitDelay time.Duration
	// Groups are the sizes of the mass failovers.
	Groups []int
	// Mass is the mass failover's trigger: MassNode or MassDelete.
	Mass string
	// HAGroupScale are the sizes whose mass failover is run once more
	// with an HAGroup per group, so that the controller also writes each
	// group's status: the requests per failover with and without.
	HAGroupScale []int
	// Controller settings (cmd/hapod-controller flags of the same names).
	Workers int
	QPS     float64
	Burst   int
	// ProfileDir, if set, receives a CPU profile of the controller over
	// ProfileSeconds from the start of the mass failover of ProfileGroups
	// groups.
	ProfileDir     string
	ProfileGroups  int
	ProfileSeconds int
	// LeaseKills is how many times per detection path the active app is
	// killed with SIGKILL (scenario "lease").
	LeaseKills int
	// RenewalGroups leases are kept alive for RenewalSteady to measure what
	// renewing them costs (scenario "renewals").
	RenewalGroups int
	RenewalSteady time.Duration
	// Soak, if not 0, holds SoakGroups healthy groups that long with every
	// core kept busy, counting false failovers (scenario "soak"; make soak).
	Soak       time.Duration
	SoakGroups int
	// RealNodeSamples is how many failovers (or restarts) each row of the
	// real-node scenario takes; it runs only on a cluster with real nodes
	// (Env.RealNodes).
	RealNodeSamples int
	// RealNodeRows, if not empty, limits the real-node scenario to these
	// rows (RealKill, ..., RealLEAggressive).
	RealNodeRows []string
	// Scenarios, if not empty, limits the run to these of "one",
	// "election", "nostandby", "lease", "renewals", "scale", "soak" and
	// "realnode".
	Scenarios []string
}

func (o Options) runs(scenario string) bool {
	return len(o.Scenarios) == 0 || slices.Contains(o.Scenarios, scenario)
}

// DemoInitDelay is cmd/hapod-demo's default -init-delay.
const DemoInitDelay = 3 * time.Second

// Full is what make bench runs.
func Full() Options {
	return Options{
		Mode:               "full",
		Failovers:          100,
		ElectionDefault:    ElectionRun{Groups: 5, Rounds: 2},
		ElectionAggressive: ElectionRun{Groups: 10, Rounds: 5},
		NoStandby:          20,
		InitDelay:          DemoInitDelay,
		Groups:             []int{1, 100, 1000},
		HAGroupScale:       []int{1000},
		Mass:               MassNode,
		Workers:            1000,
		QPS:                2000,
		Burst:              4000,
		ProfileGroups:      1000,
		ProfileSeconds:     5,
		LeaseKills:         50,
		RenewalGroups:      1000,
		RenewalSteady:      10 * time.Second,
		SoakGroups:         1000,
		RealNodeSamples:    50,
	}
}

// Short is the CI smoke run: under two minutes, numbers only indicative.
func Short() Options {
	o := Full()
	o.Mode = "short"
	o.Failovers = 20
	o.ElectionDefault = ElectionRun{Groups: 3, Rounds: 1}
	o.ElectionAggressive = ElectionRun{Groups: 5, Rounds: 2}
	o.NoStandby = 5
	o.Groups = []int{1, 100}
	o.HAGroupScale = []int{100}
	o.ProfileGroups = 100
	o.LeaseKills = 10
	o.RenewalGroups = 200
	o.RenewalSteady = 5 * time.Second
	o.RealNodeSamples = 5
	return o
}

// startController runs hapod-controller for one scenario: it manages the
// bench's pods in ns (selector benchLabel=true, grouped by "app"), tells
// them their role on port, and logs to <WorkDir>/<name>.log.
func (o Options) startController(ctx context.Context, e *Env, ns string, port int, name string) (*ctrlproc.Controller, error) {
	return ctrlproc.Start(ctx, ctrlproc.Options{
		Bin: e.ControllerBin, Kubeconfig: e.Kubeconfig, Namespaces: ns,
		LogPath: filepath.Join(e.WorkDir, name+".log"),
		Args: []string{
			"-selector", benchLabel + "=true",
			"-group-label", "app",
			"-role-port", strconv.Itoa(port),
			"-workers", strconv.Itoa(o.Workers),
			"-kube-api-qps", strconv.FormatFloat(o.QPS, 'f', -1, 64),
			"-kube-api-burst", strconv.Itoa(o.Burst),
		},
	})
}

// Results is everything one run measured.
type Results struct {
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Mode     string    `json:"mode"`
	Commit   string    `json:"commit,omitempty"`
	Machine  Machine   `json:"machine"`
	Cluster  string    `json:"cluster"`
	Settings Settings  `json:"settings"`

	OneGroup  []TriggerResult `json:"oneGroup"`
	Baselines []Baseline      `json:"baselines"`
	Lease     *LeaseResult    `json:"lease,omitempty"`
	Renewals  *RenewalResult  `json:"renewals,omitempty"`
	Scale     []ScaleResult   `json:"scale"`
	Soak      *SoakResult     `json:"soak,omitempty"`
	// RealNode is the scenario on real nodes, end to end.
	RealNode *RealNodeResult `json:"realNode,omitempty"`
	// Unasked are failovers the bench did not cause, by scenario: an
	// active's role lease lapsed while it was healthy (a starved machine).
	// Their groups are left out of the samples.
	Unasked map[string]int `json:"unaskedFailovers,omitempty"`
	// Errors are scenarios that failed; the others still count.
	Errors []string `json:"errors,omitempty"`
}

// Settings are the controller's and the scenarios' settings.
type Settings struct {
	Workers     int     `json:"workers"`
	QPS         float64 `json:"kubeApiQps"`
	Burst       int     `json:"kubeApiBurst"`
	NotifyCIDRs string  `json:"notifyCidrs"`
	Mass        string  `json:"massTrigger"`
	InitDelay   string  `json:"initDelay"`
}

// Machine is where the run happened.
type Machine struct {
	CPUs        int    `json:"cpus"`
	CPUModel    string `json:"cpuModel"`
	MemoryGiB   int    `json:"memoryGiB"`
	Kernel      string `json:"kernel"`
	Go          string `json:"go"`
	LoadBefore  string `json:"loadBefore"`
	LoadAfter   string `json:"loadAfter"`
	Concurrency string `json:"note,omitempty"`
}

// Baseline is one alternative to hapod.
type Baseline struct {
	System  string `json:"system"`
	Measure string `json:"measure"`
	Series  Series `json:"series"`
	// Acquired, for leader election: crash to the Lease held.
	Acquired *Series `json:"acquired,omitempty"`
	// Ratio is this median over hapod's (pod deleted, label committed).
	Ratio float64 `json:"ratioToHapod"`
}

// Run runs every scenario of o on e. A scenario that fails is reported in
// Results.Errors and the others still run; the error is non-nil if any
// failed.
func Run(ctx context.Context, e *Env, o Options) (*Results, error) {
	if err := e.init(); err != nil {
		return nil, err
	}
	if e.WorkDir == "" {
		e.WorkDir = os.TempDir()
	}
	r := &Results{
		Started: time.Now().UTC(), Mode: o.Mode, Machine: machine(),
		Settings: Settings{
			Workers: o.Workers, QPS: o.QPS, Burst: o.Burst, NotifyCIDRs: "127.0.0.0/8",
			Mass: o.Mass, InitDelay: o.InitDelay.String(),
		},
	}
	fail := func(what string, err error) {
		e.Log.Error("scenario failed", "scenario", what, "err", err)
		r.Errors = append(r.Errors, what+": "+err.Error())
	}

	if o.runs("one") {
		e.Log.Info("hapod, one group", "failovers per trigger", o.Failovers)
		one, unasked, err := e.oneGroup(ctx, o)
		r.unasked("one group", unasked)
		if err != nil {
			fail("one group", err)
		} else {
			r.OneGroup = one
		}
	}
	if o.runs("election") {
		e.runElections(ctx, o, r, fail)
	}
	if o.NoStandby > 0 && o.runs("nostandby") {
		e.runNoStandby(ctx, o, r, fail)
	}
	if ref := r.labelMedian(); ref > 0 {
		for i := range r.Baselines {
			r.Baselines[i].Ratio = r.Baselines[i].Series.Summary.P50 / ref
		}
	}
	if o.LeaseKills > 0 && o.runs("lease") {
		e.Log.Info("kill -9 of the active app: role lease against the API", "kills per path", o.LeaseKills)
		res, unasked, err := e.leaseKills(ctx, o)
		r.unasked("kill -9", unasked)
		if err != nil {
			fail("kill -9", err)
		} else {
			r.Lease = res
		}
	}
	if o.RenewalGroups > 0 && o.runs("renewals") {
		e.Log.Info("role lease renewals", "groups", o.RenewalGroups, "steady", o.RenewalSteady.String())
		if res, err := e.renewals(ctx, o); err != nil {
			fail("renewals", err)
		} else {
			r.Renewals = res
		}
	}
	type scaleRun struct {
		n        int
		haGroups bool
	}
	var runs []scaleRun
	for _, n := range o.Groups {
		runs = append(runs, scaleRun{n, false})
	}
	for _, n := range o.HAGroupScale {
		runs = append(runs, scaleRun{n, true})
	}
	for _, sr := range runs {
		if !o.runs("scale") {
			break
		}
		n := sr.n
		e.Log.Info("scale: mass failover", "groups", n, "trigger", o.Mass, "haGroups", sr.haGroups)
		res, err := e.scale(ctx, o, n, sr.haGroups)
		if err != nil {
			fail(fmt.Sprintf("scale %d groups (HAGroups %v)", n, sr.haGroups), err)
		}
		if res != nil {
			r.Scale = append(r.Scale, *res)
			r.unasked(fmt.Sprintf("scale %d groups (before the trigger)", n), res.FalseBefore)
		}
	}
	if o.Soak > 0 && o.runs("soak") {
		e.Log.Info("soak: healthy groups, every core busy", "groups", o.SoakGroups, "for", o.Soak.String())
		if res, err := e.soak(ctx, o); err != nil {
			fail("soak", err)
		} else {
			r.Soak = res
			if n := res.FalseFailovers(); n > 0 {
				fail("soak", fmt.Errorf("%d false failovers (leases lapsed, promotions) among healthy groups", n))
			}
		}
	}
	if e.RealNodes && o.RealNodeSamples > 0 && o.runs("realnode") {
		e.runRealNodes(ctx, o, r, fail)
	}
	r.Machine.LoadAfter = loadavg()
	r.Seconds = time.Since(r.Started).Seconds()
	if len(r.Errors) > 0 {
		return r, fmt.Errorf("%d scenario(s) failed: %s", len(r.Errors), strings.Join(r.Errors, "; "))
	}
	return r, nil
}

// unasked records n failovers the bench did not cause in a scenario.
func (r *Results) unasked(scenario string, n int) {
	if n == 0 {
		return
	}
	if r.Unasked == nil {
		r.Unasked = map[string]int{}
	}
	r.Unasked[scenario] += n
}

// runElections measures both leader-election baselines into r.
func (e *Env) runElections(ctx context.Context, o Options, r *Results, fail func(string, error)) {
	for _, b := range []struct {
		t   Timings
		run ElectionRun
	}{{DefaultTimings, o.ElectionDefault}, {AggressiveTimings, o.ElectionAggressive}} {
		if b.run.Groups == 0 || b.run.Rounds == 0 {
			continue
		}
		e.Log.Info("baseline: leader election", "timings", b.t.String(), "groups", b.run.Groups, "rounds", b.run.Rounds)
		acq, lab, err := e.leaderElection(ctx, b.t, b.run)
		if err != nil {
			fail("leader election "+b.t.String(), err)
		}
		if len(lab) > 0 {
			a := newSeries("lease held", durationsMs(acq))
			r.Baselines = append(r.Baselines, Baseline{
				System:   "client-go leaderelection " + b.t.String(),
				Measure:  "leader crashed → new leader's pod labelled active",
				Series:   newSeries("labelled", durationsMs(lab)),
				Acquired: &a,
			})
		}
	}
}

// runNoStandby measures the no-standby baseline into r.
func (e *Env) runNoStandby(ctx context.Context, o Options, r *Results, fail func(string, error)) {
	e.Log.Info("baseline: no standby", "replacements", o.NoStandby)
	ds, err := e.noStandby(ctx, o.NoStandby)
	if err != nil {
		fail("no standby", err)
	}
	if len(ds) == 0 {
		return
	}
	with := make([]time.Duration, len(ds))
	for i, d := range ds {
		with[i] = d + o.InitDelay
	}
	kwokOnly := newSeries("replacement Ready (kwok)", durationsMs(ds))
	r.Baselines = append(r.Baselines, Baseline{
		System:   "no standby (1-replica ReplicaSet)",
		Measure:  fmt.Sprintf("pod deleted → replacement Ready, + %v app init", o.InitDelay),
		Series:   newSeries("ready + init", durationsMs(with)),
		Acquired: &kwokOnly,
	})
}

// labelMedian is the one-group median of the label stage for the
// pod-deleted trigger: the reference of the ratios.
func (r *Results) labelMedian() float64 {
	const stage = StageLabelled
	for _, t := range r.OneGroup {
		if t.Trigger != TriggerDelete {
			continue
		}
		for _, s := range t.Stages {
			if s.Name == stage {
				return s.Summary.P50
			}
		}
	}
	return 0
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), LoadBefore: loadavg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && k == "MemTotal" {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				m.MemoryGiB = int(kb/(1<<20) + 0.5)
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// load1 is the 1-minute load average.
func load1() (float64, bool) {
	f := strings.Fields(loadavg())
	if len(f) == 0 {
		return 0, false
	}
	v, err := strconv.ParseFloat(f[0], 64)
	return v, err == nil
}

// loadavg is the 1, 5 and 15 minute load averages.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
