// Command hapod-demo is a small application for trying hapod: it links
// pkg/role, answers HTTP with its role, and starts slowly on purpose.
//
// GET / answers JSON {pod, role, epoch, group, served, since}: 200 while the
// pod is active and initialised, 503 otherwise, so a request routed to a
// standby shows up as a failure. GET /healthz is 200 while the process runs;
// GET /readyz is 200 once -init-delay has passed (the slow start that a hot
// standby hides). Role changes are logged on stderr, one line each, and with
// -role-records appended to a file as JSON lines (internal/dev/rolerecord:
// at, pod, role, epoch, group) for tools that follow them, such as the tour.
//
// Every flag can also be set through an environment variable (the flag wins),
// so that a pod can pass its name and UID with the downward API:
//
//	-http-addr   HTTP_ADDR    HTTP listen address (default :8080)
//	-role-addr   ROLE_ADDR    UDP address for role messages (default :7477)
//	-pod-name    POD_NAME     pod name; messages for another pod are refused
//	-pod-uid     POD_UID      pod UID; messages for another UID are refused
//	-init-delay  INIT_DELAY   time before the app reports ready (default 3s)
//	-ready-file  READY_FILE   file created when ready, removed on exit
//	-role-records ROLE_RECORDS  file to append each role change to (JSON lines)
//	-role-key-dir ROLE_KEY_DIR  the group's role-message keys (a mounted Secret); empty: unauthenticated
//	-role-group  ROLE_GROUP   namespace/name of the pod's group; messages for another group are refused
//
// It exits 0 after SIGTERM or SIGINT (a second signal kills it at once), 2 on
// bad flags and 1 on other errors, such as an address already in use.
package main
