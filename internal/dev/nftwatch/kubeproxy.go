package nftwatch

import "strings"

// serviceChain is the part of the name of kube-proxy's chain for a
// Service's port that names the Service: service-<hash>-<ns>/<name>/<proto>/<port>.
func serviceChain(ns, svc string) string { return "-" + ns + "/" + svc + "/" }

// SendsServiceTo reports whether a line of `nft monitor` adds a rule to the
// Service's chain that sends it to ip: as kube-proxy 1.37 writes them, a
// dnat straight to ip when it is the only endpoint, a dnat through a numgen
// map among several ("map { 0 : <ip> . <port>, ... }"), or (for Services
// whose endpoints need chains of their own) a jump to its endpoint chain
// (named ...__<ip>/<port>).
func SendsServiceTo(line, ns, svc, ip string) bool {
	rest, ok := strings.CutPrefix(line, "add rule ")
	if !ok {
		return false
	}
	f := strings.Fields(rest) // family, table, chain, the rule
	if len(f) < 4 || !strings.HasPrefix(f[2], "service-") || !strings.Contains(f[2], serviceChain(ns, svc)) {
		return false
	}
	return strings.Contains(rest, "dnat to "+ip+":") || strings.Contains(rest, ": "+ip+" . ") || strings.Contains(rest, "__"+ip+"/")
}

// DeletesServiceRule reports whether a line of `nft monitor` deletes a rule
// of the Service's chain: kube-proxy replaces a rule by a delete and an add,
// and with no ready endpoint left the add does not follow.
func DeletesServiceRule(line, ns, svc string) bool {
	rest, ok := strings.CutPrefix(line, "delete rule ")
	if !ok {
		return false
	}
	f := strings.Fields(rest)
	return len(f) >= 3 && strings.HasPrefix(f[2], "service-") && strings.Contains(f[2], serviceChain(ns, svc))
}
