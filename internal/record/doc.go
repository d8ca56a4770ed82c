// Package record is the machine-readable history of what the controller did:
// one JSON object per line for every promotion, written by the controller when
// it runs with -failover-records and read by anything that wants failover
// timings without parsing logs or Event text (the demo, the benchmark, the
// tests, an operator's script).
//
// The format is a contract like the role protocol: fields are only ever
// added, never renamed or retyped, and readers ignore fields they do not know.
package record
