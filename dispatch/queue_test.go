package dispatch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func batchOf(tb testing.TB, src string, n int) []Event {
	evs := make([]Event, n)
	for i := range evs {
		evs[i] = testEvent(tb, src, fmt.Sprintf("topic/0/%d", i), fmt.Sprintf(`{"n":%d}`, i))
	}
	return evs
}

func TestEnqueueWritesAndDedupes(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	rdb := sharedRedis(t, prefix)
	q := New(rdb, Options{Prefix: prefix})

	evs := batchOf(t, "s1", 5)
	evs = append(evs, evs[2]) // the same message twice in one batch
	noID := testEvent(t, "s1", "", `{"no":"id"}`)
	evs = append(evs, noID)
	other := testEvent(t, "s2", "topic/0/0", `{"other":"source"}`) // same message id, other source
	evs = append(evs, other)

	got, err := q.Enqueue(ctx, evs)
	if err != nil {
		t.Fatal(err)
	}
	want := []Outcome{Written, Written, Written, Written, Written, Duplicate, Written, Written}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("outcomes = %v, want %v", got, want)
	}
	got, err = q.Enqueue(ctx, evs)
	if err != nil {
		t.Fatal(err)
	}
	want = []Outcome{Duplicate, Duplicate, Duplicate, Duplicate, Duplicate, Duplicate, Written, Duplicate}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("second outcomes = %v, want %v (an event without message id is always written)", got, want)
	}

	stream := streamEvents(t, rdb, q)
	if len(stream) != 8 {
		t.Fatalf("stream has %d entries, want 8", len(stream))
	}
	for i, ev := range stream[:5] {
		if string(ev.Data) != string(evs[i].Data) || ev.ID != evs[i].ID {
			t.Errorf("entry %d = %s %s, want %s %s", i, ev.ID, ev.Data, evs[i].ID, evs[i].Data)
		}
	}
	if q.Len() != 8 {
		t.Errorf("Len = %d, want 8 (read by Enqueue)", q.Len())
	}
	ttl, err := rdb.PTTL(ctx, q.keys.seen("s1", "topic/0/0")).Result()
	if err != nil || ttl <= 23*time.Hour || ttl > 24*time.Hour {
		t.Errorf("dedupe key TTL = %v, %v; want about 24h", ttl, err)
	}
}

func TestEnqueueDedupeWindowExpires(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	rdb := sharedRedis(t, prefix)
	q := New(rdb, Options{Prefix: prefix, DedupeWindow: 50 * time.Millisecond})
	evs := batchOf(t, "s1", 1)
	if _, err := q.Enqueue(ctx, evs); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "dedupe key expiry", func() bool {
		n, err := rdb.Exists(ctx, q.keys.seen("s1", evs[0].BrokerMessageID)).Result()
		return err == nil && n == 0
	})
	got, err := q.Enqueue(ctx, evs)
	if err != nil || got[0] != Written {
		t.Fatalf("after the window: %v, %v; want written", got, err)
	}
}

func TestEnqueueConcurrentSameBatchWritesOnce(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	rdb := sharedRedis(t, prefix)
	const workers, n = 8, 200
	evs := batchOf(t, "s1", n)

	var wg sync.WaitGroup
	written := make([][]Outcome, workers)
	errs := make([]error, workers)
	start := make(chan struct{})
	for w := range workers {
		// Every goroutine is a replica with its own Queue (and pooled connection).
		q := New(rdb, Options{Prefix: prefix})
		wg.Go(func() {
			<-start
			written[w], errs[w] = q.Enqueue(ctx, evs)
		})
	}
	close(start)
	wg.Wait()

	perEvent := make([]int, n)
	for w := range workers {
		if errs[w] != nil {
			t.Fatalf("worker %d: %v", w, errs[w])
		}
		for i, o := range written[w] {
			if o == Written {
				perEvent[i]++
			}
		}
	}
	for i, c := range perEvent {
		if c != 1 {
			t.Errorf("event %d reported written %d times, want 1", i, c)
		}
	}
	q := New(rdb, Options{Prefix: prefix})
	counts := countByMessageID(streamEvents(t, rdb, q))
	if len(counts) != n {
		t.Errorf("stream holds %d distinct events, want %d", len(counts), n)
	}
	for id, c := range counts {
		if c != 1 {
			t.Errorf("%s written %d times", id, c)
		}
	}
}

