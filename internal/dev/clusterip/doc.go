// Package clusterip sends a steady load of HTTP requests to a Service's
// ClusterIP, the way a client of the Service reaches it (through kube-proxy's
// rules on a real node), and keeps who answered each one: the bench's and the
// real-node demo's view of a failover from outside.
package clusterip
