// Package apifault is a fault-injecting proxy in front of a kube-apiserver, for the
// chaos run: the controller processes under test talk to the API server through it,
// and the run makes their API calls fail, slow down or stop while it checks that
// there are never two actives.
//
// [Start] listens on 127.0.0.1 with TLS (a self-signed certificate made at start)
// and forwards every request, watches included (streamed as they come), to the
// upstream API server with the upstream configuration's credentials.
// [Proxy.WriteKubeconfig] writes a kubeconfig for the processes under test.
//
// Faults can be changed at any time, from any goroutine:
//
//   - [Proxy.SetFaults]: fail writes (POST, PUT, PATCH, DELETE) with a probability,
//     answering a Kubernetes Status 500 InternalError or 429 TooManyRequests as the
//     API server does; hold writes (or every request) back for a while.
//   - [Proxy.Partition]: the API server is unreachable: every open connection is
//     reset, watches included, and so is every new one, until Partition(false).
//   - [Proxy.Reset]: healthy again.
//
// [Proxy.Stats] counts what the proxy did. The failure dice come from a seeded
// generator ([Options.Seed]), so a run whose writes arrive in the same order meets
// the same failures.
//
// What client-go makes of the faults: a 500 reaches the caller at once, but a 429
// carries Retry-After: 1, which client-go honours by retrying the request itself,
// up to 10 times, a second apart; the caller sees the 429 only if every attempt
// drew a failure. During a partition, writes fail at once with "connection reset by
// peer", while GETs (lists) are retried by client-go the same way for about 10
// seconds before they fail. A watch's result channel closes; informers list and
// watch again by themselves and catch up within about a second of Partition(false).
// While the upstream itself is down (a restarted API server) the proxy answers 503
// ServiceUnavailable, as a load balancer in front of it would.
package apifault
