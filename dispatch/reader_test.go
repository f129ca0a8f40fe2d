package dispatch

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// runReader runs r until the test ends.
func runReader(t *testing.T, r *Reader, handle func(context.Context, Event) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, handle) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("reader Run: %v", err)
		}
	})
}

type handled struct {
	mu     sync.Mutex
	counts map[string]int
}

func (h *handled) add(ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.counts[ev.BrokerMessageID]++
}

func (h *handled) snapshot() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int, len(h.counts))
	for k, v := range h.counts {
		out[k] = v
	}
	return out
}

func pending(t *testing.T, rdb *redis.Client, q *Queue, group string) int64 {
	t.Helper()
	p, err := rdb.XPending(context.Background(), q.StreamKey(), group).Result()
	if err != nil {
		t.Fatal(err)
	}
	return p.Count
}

func TestReaderGroupSharesWorkAndAcks(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	rdb := sharedRedis(t, prefix)
	q := New(rdb, Options{Prefix: prefix})
	// Entries written before the group exists are read with Start "0".
	if _, err := q.Enqueue(ctx, batchOf(t, "s1", 30)); err != nil {
		t.Fatal(err)
	}
	h := &handled{counts: map[string]int{}}
	for _, name := range []string{"r1", "r2"} {
		r, err := NewReader(rdb, ReaderOptions{Prefix: prefix, Group: "g", Consumer: name, Start: "0", Count: 7, Block: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		runReader(t, r, func(_ context.Context, ev Event) error { h.add(ev); return nil })
	}
	if _, err := q.Enqueue(ctx, batchOf(t, "s2", 30)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "60 events handled and acked", func() bool {
		n := 0
		for _, c := range h.snapshot() {
			n += c
		}
		return n >= 60 && pending(t, rdb, q, "g") == 0
	})
	// s1 and s2 use the same message ids: 30 ids, each handled twice (once per source).
	for id, c := range h.snapshot() {
		if c != 2 {
			t.Errorf("%s handled %d times, want 2 (once per source)", id, c)
		}
	}
}

func TestReaderClaimsFailedEntries(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	rdb := sharedRedis(t, prefix)
	q := New(rdb, Options{Prefix: prefix})
	if _, err := q.Enqueue(ctx, batchOf(t, "s1", 5)); err != nil {
		t.Fatal(err)
	}
	h := &handled{counts: map[string]int{}}
	var mu sync.Mutex
	failed := map[string]bool{}
	r, err := NewReader(rdb, ReaderOptions{Prefix: prefix, Group: "g", Consumer: "r1", Start: "0",
		Block: 20 * time.Millisecond, ClaimIdle: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runReader(t, r, func(_ context.Context, ev Event) error {
		mu.Lock()
		defer mu.Unlock()
		if ev.BrokerMessageID == "topic/0/3" && !failed[ev.ID] {
			failed[ev.ID] = true
			return errors.New("endpoint unavailable")
		}
		h.add(ev)
		return nil
	})
	waitFor(t, "the failed entry claimed and handled", func() bool {
		return h.snapshot()["topic/0/3"] == 1 && pending(t, rdb, q, "g") == 0
	})
	for id, c := range h.snapshot() {
		if c != 1 {
			t.Errorf("%s handled %d times", id, c)
		}
	}
}

func TestReaderResumesOwnPendingAfterRestart(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	rdb := sharedRedis(t, prefix)
	q := New(rdb, Options{Prefix: prefix})
	if _, err := q.Enqueue(ctx, batchOf(t, "s1", 4)); err != nil {
		t.Fatal(err)
	}
	// A reader that crashed: entries delivered to r1, never acked.
	if err := rdb.XGroupCreateMkStream(ctx, q.StreamKey(), "g", "0").Err(); err != nil {
		t.Fatal(err)
	}
	res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "r1", Streams: []string{q.StreamKey(), ">"}, Count: 10, Block: -1}).Result()
	if err != nil {
		t.Fatal(err)
	}
	// One of them deleted meanwhile: it must leave the pending list too.
	if err := rdb.XDel(ctx, q.StreamKey(), res[0].Messages[0].ID).Err(); err != nil {
		t.Fatal(err)
	}
	h := &handled{counts: map[string]int{}}
	r, err := NewReader(rdb, ReaderOptions{Prefix: prefix, Group: "g", Consumer: "r1", Block: 20 * time.Millisecond, ClaimIdle: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runReader(t, r, func(_ context.Context, ev Event) error { h.add(ev); return nil })
	waitFor(t, "own pending entries handled", func() bool {
		return len(h.snapshot()) == 3 && pending(t, rdb, q, "g") == 0
	})
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

func TestTail(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	rdb := sharedRedis(t, prefix)
	q := New(rdb, Options{Prefix: prefix})
	old := batchOf(t, "old", 3)
	if _, err := q.Enqueue(ctx, old); err != nil {
		t.Fatal(err)
	}
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: q.StreamKey(), Values: []any{"v", "99", "id", "x"}})

	tail := func(from string) (*syncBuffer, func()) {
		out := &syncBuffer{}
		tctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- Tail(tctx, rdb, TailOptions{Prefix: prefix, From: from, Block: 20 * time.Millisecond}, out)
		}()
		return out, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Tail: %v", err)
			}
		}
	}
	fromStart, stopStart := tail("0")
	defer stopStart()
	waitFor(t, "the existing entries", func() bool { return len(fromStart.lines()) == 4 })
	fromNow, stopNow := tail("")
	defer stopNow()

	// The "from now" tail starts asynchronously: keep adding events until it
	// shows one; it must never show the entries that were there before.
	var fresh []Event
	waitFor(t, "a new entry in the tail from now", func() bool {
		ev := testEvent(t, "new", fmt.Sprintf("m-%d", len(fresh)), `{"html":"<b>&</b>","n":[1, 2]}`)
		ev.Headers["x-custom"] = "c"
		if _, err := q.Enqueue(ctx, []Event{ev}); err != nil {
			t.Fatal(err)
		}
		fresh = append(fresh, ev)
		return len(fromNow.lines()) > 0
	})
	waitFor(t, "every new entry in the tail from the start", func() bool {
		return len(fromStart.lines()) == 4+len(fresh)
	})
	var bad map[string]any
	if err := json.Unmarshal([]byte(fromStart.lines()[3]), &bad); err != nil || !strings.Contains(fmt.Sprint(bad["error"]), "unknown envelope version") {
		t.Fatalf("unparsable entry line = %s (%v)", fromStart.lines()[3], err)
	}
	lines := fromNow.lines()
	line := lines[len(lines)-1]
	var got struct {
		EntryID string          `json:"entry_id"`
		Data    json.RawMessage `json:"data"`
		Event
	}
	if err := json.Unmarshal([]byte(line), &got); err != nil {
		t.Fatalf("line %s: %v", line, err)
	}
	for _, l := range lines {
		if !strings.Contains(l, `"source_id":"new"`) {
			t.Fatalf("tail from now printed an older entry: %s", l)
		}
	}
	isFresh := false
	for _, ev := range fresh {
		isFresh = isFresh || ev.ID == got.ID
	}
	if got.EntryID == "" || !isFresh || got.SourceID != "new" || got.Headers["x-custom"] != "c" ||
		string(got.Data) != `{"html":"<b>&</b>","n":[1,2]}` || got.V != Version {
		t.Fatalf("tail line = %s", line)
	}
}
