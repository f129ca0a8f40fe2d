package kafka_test

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/kafka"
	"github.com/sluice-io/sluice/dispatch"
)

// queueHandler is the test glue between a consumer and the real dispatch
// queue: decode, then one idempotent Enqueue per batch (what the supervisor's
// handler does). before, when set, runs first and may block.
type queueHandler struct {
	q        *dispatch.Queue
	sourceID string
	before   func(batch []broker.Message)
	fail     func(batch []broker.Message) error // a transient failure before the write

	batches    atomic.Int64
	failures   atomic.Int64
	duplicates atomic.Int64
	failing    atomic.Pointer[error]
}

func (h *queueHandler) Handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	h.batches.Add(1)
	if h.before != nil {
		h.before(batch)
	}
	if h.fail != nil {
		if err := h.fail(batch); err != nil {
			h.failures.Add(1)
			return nil, err
		}
	}
	results := make([]broker.Result, len(batch))
	events := make([]dispatch.Event, 0, len(batch))
	index := make([]int, 0, len(batch))
	for i, m := range batch {
		ev, err := dispatch.Decode(dispatch.Raw{
			ProjectID: "p1", SourceID: h.sourceID, Broker: "kafka",
			MessageID: m.ID, Body: m.Body, Headers: m.Headers,
		}, dispatch.DecodeOptions{})
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", m.ID, err) // every test message is valid
		}
		events = append(events, ev)
		index = append(index, i)
	}
	outs, err := h.q.Enqueue(ctx, events)
	if err != nil {
		h.failures.Add(1)
		return nil, err
	}
	for j, o := range outs {
		results[index[j]] = broker.Written
		if o == dispatch.Duplicate {
			h.duplicates.Add(1)
		}
	}
	return results, nil
}

func (h *queueHandler) Failing(err error) { h.failing.Store(&err) }
func (h *queueHandler) Healthy()          { h.failing.Store(nil) }

// redisKeys is a unique key prefix on a Redis whose keys are removed when the
// test ends.
func redisKeys(t testing.TB, rdb *redis.Client) string {
	t.Helper()
	prefix := unique("test:kafka:" + regexp.MustCompile(`[^A-Za-z0-9_]+`).ReplaceAllString(t.Name(), "_"))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, pattern := range []string{prefix + ":*", "{" + prefix + ":*"} {
			iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
			for iter.Next(ctx) {
				rdb.Unlink(ctx, iter.Val())
			}
		}
	})
	return prefix
}

func sharedRedis(t testing.TB) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("shared redis: %v", err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// privateRedis is a redis-server of the test's own that it may kill. It keeps
// its data across restarts (append-only file, fsync on every write).
type privateRedis struct {
	t    testing.TB
	port int
	dir  string // empty: nothing persisted
	cmd  *exec.Cmd
}

func startPrivateRedis(t testing.TB) *privateRedis {
	t.Helper()
	return startRedis(t, t.TempDir())
}

// startRedis starts a redis-server persisting to dir, or nothing when dir is
// empty.
func startRedis(t testing.TB, dir string) *privateRedis {
	t.Helper()
	r := &privateRedis{t: t, port: freePort(t), dir: dir}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *privateRedis) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

func (r *privateRedis) start() {
	r.t.Helper()
	args := []string{"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", ""}
	if r.dir != "" {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always", "--dir", r.dir)
	} else {
		args = append(args, "--appendonly", "no")
	}
	r.cmd = exec.Command("redis-server", args...)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1})
	defer rdb.Close()
	eventually(r.t, 10*time.Second, "private redis to answer", func() (bool, string) {
		err := rdb.Ping(context.Background()).Err()
		return err == nil, fmt.Sprint(err)
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

// streamIDs counts the entries of the dispatch stream by broker message id.
func streamIDs(ctx context.Context, rdb *redis.Client, key string) (map[string]int, error) {
	out := make(map[string]int)
	start := "-"
	for {
		entries, err := rdb.XRangeN(ctx, key, start, "+", 5000).Result()
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			id, _ := e.Values["broker_message_id"].(string)
			out[id]++
		}
		if len(entries) < 5000 {
			return out, nil
		}
		start = "(" + entries[len(entries)-1].ID
	}
}

// waitStream waits until the stream holds exactly want distinct messages,
// each once, and fails on any duplicate entry.
func waitStream(t testing.TB, rdb *redis.Client, key string, want int, timeout time.Duration) map[string]int {
	t.Helper()
	var ids map[string]int
	eventually(t, timeout, fmt.Sprintf("%d messages in the stream", want), func() (bool, string) {
		var err error
		ids, err = streamIDs(context.Background(), rdb, key)
		if err != nil {
			return false, err.Error()
		}
		return len(ids) >= want, fmt.Sprintf("%d distinct", len(ids))
	})
	if len(ids) != want {
		t.Fatalf("stream holds %d distinct messages, want %d", len(ids), want)
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("message %s is %d times in the stream", id, n)
		}
	}
	return ids
}

