package apifault

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/hapod/hapod/internal/dev/clustertest"
	"github.com/hapod/hapod/internal/dev/poll"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

// fakeUpstream stands in for the API server: it records the requests that reach
// it and streams lines on /watch, one per send on lines, until the request ends.
type fakeUpstream struct {
	*httptest.Server
	lines chan string

	mu          sync.Mutex
	seen        []string // "METHOD /path?query auth"
	openWatches int
}

func newFakeUpstream(t *testing.T) *fakeUpstream {
	u := &fakeUpstream{lines: make(chan string)}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Authorization"))
		u.mu.Unlock()
		if r.URL.Path != "/watch" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"ok":true}`)
			return
		}
		u.mu.Lock()
		u.openWatches++
		u.mu.Unlock()
		defer func() {
			u.mu.Lock()
			u.openWatches--
			u.mu.Unlock()
		}()
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for {
			select {
			case line := <-u.lines:
				_, _ = io.WriteString(w, line+"\n")
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			}
		}
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *fakeUpstream) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.seen...)
}

func (u *fakeUpstream) watches() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.openWatches
}

// upstreamToken is what the fake upstream's credentials are; the proxy must send it
// instead of the client's.
const upstreamToken = "Bearer upstream-secret"

// startProxy starts a proxy in front of u and returns it with an HTTP client
// configured from the kubeconfig it writes, as a controller process would be.
func startProxy(t *testing.T, u *fakeUpstream, opts Options) (*Proxy, *http.Client) {
	t.Helper()
	p, err := Start(&rest.Config{Host: u.URL, BearerToken: strings.TrimPrefix(upstreamToken, "Bearer ")}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := p.WriteKubeconfig(path); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p, hc
}

// do sends a request with a small body and reads the whole answer.
func do(ctx context.Context, hc *http.Client, method, url string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader("{}"))
	if err != nil {
		return nil, nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// mustDo sends a request that must get an answer.
func mustDo(t *testing.T, hc *http.Client, method, url string) (*http.Response, []byte) {
	t.Helper()
	resp, body, err := do(t.Context(), hc, method, url)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp, body
}

// The proxy forwards path, query and method, over the TLS and token of its
// kubeconfig, and authenticates upstream with the upstream's credentials only.
func TestForwardsWithUpstreamCredentials(t *testing.T) {
	u := newFakeUpstream(t)
	p, hc := startProxy(t, u, Options{})
	resp, body := mustDo(t, hc, http.MethodPatch, p.URL()+"/api/v1/namespaces/a/configmaps/b?fieldManager=x")
	if resp.StatusCode != http.StatusOK || string(body) != `{"ok":true}` {
		t.Fatalf("answer %s %q, want 200 and the upstream's body", resp.Status, body)
	}
	want := "PATCH /api/v1/namespaces/a/configmaps/b?fieldManager=x " + upstreamToken
	if got := u.requests(); len(got) != 1 || got[0] != want {
		t.Errorf("upstream saw %q, want [%q]", got, want)
	}
	if got := p.Stats(); got != (Stats{Passed: 1}) {
		t.Errorf("stats %+v, want one passed", got)
	}
}

func TestFailWrites(t *testing.T) {
	tests := []struct {
		name           string
		faults         Faults
		method         string
		wantCode       int    // 200: forwarded
		wantReason     string // of the Status
		wantRetryAfter string
	}{
		// The default kind: what etcd trouble looks like.
		{name: "internal error", faults: Faults{WriteFailure: 1}, method: http.MethodPatch,
			wantCode: 500, wantReason: string(metav1.StatusReasonInternalError)},
		// Load shedding, with the header that makes client-go wait and retry.
		{name: "too many requests", faults: Faults{WriteFailure: 1, Failure: TooManyRequests}, method: http.MethodPost,
			wantCode: 429, wantReason: string(metav1.StatusReasonTooManyRequests), wantRetryAfter: "1"},
		// Every write method is a write.
		{name: "put", faults: Faults{WriteFailure: 1}, method: http.MethodPut, wantCode: 500, wantReason: "InternalError"},
		{name: "delete", faults: Faults{WriteFailure: 1}, method: http.MethodDelete, wantCode: 500, wantReason: "InternalError"},
		// Reads are never failed.
		{name: "get passes", faults: Faults{WriteFailure: 1}, method: http.MethodGet, wantCode: 200},
		// No probability, no failure.
		{name: "zero probability", faults: Faults{Failure: TooManyRequests}, method: http.MethodPost, wantCode: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newFakeUpstream(t)
			p, hc := startProxy(t, u, Options{})
			p.SetFaults(tt.faults)
			resp, body := mustDo(t, hc, tt.method, p.URL()+"/api/v1/namespaces/a/pods/b")
			if resp.StatusCode != tt.wantCode {
				t.Fatalf("status %s, want %d", resp.Status, tt.wantCode)
			}
			if got := resp.Header.Get("Retry-After"); got != tt.wantRetryAfter {
				t.Errorf("Retry-After %q, want %q", got, tt.wantRetryAfter)
			}
			if tt.wantCode == http.StatusOK {
				if len(u.requests()) != 1 || p.Stats() != (Stats{Passed: 1}) {
					t.Errorf("upstream saw %q, stats %+v; want it forwarded", u.requests(), p.Stats())
				}
				return
			}
			var st metav1.Status
			if err := json.Unmarshal(body, &st); err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			if st.Kind != "Status" || string(st.Reason) != tt.wantReason || int(st.Code) != tt.wantCode ||
				!strings.Contains(st.Message, injectedMessage) {
				t.Errorf("Status %+v, want reason %s, code %d, a message with %q", st, tt.wantReason, tt.wantCode, injectedMessage)
			}
			if len(u.requests()) != 0 {
				t.Errorf("a failed write reached the upstream: %q", u.requests())
			}
			if got := p.Stats(); got != (Stats{Failed: 1}) {
				t.Errorf("stats %+v, want one failed", got)
			}
		})
	}
}

// The same seed fails the same writes with the same errors; another seed does not.
func TestSeedReplays(t *testing.T) {
	u := newFakeUpstream(t)
	run := func(seed uint64) string {
		p, hc := startProxy(t, u, Options{Seed: seed})
		p.SetFaults(Faults{WriteFailure: 0.5, Failure: Mixed})
		var codes strings.Builder
		for range 200 {
			resp, _ := mustDo(t, hc, http.MethodPost, p.URL()+"/api/v1/namespaces/a/configmaps")
			codes.WriteString(resp.Status[:3] + " ")
		}
		return codes.String()
	}
	first, again, other := run(7), run(7), run(8)
	if first != again {
		t.Errorf("seed 7 twice gave\n%s\nand\n%s", first, again)
	}
	if first == other {
		t.Error("seeds 7 and 8 gave the same failures")
	}
	for _, code := range []string{"200", "500", "429"} {
		if !strings.Contains(first, code) {
			t.Errorf("200 writes at 0.5 Mixed never answered %s: %s", code, first)
		}
	}
}

// A delayed write is held back (not forwarded) while its delay lasts; reads are
// not delayed unless DelayAll.
func TestDelay(t *testing.T) {
	u := newFakeUpstream(t)
	p, hc := startProxy(t, u, Options{})
	p.SetFaults(Faults{Delay: time.Hour})
	errc := make(chan error, 1)
	go func() {
		_, _, err := do(t.Context(), hc, http.MethodPost, p.URL()+"/held")
		errc <- err
	}()
	if err := poll.Until(t.Context(), 30*time.Second, func() (bool, error) { return p.Stats().Delayed == 1, nil }); err != nil {
		t.Fatalf("the write was not delayed: %v (stats %+v)", err, p.Stats())
	}
	if resp, _ := mustDo(t, hc, http.MethodGet, p.URL()+"/read"); resp.StatusCode != http.StatusOK {
		t.Fatalf("a read while a write is delayed: %s", resp.Status)
	}
	// The partition cuts the held write; it never reaches the upstream.
	p.Partition(true)
	if err := <-errc; err == nil {
		t.Error("the held write got an answer after the partition")
	}
	if got := u.requests(); len(got) != 1 || !strings.HasPrefix(got[0], "GET /read") {
		t.Errorf("upstream saw %q, want only the read", got)
	}
	if got := p.Stats(); got.Cut != 1 || got.Delayed != 1 || got.Passed != 1 {
		t.Errorf("stats %+v, want one delayed and cut, one passed", got)
	}

	// DelayAll: a read waits too, and then passes. Only a lower bound on the
	// time, which load cannot break.
	p.Reset()
	const d = 50 * time.Millisecond
	p.SetFaults(Faults{Delay: d, DelayAll: true})
	began := time.Now()
	if resp, _ := mustDo(t, hc, http.MethodGet, p.URL()+"/read"); resp.StatusCode != http.StatusOK {
		t.Fatalf("a delayed read: %s", resp.Status)
	}
	if took := time.Since(began); took < d {
		t.Errorf("a read delayed by %s took %s", d, took)
	}
	if got := p.Stats().Delayed; got != 2 {
		t.Errorf("%d delayed, want 2", got)
	}
}

// openWatch starts a streaming GET of /watch and returns its lines as they come,
// and the error that ended it (io.EOF for a clean end).
func openWatch(t *testing.T, hc *http.Client, url string) (<-chan string, <-chan error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url+"/watch", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("watch: %s", resp.Status)
	}
	lines, ended := make(chan string), make(chan error, 1)
	go func() {
		defer func() { _ = resp.Body.Close() }()
		r := bufio.NewReader(resp.Body)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				ended <- err
				return
			}
			select {
			case lines <- strings.TrimSuffix(line, "\n"):
			case <-t.Context().Done():
				return
			}
		}
	}()
	return lines, ended
}

// receive waits for the next line of a watch.
func receive(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	select {
	case got := <-lines:
		if got != want {
			t.Fatalf("watch line %q, want %q", got, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("watch line %q did not come", want)
	}
}

// ended waits for a watch to end and returns why.
func ended(t *testing.T, errc <-chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("the watch was not cut")
		return nil
	}
}

// A watch streams through the proxy line by line; a partition cuts it with an
// error (not a clean end) and ends the upstream request, turns every request away
// until it is lifted, and then everything works again.
func TestPartition(t *testing.T) {
	u := newFakeUpstream(t)
	p, hc := startProxy(t, u, Options{})
	lines, errc := openWatch(t, hc, p.URL())
	for _, l := range []string{"one", "two"} {
		u.lines <- l // the upstream's handler has written it when the send returns
		receive(t, lines, l)
	}

	p.Partition(true)
	if err := ended(t, errc); errors.Is(err, io.EOF) {
		t.Errorf("the watch ended cleanly (%v), want an error", err)
	} else {
		t.Logf("the cut watch ended with: %v", err)
	}
	if err := poll.Until(t.Context(), 30*time.Second, func() (bool, error) { return u.watches() == 0, nil }); err != nil {
		t.Errorf("the upstream's watch request did not end: %v", err)
	}
	if _, _, err := do(t.Context(), hc, http.MethodGet, p.URL()+"/read"); err == nil {
		t.Error("a request got an answer during the partition")
	} else {
		t.Logf("a request during the partition: %v", err)
	}
	if got := p.Stats(); got.Cut != 1 || got.Refused == 0 {
		t.Errorf("stats %+v, want one cut and some refused", got)
	}

	p.Partition(false)
	if resp, _ := mustDo(t, hc, http.MethodGet, p.URL()+"/read"); resp.StatusCode != http.StatusOK {
		t.Fatalf("after the partition: %s", resp.Status)
	}
	lines, _ = openWatch(t, hc, p.URL())
	u.lines <- "three"
	receive(t, lines, "three")
}

// Close cuts open watches, refuses what comes later, and may be called again.
func TestClose(t *testing.T) {
	u := newFakeUpstream(t)
	p, hc := startProxy(t, u, Options{})
	_, errc := openWatch(t, hc, p.URL())
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ended(t, errc); errors.Is(err, io.EOF) {
		t.Errorf("the watch ended cleanly (%v), want an error", err)
	}
	if _, _, err := do(t.Context(), hc, http.MethodGet, p.URL()+"/read"); err == nil {
		t.Error("a request got an answer after Close")
	}
	if got := p.Stats().Cut; got != 1 {
		t.Errorf("%d cut, want the watch", got)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// With the upstream gone, the proxy answers 503 ServiceUnavailable, which client-go
// reports as such.
func TestUpstreamDown(t *testing.T) {
	u := newFakeUpstream(t)
	p, hc := startProxy(t, u, Options{})
	u.Close()
	resp, body := mustDo(t, hc, http.MethodGet, p.URL()+"/read")
	var st metav1.Status
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("body %q: %v", body, err)
	}
	if err := apierrors.FromObject(&st); resp.StatusCode != http.StatusServiceUnavailable || !apierrors.IsServiceUnavailable(err) {
		t.Errorf("answer %s %+v, want 503 ServiceUnavailable", resp.Status, st)
	}
	if got := p.Stats(); got.UpstreamErrors != 1 {
		t.Errorf("stats %+v, want one upstream error", got)
	}
}

// Faults change while requests flow, from several goroutines (run with -race);
// afterwards Reset makes the proxy healthy and Close ends every request.
func TestConcurrentFaults(t *testing.T) {
	u := newFakeUpstream(t)
	p, hc := startProxy(t, u, Options{Seed: 1})
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			method := []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete}[i]
			for ctx.Err() == nil {
				_, _, _ = do(ctx, hc, method, p.URL()+"/x") // any outcome: the faults change under it
			}
		})
	}
	faults := []Faults{
		{WriteFailure: 0.5, Failure: Mixed},
		{Delay: time.Millisecond, DelayAll: true},
		{WriteFailure: 1, Failure: TooManyRequests, Delay: time.Millisecond},
	}
	for i := range 60 {
		switch i % 4 {
		case 3:
			p.Partition(i%8 == 3)
		default:
			p.SetFaults(faults[i%4])
		}
		// Let some requests meet each setting; a pacing, not a wait for an event.
		if err := poll.Pause(t.Context(), 2*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	p.Reset()
	if resp, _ := mustDo(t, hc, http.MethodPost, p.URL()+"/x"); resp.StatusCode != http.StatusOK {
		t.Errorf("after Reset: %s", resp.Status)
	}
	t.Logf("stats %+v", p.Stats())
}
