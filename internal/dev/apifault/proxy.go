package apifault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options configures [Start]. The zero value is ready to use.
type Options struct {
	// Seed seeds the dice of Faults.WriteFailure (0 is a seed like any other).
	Seed uint64
	// Logger receives the HTTP server's own errors (TLS handshakes that failed,
	// mostly of connections a partition reset) at debug level; nil means
	// slog.Default().
	Logger *slog.Logger
}

// Proxy is a running fault-injecting proxy. Its methods are safe for concurrent use.
type Proxy struct {
	url     string
	certPEM []byte
	token   string
	srv     *http.Server
	served  chan struct{} // closed when the server has stopped serving
	serve   error         // why it stopped, valid after served is closed

	mu          sync.Mutex
	faults      Faults
	dice        *rand.Rand // see newDice
	partitioned bool
	closed      bool
	conns       map[net.Conn]struct{}  // open client connections (the raw TCP ones)
	open        map[*inflight]struct{} // requests in flight
	handlers    sync.WaitGroup         // Add only under mu while !closed
	stats       Stats
}

// Start starts a proxy on 127.0.0.1 (a free port) that forwards to the API server of
// upstream, authenticating as upstream does. It runs until Close.
func Start(upstream *rest.Config, opts Options) (*Proxy, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	target, _, err := rest.DefaultServerUrlFor(upstream)
	if err != nil {
		return nil, fmt.Errorf("apifault: upstream: %w", err)
	}
	transport, err := rest.TransportFor(upstream)
	if err != nil {
		return nil, fmt.Errorf("apifault: upstream transport: %w", err)
	}
	tlsCfg, certPEM, err := selfSigned()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("apifault: listen: %w", err)
	}
	p := &Proxy{
		url:     "https://" + ln.Addr().String(),
		certPEM: certPEM,
		token:   "apifault-" + randomHex(16),
		served:  make(chan struct{}),
		dice:    newDice(opts.Seed),
		conns:   map[net.Conn]struct{}{},
		open:    map[*inflight]struct{}{},
	}
	forward := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			// The client's token means nothing upstream: the upstream transport
			// authenticates the request, and would leave a bearer token it finds
			// in place instead of setting its own.
			pr.Out.Header.Del("Authorization")
		},
		Transport: transport,
		// Flush every write at once: a watch is a stream of events, each of
		// which must reach the client when the API server sends it.
		FlushInterval: -1,
		ErrorHandler:  p.upstreamFailed,
		// A watch cut by a partition or an API server restart ends in a
		// read error mid-body: expected, so not on the run's stderr.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	p.srv = &http.Server{
		Handler:           p.handler(forward),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(p.served)
		// ServeTLS with the certificate in TLSConfig; it sets up HTTP/2 too,
		// which client-go uses, so all of a client's requests share one
		// connection, as they do with the API server itself.
		if err := p.srv.ServeTLS(&listener{Listener: ln, p: p}, "", ""); !errors.Is(err, http.ErrServerClosed) {
			p.serve = err
		}
	}()
	return p, nil
}

// URL is the proxy's address, https://127.0.0.1:<port>.
func (p *Proxy) URL() string { return p.url }

// RESTConfig returns a client configuration for the proxy: its URL, its certificate
// as the only one trusted, and the token that WriteKubeconfig writes.
func (p *Proxy) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:            p.url,
		BearerToken:     p.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.certPEM},
	}
}

// WriteKubeconfig writes a kubeconfig for RESTConfig to path. The token in it is a
// random one that the proxy does not check and never forwards: it authenticates
// every request upstream with its own credentials (those given to Start), so
// whoever can reach the proxy acts as that user; it listens on 127.0.0.1 only. The
// token is there because a kubeconfig user with no credentials at all looks like a
// mistake to some tools.
func (p *Proxy) WriteKubeconfig(path string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["apifault"] = &clientcmdapi.Cluster{Server: p.url, CertificateAuthorityData: p.certPEM}
	cfg.AuthInfos["apifault"] = &clientcmdapi.AuthInfo{Token: p.token}
	cfg.Contexts["apifault"] = &clientcmdapi.Context{Cluster: "apifault", AuthInfo: "apifault"}
	cfg.CurrentContext = "apifault"
	return clientcmd.WriteToFile(*cfg, path)
}