// prefixes turns stream ids into the contiguous written prefix of every
// partition: the first offset not in the stream.
func prefixes(ids map[string]int, topic string) map[int32]int64 {
	seen := make(map[int32]map[int64]bool)
	for id := range ids {
		rest, ok := strings.CutPrefix(id, topic+"/")
		if !ok {
			continue
		}
		ps, os, _ := strings.Cut(rest, "/")
		p, _ := strconv.Atoi(ps)
		o, _ := strconv.ParseInt(os, 10, 64)
		if seen[int32(p)] == nil {
			seen[int32(p)] = make(map[int64]bool)
		}
		seen[int32(p)][o] = true
	}
	out := make(map[int32]int64)
	for p, offs := range seen {
		var n int64
		for offs[n] {
			n++
		}
		out[p] = n
	}
	return out
}

func waitUnacked(t testing.TB, e *kenv, group, topic string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "every offset committed", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n, err := e.unacked(ctx, group, topic)
		return err == nil && n == 0, fmt.Sprintf("unacked %d, err %v", n, err)
	})
}

// gate blocks Handle calls while closed.
type gate struct {
	mu     sync.Mutex
	open   chan struct{}
	closed bool
}

func newGate() *gate { g := &gate{open: make(chan struct{})}; close(g.open); return g }

func (g *gate) shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		g.open = make(chan struct{})
		g.closed = true
	}
}

func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		close(g.open)
		g.closed = false
	}
}

func (g *gate) wait() {
	g.mu.Lock()
	ch := g.open
	g.mu.Unlock()
	<-ch
}

// TestBrokerRestart: the broker stops while a batch is in hand and comes back
// on the same port with its state; every message lands exactly once and every
// offset is committed in the end.
func TestBrokerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test; skipped with -short")
	}
	t.Parallel()
	port := freePort(t)
	opts := []kfake.Opt{kfake.Ports(port), kfake.DataDir(t.TempDir())}
	e := newKafka(t, opts)
	topic := e.topic(t, 3)
	group := unique("g")
	rdb := sharedRedis(t)
	q := dispatch.New(rdb, dispatch.Options{Prefix: redisKeys(t, rdb)})

	g := newGate()
	g.shut()
	inHand := make(chan struct{}, 1)
	h := &queueHandler{q: q, sourceID: "src", before: func([]broker.Message) {
		select {
		case inHand <- struct{}{}:
		default:
		}
		g.wait()
	}}
	const wave = 1500
	if err := e.produce(context.Background(), topic, records(wave)); err != nil {
		t.Fatal(err)
	}
	var workers []*kafka.Consumer
	for range 2 {
		c, err := kafka.New(config(e, topic, group), nil)
		if err != nil {
			t.Fatal(err)
		}
		workers = append(workers, c)
		run(t, c, h)
	}
	// The first batch is held; stop the broker, then let the batch be
	// written: its commit must wait for the broker to come back.
	<-inHand
	e.cluster.Close()
	g.release()
	restarted, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(500 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatalf("restart kfake on port %d: %v", port, err)
	}
	e.cluster = restarted
	if err := e.produce(context.Background(), topic, records(wave)); err != nil {
		t.Fatal(err)
	}
	waitStream(t, rdb, q.StreamKey(), 2*wave, 60*time.Second)
	waitUnacked(t, e, group, topic, 60*time.Second)
	t.Logf("%d batches, %d redelivered messages absorbed by dedupe", h.batches.Load(), h.duplicates.Load())
}

