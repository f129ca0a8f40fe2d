package sqs_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/broker/sqs"
	"github.com/sluice-io/sluice/dispatch"
)

func redisAddr() string {
	if a := os.Getenv("SLUICE_TEST_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// testRedis is a client of the tests' Redis (the package's own
// redis-server, see TestMain, or SLUICE_TEST_REDIS_ADDR); every key under
// prefix is deleted when the test ends.
func testRedis(tb testing.TB, prefix string) *redis.Client {
	tb.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr()})
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// The shared Redis may hold many keys: scan in large steps.
		for _, pattern := range []string{prefix + ":*", "{" + prefix + ":*"} {
			iter := rdb.Scan(ctx, 0, pattern, 100_000).Iterator()
			var keys []string
			for iter.Next(ctx) {
				if keys = append(keys, iter.Val()); len(keys) == 1000 {
					rdb.Unlink(ctx, keys...)
					keys = keys[:0]
				}
			}
			if len(keys) > 0 {
				rdb.Unlink(ctx, keys...)
			}
		}
		_ = rdb.Close()
	})
	return rdb
}

// dispatchHandler is test glue standing where the supervisor's handler
// adapter stands in production: it decodes every message, enqueues the
// batch on a real dispatch queue and records malformed messages in its
// dead-letter stream. before, when set, runs first for every batch (a gate
// or a fault).
type dispatchHandler struct {
	q        *dispatch.Queue
	sourceID string
	before   func(batch []broker.Message) error

	written    atomic.Int64 // events newly written to the stream
	duplicates atomic.Int64 // redeliveries the dedupe absorbed
	dead       atomic.Int64 // messages dead-lettered
	handled    atomic.Int64 // Handle calls that succeeded
	failures   atomic.Int64 // Handle errors and Failing reports
	changed    chan struct{}

	mu      sync.Mutex
	lastErr error
}

func newDispatchHandler(q *dispatch.Queue, sourceID string) *dispatchHandler {
	return &dispatchHandler{q: q, sourceID: sourceID, changed: make(chan struct{}, 1)}
}

func (h *dispatchHandler) Handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	if h.before != nil {
		if err := h.before(batch); err != nil {
			h.failures.Add(1)
			return nil, err
		}
	}
	results, err := h.handle(ctx, batch)
	if err != nil {
		h.failures.Add(1)
		return nil, err
	}
	h.handled.Add(1)
	select {
	case h.changed <- struct{}{}:
	default:
	}
	return results, nil
}

func (h *dispatchHandler) handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	results := make([]broker.Result, len(batch))
	events := make([]dispatch.Event, 0, len(batch))
	for i, m := range batch {
		raw := dispatch.Raw{
			ProjectID: "project", SourceID: h.sourceID, Broker: "sqs",
			MessageID: m.ID, Body: m.Body, Headers: m.Headers,
		}
		ev, err := dispatch.Decode(raw, dispatch.DecodeOptions{})
		if err != nil {
			if !dispatch.IsPermanent(err) {
				return nil, err
			}
			if err := h.q.DeadLetter(ctx, raw, err.Error()); err != nil {
				return nil, err
			}
			results[i] = broker.DeadLettered
			h.dead.Add(1)
			continue
		}
		events = append(events, ev)
	}
	if len(events) == 0 {
		return results, nil
	}
	out, err := h.q.Enqueue(ctx, events)
	if err != nil {
		return nil, err
	}
	for _, o := range out {
		if o == dispatch.Written {
			h.written.Add(1)
		} else {
			h.duplicates.Add(1)
		}
	}
	return results, nil
}

func (h *dispatchHandler) Failing(err error) {
	h.failures.Add(1)
	h.mu.Lock()
	h.lastErr = err
	h.mu.Unlock()
}

func (h *dispatchHandler) Healthy() {}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// run runs c with h until the returned stop is called (also at cleanup);
// stop fails the test unless Run returned nil.
func run(tb testing.TB, c *sqs.Consumer, h broker.Handler) (stop func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					tb.Errorf("Run = %v, want nil after stop", err)
				}
			case <-time.After(time.Minute):
				tb.Error("Run did not return within a minute of its stop")
			}
		})
	}
	tb.Cleanup(stop)
	return stop
}

