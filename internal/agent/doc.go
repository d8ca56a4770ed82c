// Package agent is hapod-agent: a sidecar that runs a pkg/role Listener for
// an application that cannot link Go, and hands it the role as a file, a
// command run on each change, and a local HTTP API.
//
// The agent only relays the Listener's state, so every pkg/role guarantee
// holds up to the agent; it adds one hop, so the application must treat
// what the agent says as the truth and treat "unknown" or an absent agent as
// standby. See docs/agent.md.
package agent
