// Package child starts helper processes (control-plane components, demo
// apps, the controller under test) that die with the process that started
// them, so a crashed test or demo never leaves orphans behind.
package child
