package appkubelet

import (
	"net/netip"
	"strings"
	"testing"
)

func TestAddrPool(t *testing.T) {
	held := netip.MustParseAddr("127.77.0.3") // another process has its ports
	p, err := NewAddrPool(netip.MustParsePrefix("127.77.0.0/29"), func(a netip.Addr) bool { return a != held })
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 5 {
		a, err := p.Get()
		if err != nil {
			t.Fatalf("get after %v: %v", got, err)
		}
		got = append(got, a.String())
	}
	// .0 (network) and .7 (broadcast) are never used; .3 is busy.
	if want := "127.77.0.1 127.77.0.2 127.77.0.4 127.77.0.5 127.77.0.6"; strings.Join(got, " ") != want {
		t.Fatalf("got %v, want %s", got, want)
	}
	if a, err := p.Get(); err == nil {
		t.Fatalf("got %s from a full pool", a)
	}
	// A returned address is handed out again, after the ones not used since.
	p.Put(netip.MustParseAddr("127.77.0.2"))
	if a, err := p.Get(); err != nil || a.String() != "127.77.0.2" {
		t.Fatalf("after put: %v, %v; want 127.77.0.2", a, err)
	}
}

func TestAddrPoolTakesTurns(t *testing.T) {
	p, err := NewAddrPool(netip.MustParsePrefix("127.77.0.0/24"), nil)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := p.Get()
	p.Put(a)
	// The next pod gets a new address, not the one just freed.
	if b, _ := p.Get(); b == a {
		t.Fatalf("got %s again at once", b)
	}
}

func TestAddrPoolRefusesNonLoopback(t *testing.T) {
	for _, s := range []string{"198.51.100.0/24", "10.0.0.0/8", "::1/128", "127.0.0.0/31", "0.0.0.0/0"} {
		if _, err := NewAddrPool(netip.MustParsePrefix(s), nil); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
}

func TestPortsFree(t *testing.T) {
	free := PortsFree(0, 0) // port 0: the kernel picks; always free
	if !free(netip.MustParseAddr("127.0.0.1")) {
		t.Fatal("127.0.0.1 with port 0 reported busy")
	}
}