// TestRedisOutage: Redis dies mid-stream. While it is down no offset may be
// committed past a message that is not in the stream; after it comes back the
// stream is complete, each message once.
func TestRedisOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test; skipped with -short")
	}
	t.Parallel()
	e := newKafka(t, nil)
	topic := e.topic(t, 3)
	group := unique("g")
	pr := startPrivateRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: pr.addr(), MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	q := dispatch.New(rdb, dispatch.Options{Prefix: unique("test:kafka:outage")})

	const n = 3000
	if err := e.produce(context.Background(), topic, records(n)); err != nil {
		t.Fatal(err)
	}
	g := newGate()
	var handled atomic.Int64
	paused := make(chan struct{})
	var pauseOnce sync.Once
	h := &queueHandler{q: q, sourceID: "src", before: func(b []broker.Message) {
		// After a few batches, stop the world so the test can kill Redis
		// mid-stream.
		if handled.Add(1) == 5 {
			g.shut()
			pauseOnce.Do(func() { close(paused) })
		}
		g.wait()
	}}
	cfg := config(e, topic, group)
	cfg.Batch = broker.Batch{Size: 50}
	cfg.Inflight = 2 // the harder case: a batch can settle beside a failing one
	for range 2 {
		c, err := kafka.New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		run(t, c, h)
	}
	<-paused
	pr.stop()
	g.release()

	// Redis is down: Handle fails and is retried. Watch the commits while
	// it fails.
	failuresAtKill := h.failures.Load()
	var maxCommitted map[int32]int64
	eventually(t, 30*time.Second, "Handle to fail 10 times with Redis down", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := e.committed(ctx, group, topic)
		if err == nil {
			maxCommitted = c
		}
		return h.failures.Load()-failuresAtKill >= 10, fmt.Sprint(h.failures.Load())
	})
	if h.failing.Load() == nil {
		t.Error("the consumer did not report the outage through Failing")
	}

	// Hold every Handle, bring Redis back and compare the commits with
	// the stream as it was during the outage.
	g.shut()
	pr.start()
	ctx := context.Background()
	ids, err := streamIDs(ctx, rdb, q.StreamKey())
	if err != nil {
		t.Fatal(err)
	}
	written := prefixes(ids, topic)
	committed, err := e.committed(ctx, group, topic)
	if err != nil {
		t.Fatal(err)
	}
	for p, off := range maxCommitted {
		committed[p] = max(committed[p], off)
	}
	if len(ids) == 0 || len(ids) == n {
		t.Fatalf("the outage did not happen mid-stream: %d of %d messages written before it", len(ids), n)
	}
	for p, off := range committed {
		if off > written[p] {
			t.Errorf("partition %d: committed offset %d passes the first unwritten offset %d", p, off, written[p])
		}
	}
	t.Logf("during the outage: %d messages in the stream, commits %v, written prefixes %v", len(ids), committed, written)

	g.release()
	waitStream(t, rdb, q.StreamKey(), n, 60*time.Second)
	waitUnacked(t, e, group, topic, 30*time.Second)
	if h.failing.Load() != nil {
		eventually(t, 10*time.Second, "the consumer to report healthy", func() (bool, string) {
			f := h.failing.Load()
			if f != nil {
				return false, (*f).Error()
			}
			return true, ""
		})
	}
}

