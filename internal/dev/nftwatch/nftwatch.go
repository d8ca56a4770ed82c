// Package nftwatch times the changes of a network namespace's nftables
// rules, as `nft monitor` reports them: the moment kube-proxy (nftables
// mode) points a Service at a new endpoint, which no API object shows.
package nftwatch

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"time"
)

// Line is one line nft printed, and when it was read.
type Line struct {
	At   time.Time
	Text string
}

// Watch runs `nft monitor rules` in the caller's network namespace and keeps
// what it prints (bounded), each line stamped when it was read: nft prints a
// change as the kernel announces it, so the stamp trails the change by the
// pipe's latency only.
type Watch struct {
	cmd  *exec.Cmd
	done chan struct{}

	mu    sync.Mutex
	lines []Line
	err   error
}

// keep bounds the lines kept; the newest half is kept when it is reached.
const keep = 20000

// Start starts nft; Stop (or ctx's end) stops it.
func Start(ctx context.Context) (*Watch, error) {
	path, err := exec.LookPath("nft")
	if err != nil {
		return nil, errors.New("nftwatch: no nft on PATH (Debian package nftables)")
	}
	cmd := exec.CommandContext(ctx, path, "monitor", "rules")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("nftwatch: %w", err)
	}
	w := &Watch{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l := Line{At: time.Now(), Text: sc.Text()}
			w.mu.Lock()
			w.lines = append(w.lines, l)
			if len(w.lines) > keep {
				w.lines = append([]Line(nil), w.lines[len(w.lines)-keep/2:]...)
			}
			w.mu.Unlock()
		}
		err := cmd.Wait()
		w.mu.Lock()
		w.err = errors.Join(sc.Err(), err)
		w.mu.Unlock()
	}()
	return w, nil
}

// Stop ends nft and waits for it.
func (w *Watch) Stop() {
	if w.cmd.Process != nil {
		_ = w.cmd.Process.Kill()
	}
	<-w.done
}

// FirstFunc is the first line read after since for which match is true,
// and whether there is one.
func (w *Watch) FirstFunc(since time.Time, match func(text string) bool) (Line, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.lines {
		if l.At.After(since) && match(l.Text) {
			return l, true
		}
	}
	return Line{}, false
}

// Lines returns a copy of the lines kept.
func (w *Watch) Lines() []Line {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Line(nil), w.lines...)
}
