package record

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWriteDecodeRoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 123456789, time.UTC)
	want := Record{Kind: Promoted, Group: "ns/app", Pod: "p-1", UID: "u", Epoch: 7, Reason: "Deleted",
		Replaced: "p-0", Seen: at, Labelled: at.Add(time.Millisecond), Acked: at.Add(2 * time.Millisecond), Status: "ok", Attempts: 1}
	var buf bytes.Buffer
	if err := NewWriter(&buf).Write(want); err != nil {
		t.Fatal(err)
	}
	if bytes.Count(buf.Bytes(), []byte("\n")) != 1 {
		t.Fatalf("want one line, got %q", buf.String())
	}
	got, err := Decode(bytes.TrimSpace(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Seen.Equal(want.Seen) || !got.Acked.Equal(want.Acked) || got.Pod != want.Pod || got.Epoch != want.Epoch {
		t.Fatalf("round trip: got %+v, want %+v", got, want)
	}
}

func TestZeroTimesAreOmitted(t *testing.T) {
	var buf bytes.Buffer
	if err := NewWriter(&buf).Write(Record{Kind: Promoted, Group: "g", Pod: "p"}); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(buf.Bytes(), []byte("acked")) {
		t.Fatalf("zero Acked written: %s", buf.String())
	}
}

func TestDecodeRefuses(t *testing.T) {
	for _, line := range []string{
		`not json`,
		`{"kind":"promoted","group":"g"}`, // no pod
		`{"group":"g","pod":"p"}`,         // no kind
	} {
		if _, err := Decode([]byte(line)); err == nil {
			t.Errorf("Decode(%s) = nil error", line)
		}
	}
}

func TestFollowSeesAppendedLinesInOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "records.jsonl")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	got := make(chan Record, 10)
	done := make(chan error, 1)
	// Started before the file exists: Follow must wait for it.
	go func() { done <- Follow(ctx, path, time.Millisecond, func(r Record) { got <- r }) }()

	w, c, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	for i := range 3 {
		if err := w.Write(Record{Kind: Promoted, Group: "g", Pod: "p", Epoch: uint64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	// A half-written line is not delivered until its newline arrives.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if _, err := f.WriteString(`{"kind":"promoted","group":"g",`); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		select {
		case r := <-got:
			if r.Epoch != uint64(i+1) {
				t.Fatalf("record %d has epoch %d", i, r.Epoch)
			}
		case <-ctx.Done():
			t.Fatal("record not followed in time")
		}
	}
	if _, err := f.WriteString(`"pod":"p","epoch":4}` + "\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r.Epoch != 4 {
			t.Fatalf("joined line has epoch %d", r.Epoch)
		}
	case <-ctx.Done():
		t.Fatal("joined line not followed in time")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Follow returned %v after cancel", err)
	}
}