// dropReplyConn is a real connection to Redis that, once armed, sends the
// next command and then closes, so the command runs on the server but its
// reply is lost: the client sees an error after the write happened.
type dropReplyConn struct {
	net.Conn
	armed *atomic.Bool
}

func (c dropReplyConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err == nil && c.armed.CompareAndSwap(true, false) {
		_ = c.Conn.Close()
	}
	return n, err
}

func TestEnqueueRetryAfterLostReplyWritesOnce(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	admin := sharedRedis(t, prefix)
	var armed atomic.Bool
	rdb := redis.NewClient(&redis.Options{
		Addr:       redisAddr(),
		MaxRetries: -1, // surface the failure instead of retrying inside go-redis
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return dropReplyConn{Conn: c, armed: &armed}, nil
		},
	})
	defer rdb.Close()
	q := New(rdb, Options{Prefix: prefix})
	if err := rdb.Ping(ctx).Err(); err != nil { // connect (and load nothing) before arming
		t.Fatal(err)
	}
	if err := enqueueScript.Load(ctx, rdb).Err(); err != nil {
		t.Fatal(err)
	}

	evs := batchOf(t, "s1", 50)
	// First half written cleanly.
	if _, err := q.Enqueue(ctx, evs[:25]); err != nil {
		t.Fatal(err)
	}
	// The whole batch: the script runs, the reply is lost.
	armed.Store(true)
	if _, err := q.Enqueue(ctx, evs); err == nil || IsPermanent(err) {
		t.Fatalf("Enqueue with a lost reply: err = %v, want a transient error", err)
	}
	// The retry of the same batch writes nothing more.
	got, err := q.Enqueue(ctx, evs)
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range got {
		if o != Duplicate {
			t.Fatalf("retry outcome %d = %v, want duplicate", i, o)
		}
	}
	counts := countByMessageID(streamEvents(t, admin, q))
	if len(counts) != len(evs) {
		t.Fatalf("stream holds %d distinct events, want %d", len(counts), len(evs))
	}
	for id, c := range counts {
		if c != 1 {
			t.Errorf("%s written %d times", id, c)
		}
	}
}

func TestEnqueueFailedWriteIsRetriable(t *testing.T) {
	// A key of the wrong type makes XADD fail inside the script after earlier
	// events of the batch were written: the retry must write exactly the rest.
	ctx := context.Background()
	prefix := testPrefix(t)
	rdb := sharedRedis(t, prefix)
	q := New(rdb, Options{Prefix: prefix})
	evs := batchOf(t, "s1", 10)
	if _, err := q.Enqueue(ctx, evs[:4]); err != nil {
		t.Fatal(err)
	}
	// Make the stream unwritable: replace it by a string, keeping its entries aside.
	if err := rdb.Rename(ctx, q.StreamKey(), prefix+":kept").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, q.StreamKey(), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue(ctx, evs); err == nil || IsPermanent(err) {
		t.Fatalf("err = %v, want a transient error", err)
	}
	if n, _ := rdb.Exists(ctx, q.keys.seen("s1", evs[4].BrokerMessageID)).Result(); n != 0 {
		t.Fatal("dedupe key left behind for an event whose write failed")
	}
	if err := rdb.Rename(ctx, prefix+":kept", q.StreamKey()).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := q.Enqueue(ctx, evs)
	if err != nil {
		t.Fatal(err)
	}
	want := []Outcome{Duplicate, Duplicate, Duplicate, Duplicate, Written, Written, Written, Written, Written, Written}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("outcomes = %v, want %v", got, want)
	}
	if l := len(streamEvents(t, rdb, q)); l != 10 {
		t.Fatalf("stream length %d, want 10", l)
	}
}