// Close stops the proxy: it resets every open connection (watches included, counted
// as cut), waits for the requests in flight to end and returns. Calling it again
// does nothing. The error is the server's, if it had stopped for another reason.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.cutLocked()
	p.mu.Unlock()
	err := p.srv.Close()
	p.handlers.Wait()
	<-p.served
	return errors.Join(err, p.serve)
}

// handler checks and counts each request against the faults, then answers it with
// an injected error or forwards it.
func (p *Proxy) handler(forward http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		req := &inflight{cancel: cancel}
		d, ok := p.begin(r, req)
		if !ok {
			// Partitioned or closed since the connection came: end this
			// request's stream (HTTP/2) or connection (HTTP/1.1) without
			// an answer, as an unreachable server would.
			panic(http.ErrAbortHandler)
		}
		defer p.end(req)
		if d.delay > 0 {
			t := time.NewTimer(d.delay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done(): // cut, or the client gave up
				return
			}
		}
		if d.failure != nil {
			p.count(func(s *Stats) { s.Failed++ })
			writeStatus(w, d.failure)
			return
		}
		p.count(func(s *Stats) { s.Passed++ })
		forward.ServeHTTP(w, r.WithContext(ctx))
	})
}

// inflight is a request being served; cancel ends it.
type inflight struct{ cancel context.CancelFunc }

// begin registers a request in flight, so that a partition can cut it, and rolls
// its dice; ok is false if the proxy is partitioned or closed.
func (p *Proxy) begin(r *http.Request, req *inflight) (d decision, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.partitioned {
		p.stats.Refused++
		return decision{}, false
	}
	p.handlers.Add(1)
	p.open[req] = struct{}{}
	d = p.decideLocked(r.Method)
	if d.delay > 0 {
		p.stats.Delayed++
	}
	return d, true
}

func (p *Proxy) end(req *inflight) {
	p.mu.Lock()
	delete(p.open, req)
	p.mu.Unlock()
	p.handlers.Done()
}

// upstreamFailed answers a forwarded request that the upstream did not answer: 503,
// as a load balancer in front of a stopped API server does. A request that was cut
// or whose client left gets nothing (no one reads it).
func (p *Proxy) upstreamFailed(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	p.count(func(s *Stats) { s.UpstreamErrors++ })
	writeStatus(w, serviceUnavailable(err))
}

func (p *Proxy) count(f func(*Stats)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(&p.stats)
}

// cutLocked resets every open connection and cancels every request in flight.
// Connections go first, so that a watch ends with an error, not with what looks
// to the client like the API server closing it cleanly.
func (p *Proxy) cutLocked() {
	for c := range p.conns {
		reset(c)
	}
	clear(p.conns)
	for req := range p.open {
		req.cancel()
		p.stats.Cut++
	}
	clear(p.open)
}

// listener tracks the accepted connections, so that a partition can reset them,
// and resets new ones at once while partitioned.
type listener struct {
	net.Listener
	p *Proxy
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.p.admit(c) {
			return &conn{Conn: c, p: l.p}, nil
		}
	}
}

func (p *Proxy) admit(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.partitioned {
		reset(c)
		p.stats.Refused++
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

type conn struct {
	net.Conn
	p *Proxy
}

func (c *conn) Close() error {
	c.p.mu.Lock()
	delete(c.p.conns, c.Conn)
	c.p.mu.Unlock()
	return c.Conn.Close()
}

// reset closes c with a TCP RST (no linger), so the client sees "connection reset
// by peer" at once, as from a server that is gone, not an orderly end of stream.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
