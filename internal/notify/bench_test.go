package notify

import (
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hapod/hapod/internal/rolekey"
	"github.com/hapod/hapod/internal/wire"
	"github.com/hapod/hapod/pkg/role"
)

// reportPercentiles reports p50 and p99 of d under the given unit prefix.
func reportPercentiles(b *testing.B, prefix string, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	at := func(q float64) float64 { return float64(d[int(q*float64(len(d)-1))].Nanoseconds()) }
	b.ReportMetric(at(0.50), prefix+"p50-ns")
	b.ReportMetric(at(0.99), prefix+"p99-ns")
}

// BenchmarkSendAck measures one Send to a real pkg/role listener on
// loopback, each an accepted promotion (new epoch), and in the same run a raw
// UDP echo of a datagram of the same size, so the protocol's own cost is the
// difference between the two. ns/op covers the Sends only. The
// authenticated run signs and verifies every datagram on both sides.
func BenchmarkSendAck(b *testing.B) {
	b.Run("unauthenticated", func(b *testing.B) { benchSendAck(b, nil, "") })
	b.Run("authenticated", func(b *testing.B) {
		benchSendAck(b, keySource(b, map[string][]byte{"k1": master}), podKeyDir(b))
	})
}

func benchSendAck(b *testing.B, keys *rolekey.Source, podKeys string) {
	n, err := New(Config{ListenAddr: "127.0.0.1:0", Keys: keys})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	l, err := role.Listen(b.Context(), role.Config{Addr: "127.0.0.1:0", PodUID: "uid-0", KeyDir: podKeys})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() { // an application that reads its changes
		for range l.Changes() {
		}
	}()
	tgt := target(l.Addr().(*net.UDPAddr).AddrPort(), wire.RoleActive, 0)

	lat := make([]time.Duration, 0, b.N)
	retries := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		tgt.Epoch = uint64(i + 1)
		start := time.Now()
		r := n.Send(b.Context(), tgt)
		lat = append(lat, time.Since(start))
		if !r.Acked {
			b.Fatalf("send %d: %+v", i, r)
		}
		// An active role is a lease grant: two round trips, of which
		// only a lost datagram's resend is a retry.
		retries += r.Attempts - 2
	}
	b.StopTimer()
	reportPercentiles(b, "send-", lat)
	b.ReportMetric(float64(retries)/float64(b.N), "retries/op")

	payload, err := wire.Encode(wire.Message{Type: wire.TypeRole, Group: tgt.Group, Pod: tgt.Pod,
		UID: tgt.UID, Role: tgt.Role, Epoch: uint64(b.N), Seq: uint64(b.N), TTLMillis: 150, Echo: 1 << 62})
	if err != nil {
		b.Fatal(err)
	}
	reportPercentiles(b, "echo-", echoRoundTrips(b, payload, b.N))
}

// echoRoundTrips times count round trips of payload through a plain UDP echo
// on loopback: the floor any request/response over UDP pays here.
func echoRoundTrips(b *testing.B, payload []byte, count int) []time.Duration {
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, wire.MaxSize+1)
		for {
			sz, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteToUDPAddrPort(buf[:sz], from)
		}
	}()
	cli, err := net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	buf := make([]byte, wire.MaxSize+1)
	rtt := make([]time.Duration, 0, count)
	for range count {
		start := time.Now()
		if _, err := cli.Write(payload); err != nil {
			b.Fatal(err)
		}
		if _, err := cli.Read(buf); err != nil {
			b.Fatal(err)
		}
		rtt = append(rtt, time.Since(start))
	}
	return rtt
}

// BenchmarkMassFailover tells 1000 pods, each with its own listener, their
// new role at once, each Send from its own goroutine as a controller would in
// a zone outage. On this machine the listeners share the controller's CPUs,
// so the numbers are an upper bound. The sub-benchmarks show the trade of
// InitialBackoff: shorter repairs a lost datagram sooner but resends more
// while a burst is still queued.
func BenchmarkMassFailover(b *testing.B) {
	for _, backoff := range []time.Duration{DefaultInitialBackoff, 20 * time.Millisecond} {
		b.Run("backoff="+backoff.String(), func(b *testing.B) { benchMassFailover(b, backoff) })
	}
}

func benchMassFailover(b *testing.B, backoff time.Duration) {
	const pods = 1000
	n, err := New(Config{ListenAddr: "127.0.0.1:0", InitialBackoff: backoff})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	tgts := make([]Target, pods)
	for i := range tgts {
		l, err := role.Listen(b.Context(), role.Config{Addr: "127.0.0.1:0"})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		tgts[i] = target(l.Addr().(*net.UDPAddr).AddrPort(), wire.RoleActive, 0)
	}
	var slowest []time.Duration
	retries := 0
	b.ResetTimer()
	for i := range b.N {
		var wg sync.WaitGroup
		results := make([]Result, pods)
		for p := range pods {
			wg.Go(func() {
				t := tgts[p]
				t.Epoch = uint64(i + 1)
				results[p] = n.Send(b.Context(), t)
			})
		}
		wg.Wait()
		var worst time.Duration
		for _, r := range results {
			if !r.Acked {
				b.Fatalf("%+v", r)
			}
			worst = max(worst, r.Latency)
			retries += r.Attempts - 2 // a grant is two round trips
		}
		slowest = append(slowest, worst)
	}
	b.StopTimer()
	reportPercentiles(b, "slowest-ack-", slowest)
	b.ReportMetric(float64(retries)/float64(b.N*pods), "retries/send")
}
