// Package bintest helps tests that run this module's binaries as a user
// would: it builds them once per test process and collects their output.
package bintest
