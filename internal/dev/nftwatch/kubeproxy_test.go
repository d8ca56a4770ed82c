package nftwatch

import "testing"

// Lines as kube-proxy 1.37 (nftables mode) writes them, seen with nft
// monitor on the local cluster's real nodes.
func TestSendsServiceTo(t *testing.T) {
	const ns, svc, ip = "hapod-demo", "hapod", "10.244.2.2"
	tests := []struct {
		name, line string
		want       bool
	}{
		{"one endpoint: a dnat in the service chain",
			"add rule ip kube-proxy service-7X4PM67H-hapod-demo/hapod/tcp/http meta l4proto tcp dnat to 10.244.2.2:8080", true},
		{"several endpoints: a numgen map",
			"add rule ip kube-proxy service-BK4XB5SK-hapod-demo/hapod/tcp/ meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.244.1.11 . 8080, 1 : 10.244.2.2 . 8080 }", true},
		{"several endpoints, ip not among them",
			"add rule ip kube-proxy service-BK4XB5SK-hapod-demo/hapod/tcp/ meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.244.1.11 . 8080, 1 : 10.244.2.23 . 8080 }", false},
		{"endpoint chains: a jump to the endpoint's",
			"add rule ip kube-proxy service-7X4PM67H-hapod-demo/hapod/tcp/http numgen random mod 2 vmap { 0 : goto endpoint-AB-hapod-demo/hapod/tcp/http__10.244.1.2/8080 , 1 : goto endpoint-CD-hapod-demo/hapod/tcp/http__10.244.2.2/8080 }", true},
		{"another endpoint",
			"add rule ip kube-proxy service-7X4PM67H-hapod-demo/hapod/tcp/http meta l4proto tcp dnat to 10.244.1.3:8080", false},
		{"an address that starts with ip",
			"add rule ip kube-proxy service-7X4PM67H-hapod-demo/hapod/tcp/http meta l4proto tcp dnat to 10.244.2.23:8080", false},
		{"the rule deleted", "delete rule ip kube-proxy service-7X4PM67H-hapod-demo/hapod/tcp/http handle 62", false},
		{"another Service of the namespace",
			"add rule ip kube-proxy service-QQ-hapod-demo/other/tcp/http meta l4proto tcp dnat to 10.244.2.2:8080", false},
		{"the endpoint chain itself, not the Service's",
			"add rule ip kube-proxy endpoint-CD-hapod-demo/hapod/tcp/http__10.244.2.2/8080 meta l4proto tcp dnat to 10.244.2.2:8080", false},
	}
	for _, tc := range tests {
		if got := SendsServiceTo(tc.line, ns, svc, ip); got != tc.want {
			t.Errorf("%s: SendsServiceTo = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestDeletesServiceRule(t *testing.T) {
	if !DeletesServiceRule("delete rule ip kube-proxy service-7X4PM67H-hapod-demo/hapod/tcp/http handle 62", "hapod-demo", "hapod") {
		t.Error("the Service's rule deleted: not seen")
	}
	if DeletesServiceRule("delete rule ip kube-proxy endpoint-CD-hapod-demo/hapod/tcp/http__10.244.2.2/8080 handle 70", "hapod-demo", "hapod") {
		t.Error("an endpoint chain's rule taken for the Service's")
	}
}