// events returns n valid Convoy broadcast messages with an attribute.
func events(tag string, n int) []brokertest.Outgoing {
	out := make([]brokertest.Outgoing, n)
	for i := range out {
		out[i] = brokertest.Outgoing{
			Body: fmt.Appendf(nil, `{"event_type":"test.created","data":{"tag":%q,"seq":%d}}`, tag, i),
			Headers: map[string]string{
				"x-convoy-message-type": "broadcast",
				"x-seq":                 strconv.Itoa(i),
			},
		}
	}
	return out
}

// publish sends msgs to q, failing the test on error.
func (q testQueue) mustPublish(tb testing.TB, msgs []brokertest.Outgoing) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := q.publish(ctx, msgs); err != nil {
		tb.Fatalf("publish: %v", err)
	}
}

// waitEmpty waits until q holds no message, visible or in flight.
func (q testQueue) waitEmpty(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	waitFor(tb, timeout, "the queue to be empty", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n, err := q.unacked(ctx)
		return err == nil && n == 0
	})
}

// streamCounts counts the dispatch stream's entries per broker message id.
func streamCounts(tb testing.TB, rdb *redis.Client, key string) (map[string]int, []dispatch.Event) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	counts := make(map[string]int)
	var evs []dispatch.Event
	start := "-"
	for {
		entries, err := rdb.XRangeN(ctx, key, start, "+", 5000).Result()
		if err != nil {
			tb.Fatalf("read stream %s: %v", key, err)
		}
		for _, e := range entries {
			ev, err := dispatch.ParseEntry(e.Values)
			if err != nil {
				tb.Fatalf("entry %s: %v", e.ID, err)
			}
			counts[ev.BrokerMessageID]++
			evs = append(evs, ev)
		}
		if len(entries) < 5000 {
			return counts, evs
		}
		start = "(" + entries[len(entries)-1].ID
	}
}

// checkExactlyOnce fails unless the stream holds n distinct messages, each
// once, and every one carries a different data value.
func checkExactlyOnce(tb testing.TB, counts map[string]int, evs []dispatch.Event, n int) {
	tb.Helper()
	for id, c := range counts {
		if c != 1 {
			tb.Errorf("message %s is in the stream %d times", id, c)
		}
	}
	data := make(map[string]bool, len(evs))
	for _, ev := range evs {
		data[string(ev.Data)] = true
	}
	if len(counts) != n || len(evs) != n || len(data) != n {
		tb.Errorf("stream holds %d entries of %d message ids and %d distinct payloads, want %d of each", len(evs), len(counts), len(data), n)
	}
}

// privateRedis is a redis-server of the test's own, which it may stop and
// restart. A durable one keeps its data across restarts (append-only file,
// fsync always).
type privateRedis struct {
	addr    string
	dir     string
	durable bool
	cmd     *exec.Cmd
}

func startPrivateRedis(tb testing.TB, durable bool) *privateRedis {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	r := &privateRedis{addr: addr, dir: tb.TempDir(), durable: durable}
	r.start(tb)
	tb.Cleanup(r.stop)
	return r
}

func (r *privateRedis) start(tb testing.TB) {
	tb.Helper()
	_, port, _ := net.SplitHostPort(r.addr)
	aof := []string{"--appendonly", "no"}
	if r.durable {
		aof = []string{"--appendonly", "yes", "--appendfsync", "always"}
	}
	r.cmd = exec.Command("redis-server", append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--dir", r.dir}, aof...)...)
	if err := r.cmd.Start(); err != nil {
		tb.Fatalf("start redis-server: %v", err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: r.addr, MaxRetries: -1})
	defer rdb.Close()
	waitFor(tb, 10*time.Second, "the private redis-server", func() bool {
		return rdb.Ping(context.Background()).Err() == nil
	})
}

// stop kills the server (SIGKILL) and waits for it to exit.
func (r *privateRedis) stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}
