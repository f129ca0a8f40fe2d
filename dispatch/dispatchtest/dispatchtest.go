// Package dispatchtest holds what the broker packages' tests share to run a
// consumer into a real dispatch queue: a unique key prefix on the tests'
// Redis, a private redis-server a test may stop and start, a Handler that
// decodes and enqueues like the supervisor's, and checks of the dispatch
// stream. It is imported by tests only.
package dispatchtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/dispatch"
)

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9_]+`)

// Prefix is a Redis key prefix that no other test, run or engineer uses:
// "test:" and the test's name, then random hex.
func Prefix(tb testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "test:" + unsafeChars.ReplaceAllString(tb.Name(), "_") + ":" + hex.EncodeToString(b[:])
}

// RedisAddr is the tests' Redis: SLUICE_TEST_REDIS_ADDR, or 127.0.0.1:6379.
func RedisAddr() string {
	if a := os.Getenv("SLUICE_TEST_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// Redis is a client of the tests' Redis (see RedisAddr). When the test ends
// it unlinks every key of a dispatch queue or source store under prefix
// ("prefix:*" and the hash-tagged "{prefix:*" and "{prefix}*") and closes
// the client.
func Redis(tb testing.TB, prefix string) *redis.Client {
	tb.Helper()
	// A generous read timeout: tests read whole streams on loaded machines.
	rdb := redis.NewClient(&redis.Options{Addr: RedisAddr(), ReadTimeout: 30 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		tb.Fatalf("redis at %s: %v", RedisAddr(), err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, pattern := range []string{prefix + ":*", "{" + prefix + ":*", "{" + prefix + "}*"} {
			// The shared Redis may hold many keys: scan in large steps.
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
			if err := iter.Err(); err != nil {
				tb.Logf("clean up %s: %v", pattern, err)
			}
		}
		_ = rdb.Close()
	})
	return rdb
}

// FreePort is a TCP port of 127.0.0.1 that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitFor polls cond every 20ms until it holds, failing the test after
// timeout.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Server is a redis-server of the test's own, which the test may stop (as a
// crash: SIGKILL) and start again on the same port. Its append-only file,
// fsynced on every write, lives in a t.TempDir, so every acknowledged write
// survives a Stop and Start.
type Server struct {
	tb   testing.TB
	port int
	dir  string
	args []string
	cmd  *exec.Cmd
}

// StartRedis starts a Server on a free port; it is stopped when the test
// ends. args are extra redis-server arguments that override the defaults
// (a benchmark that never restarts it passes "--appendonly", "no").
func StartRedis(tb testing.TB, args ...string) *Server {
	tb.Helper()
	s := &Server{tb: tb, port: FreePort(tb), dir: tb.TempDir(), args: args}
	s.Start()
	tb.Cleanup(s.Stop)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// URL is the server's redis:// URL.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// Start starts the server and waits until it answers. It is a no-op while
// the server runs. It must be called from the test's goroutine.
func (s *Server) Start() {
	s.tb.Helper()
	if s.cmd != nil {
		return
	}
	args := append([]string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "yes", "--appendfsync", "always", "--dir", s.dir}, s.args...)
	cmd := exec.Command("redis-server", args...)
	if err := cmd.Start(); err != nil {
		s.tb.Fatalf("start redis-server: %v", err)
	}
	s.cmd = cmd
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer rdb.Close()
	WaitFor(s.tb, 10*time.Second, "the private redis-server on "+s.Addr(), func() bool {
		return rdb.Ping(context.Background()).Err() == nil
	})
}

// Stop kills the server (SIGKILL) and waits for it to exit. It is a no-op
// while the server is stopped.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Handler is test glue that stands where the supervisor's handler stands in
// production: it decodes every message of a batch and enqueues the events
// on a real dispatch.Queue in one idempotent write. A malformed message is
// Rejected when Reject is set (the broker dead-letters it) and otherwise
// recorded in the queue's dead-letter stream. It counts what it did.
type Handler struct {
	// Before, when set, runs first for every batch: a gate (it may block)
	// or a fault (its error fails the batch as a transient one).
	Before func(batch []broker.Message) error
	// Reject answers Rejected for malformed messages instead of writing
	// them to the queue's dead-letter stream.
	Reject bool

	Written        atomic.Int64 // events newly written to the stream
	Duplicates     atomic.Int64 // redeliveries the dedupe absorbed
	Dead           atomic.Int64 // malformed messages dead-lettered or rejected
	Batches        atomic.Int64 // Handle calls
	Handled        atomic.Int64 // Handle calls that succeeded
	Errors         atomic.Int64 // Handle calls that failed
	FailingReports atomic.Int64 // Failing calls
	HealthyReports atomic.Int64 // Healthy calls

	q        *dispatch.Queue
	kind     string
	sourceID string
	changed  chan struct{}

	mu          sync.Mutex
	lastFailure error
}

// NewHandler is a Handler writing to q as source sourceID of broker kind
// (amqp, kafka, sqs, google).
func NewHandler(q *dispatch.Queue, kind, sourceID string) *Handler {
	return &Handler{q: q, kind: kind, sourceID: sourceID, changed: make(chan struct{}, 1)}
}

// Handle implements broker.Handler.
func (h *Handler) Handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	h.Batches.Add(1)
	if h.Before != nil {
		if err := h.Before(batch); err != nil {
			h.Errors.Add(1)
			return nil, err
		}
	}
	results, err := h.handle(ctx, batch)
	if err != nil {
		h.Errors.Add(1)
		return nil, err
	}
	h.Handled.Add(1)
	select {
	case h.changed <- struct{}{}:
	default:
	}
	return results, nil
}

func (h *Handler) handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	results := make([]broker.Result, len(batch))
	events := make([]dispatch.Event, 0, len(batch))
	var dead int64
	for i, m := range batch {
		raw := dispatch.Raw{
			ProjectID: "project", SourceID: h.sourceID, Broker: h.kind,
			MessageID: m.ID, Body: m.Body, Headers: m.Headers,
		}
		ev, err := dispatch.Decode(raw, dispatch.DecodeOptions{})
		switch {
		case err == nil:
			results[i] = broker.Written
			events = append(events, ev)
		case !dispatch.IsPermanent(err):
			return nil, err
		case h.Reject:
			results[i] = broker.Rejected
			dead++
		default:
			if err := h.q.DeadLetter(ctx, raw, err.Error()); err != nil {
				return nil, err
			}
			results[i] = broker.DeadLettered
			dead++
		}
	}
	if len(events) > 0 {
		out, err := h.q.Enqueue(ctx, events)
		if err != nil {
			return nil, err
		}
		for _, o := range out {
			if o == dispatch.Written {
				h.Written.Add(1)
			} else {
				h.Duplicates.Add(1)
			}
		}
	}
	h.Dead.Add(dead)
	return results, nil
}

// Failing implements broker.Handler.
func (h *Handler) Failing(err error) {
	h.FailingReports.Add(1)
	h.mu.Lock()
	h.lastFailure = err
	h.mu.Unlock()
}

// Healthy implements broker.Handler.
func (h *Handler) Healthy() {
	h.HealthyReports.Add(1)
	h.mu.Lock()
	h.lastFailure = nil
	h.mu.Unlock()
}

// LastFailure is the error of the latest Failing report, or nil when none
// came or Healthy came after it.
func (h *Handler) LastFailure() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lastFailure
}

// Changed is signalled after a Handle call succeeds (it holds one signal).
func (h *Handler) Changed() <-chan struct{} { return h.changed }

// WaitWritten waits until the handler has newly written n events, failing
// the test after timeout.
func (h *Handler) WaitWritten(tb testing.TB, n int64, timeout time.Duration) {
	tb.Helper()
	deadline := time.After(timeout)
	for h.Written.Load() < n {
		select {
		case <-h.changed:
		case <-deadline:
			tb.Fatalf("written %d of %d events within %v", h.Written.Load(), n, timeout)
		}
	}
}

// ReadStream reads the whole dispatch stream of q and counts its entries
// per broker message id.
func ReadStream(ctx context.Context, rdb redis.Cmdable, q *dispatch.Queue) (map[string]int, []dispatch.Event, error) {
	counts := make(map[string]int)
	var events []dispatch.Event
	start := "-"
	for {
		entries, err := rdb.XRangeN(ctx, q.StreamKey(), start, "+", 5000).Result()
		if err != nil {
			return nil, nil, err
		}
		for _, e := range entries {
			ev, err := dispatch.ParseEntry(e.Values)
			if err != nil {
				return nil, nil, err
			}
			counts[ev.BrokerMessageID]++
			events = append(events, ev)
		}
		if len(entries) < 5000 {
			return counts, events, nil
		}
		start = "(" + entries[len(entries)-1].ID
	}
}

// StreamCounts is ReadStream that fails the test on an error.
func StreamCounts(tb testing.TB, rdb redis.Cmdable, q *dispatch.Queue) (map[string]int, []dispatch.Event) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	counts, events, err := ReadStream(ctx, rdb, q)
	if err != nil {
		tb.Fatalf("read dispatch stream %s: %v", q.StreamKey(), err)
	}
	return counts, events
}

// RequireExactlyOnce fails the test unless counts (of StreamCounts) holds n
// broker message ids, each once. When ids are given they must be those n.
func RequireExactlyOnce(tb testing.TB, counts map[string]int, n int, ids ...string) {
	tb.Helper()
	total, dups := 0, 0
	for _, c := range counts {
		total += c
		dups += c - 1
	}
	missing := 0
	for _, id := range ids {
		if counts[id] == 0 {
			missing++
		}
	}
	if len(counts) != n || total != n || missing != 0 {
		tb.Fatalf("stream holds %d entries of %d message ids, want %d each once: %d duplicated, %d missing",
			total, len(counts), n, dups, missing)
	}
}