func TestBackpressureEngagesAndReleases(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	rdb := sharedRedis(t, prefix)
	q := New(rdb, Options{Prefix: prefix, HighWater: 10, LowWater: 5, PollInterval: 10 * time.Millisecond})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- q.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	if err := q.WaitBelowHighWater(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue(ctx, batchOf(t, "s1", 10)); err != nil {
		t.Fatal(err)
	}
	if q.Backpressured() {
		t.Fatal("backpressured at the high mark, want only above it")
	}
	if _, err := q.Enqueue(ctx, batchOf(t, "s2", 1)); err != nil {
		t.Fatal(err)
	}
	if !q.Backpressured() || q.Len() != 11 {
		t.Fatalf("above the high mark: backpressured %v, len %d", q.Backpressured(), q.Len())
	}

	released := make(chan error, 1)
	go func() { released <- q.WaitBelowHighWater(ctx) }()

	// Drain to 5: at the low mark, still held.
	ids, err := rdb.XRange(ctx, q.StreamKey(), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ids[:6] {
		rdb.XDel(ctx, q.StreamKey(), m.ID)
	}
	waitFor(t, "the poller to see length 5", func() bool { return q.Len() == 5 })
	select {
	case err := <-released:
		t.Fatalf("released at the low mark (err %v), want only below it", err)
	default:
	}
	if !q.Backpressured() {
		t.Fatal("released at the low mark")
	}
	rdb.XDel(ctx, q.StreamKey(), ids[6].ID)
	select {
	case err := <-released:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitBelowHighWater did not return below the low mark")
	}
	if q.Backpressured() {
		t.Fatal("still backpressured below the low mark")
	}

	// A waiter gives up with its context.
	if _, err := q.Enqueue(ctx, batchOf(t, "s3", 8)); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithCancel(ctx)
	cancel()
	if err := q.WaitBelowHighWater(short); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitBelowHighWater on a done context = %v", err)
	}
}

// privateRedis is a redis-server of the test's own, which it may stop. It
// keeps an append-only file fsynced on every write in a directory that
// outlives restarts, as a persistent production Redis would.
type privateRedis struct {
	tb    testing.TB
	port  int
	dir   string
	extra []string // more redis-server arguments
	cmd   *exec.Cmd
}

func startPrivateRedis(tb testing.TB, extra ...string) *privateRedis {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Skip("redis-server not installed")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	r := &privateRedis{tb: tb, port: port, dir: tb.TempDir(), extra: extra}
	r.start()
	tb.Cleanup(r.stop)
	return r
}

func (r *privateRedis) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// start starts the server on its port and waits until it answers.
func (r *privateRedis) start() {
	r.tb.Helper()
	args := append([]string{"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", r.dir}, r.extra...)
	r.cmd = exec.Command("redis-server", args...)
	if err := r.cmd.Start(); err != nil {
		r.tb.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1})
	defer c.Close()
	waitFor(r.tb, "private redis-server to answer", func() bool {
		return c.Ping(context.Background()).Err() == nil
	})
}

// stop kills the server.
func (r *privateRedis) stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

func TestEnqueueSurvivesRedisOutage(t *testing.T) {
	ctx := context.Background()
	srv := startPrivateRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.addr(), MaxRetries: -1, DialTimeout: time.Second})
	defer rdb.Close()
	q := New(rdb, Options{Prefix: "sluice"})

	const batches, size = 40, 25
	var written atomic.Int64
	sawError := make(chan struct{})
	var sawOnce sync.Once
	producerDone := make(chan error, 1)
	go func() {
		// A worker: every batch is retried until it is written.
		for b := range batches {
			batch := make([]Event, size)
			for i := range batch {
				batch[i] = testEvent(t, "s1", fmt.Sprintf("q/%d/%d", b, i), `{"x":1}`)
			}
			for {
				_, err := q.Enqueue(ctx, batch)
				if err == nil {
					break
				}
				if IsPermanent(err) {
					producerDone <- fmt.Errorf("batch %d: permanent error during an outage: %w", b, err)
					return
				}
				sawOnce.Do(func() { close(sawError) })
				time.Sleep(5 * time.Millisecond) // the worker's retry backoff
			}
			written.Add(size)
		}
		producerDone <- nil
	}()

	waitFor(t, "some batches written", func() bool { return written.Load() >= batches*size/4 })
	srv.stop() // outage while the worker is writing
	select {
	case <-sawError:
	case err := <-producerDone:
		t.Fatalf("worker finished before seeing the outage: %v", err)
	}
	srv.start() // same port, same data
	if err := <-producerDone; err != nil {
		t.Fatal(err)
	}

	counts := countByMessageID(streamEvents(t, rdb, q))
	if len(counts) != batches*size {
		t.Fatalf("stream holds %d distinct events, want %d", len(counts), batches*size)
	}
	for id, c := range counts {
		if c != 1 {
			t.Errorf("%s written %d times", id, c)
		}
	}
}

