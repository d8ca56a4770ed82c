package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// apiRequests returns rest_client_requests_total from the controller's
// /metrics, summed over codes and hosts, by method.
func apiRequests(ctx context.Context, metricsURL string) (map[string]float64, error) {
	return scrapeCounter(ctx, metricsURL, "rest_client_requests_total", "method")
}

// scrapeCounter returns the samples of one metric from a /metrics page,
// summed by the value of one label ("" for samples without it).
func scrapeCounter(ctx context.Context, metricsURL, name, label string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", metricsURL, resp.Status)
	}
	return parseCounter(resp.Body, name, label)
}

// parseCounter reads the Prometheus text format, keeping the samples of
// name, summed by the value of label.
func parseCounter(r io.Reader, name, label string) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		labels, value := "", rest
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			labels, value = rest[1:end], rest[end+1:]
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		key := ""
		for _, kv := range strings.Split(labels, ",") {
			if k, val, ok := strings.Cut(kv, "="); ok && k == label {
				key = strings.Trim(val, `"`)
			}
		}
		out[key] += v
	}
	return out, sc.Err()
}

// cpuProfile fetches a CPU profile of the given length from the controller's
// pprof into path. sent is closed once the request has been written, so that
// the caller can start what is to be profiled only then.
func cpuProfile(ctx context.Context, pprofURL string, seconds int, path string, sent chan<- struct{}) error {
	url := fmt.Sprintf("%s/profile?seconds=%d", pprofURL, seconds)
	var once sync.Once
	signal := func() { once.Do(func() { close(sent) }) }
	defer signal() // also when the request failed before it was written
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { signal() }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: time.Duration(seconds+30) * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