// TestRebalance: workers leave and join while messages flow; every message
// lands exactly once and every offset is committed.
func TestRebalance(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test; skipped with -short")
	}
	t.Parallel()
	e := newKafka(t, nil)
	topic := e.topic(t, 6)
	group := unique("g")
	rdb := sharedRedis(t)
	q := dispatch.New(rdb, dispatch.Options{Prefix: redisKeys(t, rdb)})
	h := &queueHandler{q: q, sourceID: "src"}
	cfg := config(e, topic, group)
	cfg.Batch = broker.Batch{Size: 20}
	cfg.Inflight = 2
	start := func() func() error {
		c, err := kafka.New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		return run(t, c, h)
	}
	stopA := start()
	stopB := start()
	var stopC func() error

	const chunks, per = 30, 100
	ctx := context.Background()
	for i := range chunks {
		if err := e.produce(ctx, topic, records(per)); err != nil {
			t.Fatal(err)
		}
		switch i {
		case 10:
			if err := stopB(); err != nil { // leaves the group mid-stream
				t.Fatal(err)
			}
		case 15:
			stopC = start() // joins mid-stream
		case 22:
			_ = start() // and one more
		case 25:
			if err := stopA(); err != nil {
				t.Fatal(err)
			}
		}
		// Keep about two chunks in flight.
		eventually(t, 30*time.Second, "the stream to follow", func() (bool, string) {
			n, err := rdb.XLen(ctx, q.StreamKey()).Result()
			return err == nil && n >= int64((i-1)*per), fmt.Sprint(n, err)
		})
	}
	waitStream(t, rdb, q.StreamKey(), chunks*per, 60*time.Second)
	waitUnacked(t, e, group, topic, 30*time.Second)
	if err := stopC(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d batches, %d redelivered messages absorbed by dedupe", h.batches.Load(), h.duplicates.Load())
}

// TestFailingBatchHoldsCommits: one batch keeps failing while the batch in
// flight beside it may be written; no commit of its partition may pass it,
// and once it goes through everything is committed, each message written
// once.
func TestFailingBatchHoldsCommits(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test; skipped with -short")
	}
	t.Parallel()
	e := newKafka(t, nil)
	topic := e.topic(t, 2)
	group := unique("g")
	rdb := sharedRedis(t)
	q := dispatch.New(rdb, dispatch.Options{Prefix: redisKeys(t, rdb)})
	const n = 2000
	if err := e.produce(context.Background(), topic, records(n)); err != nil {
		t.Fatal(err)
	}
	poison := topic + "/0/300"
	var broken atomic.Bool
	broken.Store(true)
	h := &queueHandler{q: q, sourceID: "src", fail: func(batch []broker.Message) error {
		for _, m := range batch {
			if m.ID == poison && broken.Load() {
				return fmt.Errorf("write of %s failed", poison)
			}
		}
		return nil
	}}
	cfg := config(e, topic, group)
	cfg.Batch = broker.Batch{Size: 50}
	cfg.Inflight = 2 // the harder case: a batch can settle beside a failing one
	c, err := kafka.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c, h)
	eventually(t, 30*time.Second, "the poisoned batch to fail 5 times", func() (bool, string) {
		committed, err := e.committed(context.Background(), group, topic)
		if err != nil {
			return false, err.Error()
		}
		if committed[0] > 300 {
			t.Fatalf("partition 0 committed at %d, past the failing offset 300", committed[0])
		}
		return h.failures.Load() >= 5, fmt.Sprintf("failures %d, committed %v", h.failures.Load(), committed)
	})
	ids, err := streamIDs(context.Background(), rdb, q.StreamKey())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ids[poison]; ok {
		t.Fatal("the failing message is in the stream")
	}
	broken.Store(false)
	waitStream(t, rdb, q.StreamKey(), n, 30*time.Second)
	waitUnacked(t, e, group, topic, 30*time.Second)
}