// encodeHeadersJSON is how entries' headers were encoded before
// appendHeaders: the reference it must match byte for byte.
func encodeHeadersJSON(t *testing.T, h map[string]string) string {
	t.Helper()
	if len(h) == 0 {
		return "{}"
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(h); err != nil {
		t.Fatal(err)
	}
	return string(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
}

var headerSeeds = []string{
	"", "x-tenant", "Content-Type", "<a&b>", `q"uote`, `back\slash`, "\b\f\n\r\t\x00\x1f\x7f",
	"caf\u00e9 \u2603 \U0001F600", "\u2028\u2029", "bad\xffutf8\xc3", "\xed\xa0\x80", "/slash",
}

func TestAppendHeadersMatchesEncodingJSON(t *testing.T) {
	h := map[string]string{}
	for i, s := range headerSeeds {
		h[s] = headerSeeds[len(headerSeeds)-1-i]
		h["k"+strconv.Itoa(i)] = s
	}
	for _, m := range []map[string]string{nil, {}, {"a": "b"}, h} {
		if got, want := string(appendHeaders(nil, m)), encodeHeadersJSON(t, m); got != want {
			t.Errorf("appendHeaders = %s, want %s", got, want)
		}
	}
}

func FuzzAppendHeaders(f *testing.F) {
	for i, s := range headerSeeds {
		f.Add(s, headerSeeds[len(headerSeeds)-1-i], "x-"+s)
	}
	f.Fuzz(func(t *testing.T, k1, v, k2 string) {
		m := map[string]string{k1: v, k2: k1 + v, v: k2}
		if got, want := string(appendHeaders(nil, m)), encodeHeadersJSON(t, m); got != want {
			t.Fatalf("appendHeaders(%q) = %s, want %s", m, got, want)
		}
	})
}

// TestEnqueueArgsPerEvent checks that a batch's script arguments hold every
// event's own values, whatever they share with the event before.
func TestEnqueueArgsPerEvent(t *testing.T) {
	var evs []Event
	for i, src := range []string{"s1", "s1", "s2", "s2", "s1"} {
		ev := testEvent(t, src, fmt.Sprintf("t/0/%d", i), fmt.Sprintf(`{"n":%d}`, i%2))
		if i%2 == 1 {
			ev.ProjectID, ev.EventType, ev.IdempotencyKey = "other", "e"+strconv.Itoa(i/3), "k"
		}
		if i == 3 {
			ev.MessageType, ev.EndpointID, ev.OwnerID, ev.BrokerMessageID = TypeFanout, "", "o1", ""
		}
		evs = append(evs, ev)
	}
	q := New(nil, Options{Prefix: "p"})
	_, args, err := q.enqueueArgs(evs)
	if err != nil {
		t.Fatal(err)
	}
	str := func(v any) string {
		if b, ok := v.([]byte); ok {
			return string(b)
		}
		return fmt.Sprint(v)
	}
	nf := len(streamFields)
	at := 3 + nf
	for i := range evs {
		want, _ := appendEntryValues(nil, &evs[i])
		got := args[at+1 : at+1+nf]
		for j := range want {
			if str(got[j]) != str(want[j]) {
				t.Errorf("event %d field %s = %q, want %q", i, streamFields[j], str(got[j]), str(want[j]))
			}
		}
		at += 1 + nf
	}
	if at != len(args) {
		t.Fatalf("%d arguments, want %d", len(args), at)
	}
}
