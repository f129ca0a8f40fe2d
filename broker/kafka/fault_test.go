package kafka_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/broker/kafka"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

// waitStream waits until the dispatch stream of q holds want distinct
// messages and fails unless it holds each of them exactly once.
func waitStream(t testing.TB, rdb *redis.Client, q *dispatch.Queue, want int, timeout time.Duration) map[string]int {
	t.Helper()
	var ids map[string]int
	eventually(t, timeout, fmt.Sprintf("%d messages in the stream", want), func() (bool, string) {
		var err error
		ids, _, err = dispatchtest.ReadStream(context.Background(), rdb, q)
		if err != nil {
			return false, err.Error()
		}
		return len(ids) >= want, fmt.Sprintf("%d distinct", len(ids))
	})
	dispatchtest.RequireExactlyOnce(t, ids, want)
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
	port := dispatchtest.FreePort(t)
	opts := []kfake.Opt{kfake.Ports(port), kfake.DataDir(t.TempDir())}
	e := newKafka(t, opts)
	topic := e.topic(t, 3)
	group := unique("g")
	prefix := dispatchtest.Prefix(t)
	rdb := dispatchtest.Redis(t, prefix)
	q := dispatch.New(rdb, dispatch.Options{Prefix: prefix})

	g := newGate()
	g.shut()
	inHand := make(chan struct{}, 1)
	h := dispatchtest.NewHandler(q, "kafka", "src")
	h.Before = func([]broker.Message) error {
		select {
		case inHand <- struct{}{}:
		default:
		}
		g.wait()
		return nil
	}
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
		brokertest.Start(t, c, h)
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
	waitStream(t, rdb, q, 2*wave, 60*time.Second)
	waitUnacked(t, e, group, topic, 60*time.Second)
	t.Logf("%d batches, %d redelivered messages absorbed by dedupe", h.Batches.Load(), h.Duplicates.Load())
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
	pr := dispatchtest.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: pr.Addr(), MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	q := dispatch.New(rdb, dispatch.Options{Prefix: dispatchtest.Prefix(t)})

	const n = 3000
	if err := e.produce(context.Background(), topic, records(n)); err != nil {
		t.Fatal(err)
	}
	g := newGate()
	var handled atomic.Int64
	paused := make(chan struct{})
	var pauseOnce sync.Once
	h := dispatchtest.NewHandler(q, "kafka", "src")
	h.Before = func(b []broker.Message) error {
		// After a few batches, stop the world so the test can kill Redis
		// mid-stream.
		if handled.Add(1) == 5 {
			g.shut()
			pauseOnce.Do(func() { close(paused) })
		}
		g.wait()
		return nil
	}
	cfg := config(e, topic, group)
	cfg.Batch = broker.Batch{Size: 50}
	cfg.Inflight = 2 // the harder case: a batch can settle beside a failing one
	for range 2 {
		c, err := kafka.New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		brokertest.Start(t, c, h)
	}
	<-paused
	pr.Stop()
	g.release()

	// Redis is down: Handle fails and is retried. Watch the commits while
	// it fails.
	failuresAtKill := h.Errors.Load()
	var maxCommitted map[int32]int64
	eventually(t, 30*time.Second, "Handle to fail 10 times with Redis down", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := e.committed(ctx, group, topic)
		if err == nil {
			maxCommitted = c
		}
		return h.Errors.Load()-failuresAtKill >= 10, fmt.Sprint(h.Errors.Load())
	})
	if h.LastFailure() == nil {
		t.Error("the consumer did not report the outage through Failing")
	}

	// Hold every Handle, bring Redis back and compare the commits with
	// the stream as it was during the outage.
	g.shut()
	pr.Start()
	ctx := context.Background()
	ids, _, err := dispatchtest.ReadStream(ctx, rdb, q)
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
	waitStream(t, rdb, q, n, 60*time.Second)
	waitUnacked(t, e, group, topic, 30*time.Second)
	if h.LastFailure() != nil {
		eventually(t, 10*time.Second, "the consumer to report healthy", func() (bool, string) {
			if err := h.LastFailure(); err != nil {
				return false, err.Error()
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
	prefix := dispatchtest.Prefix(t)
	rdb := dispatchtest.Redis(t, prefix)
	q := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	h := dispatchtest.NewHandler(q, "kafka", "src")
	cfg := config(e, topic, group)
	cfg.Batch = broker.Batch{Size: 20}
	cfg.Inflight = 2
	start := func() func() {
		c, err := kafka.New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		return brokertest.Start(t, c, h)
	}
	stopA := start()
	stopB := start()
	var stopC func()

	const chunks, per = 30, 100
	ctx := context.Background()
	for i := range chunks {
		if err := e.produce(ctx, topic, records(per)); err != nil {
			t.Fatal(err)
		}
		switch i {
		case 10:
			stopB() // leaves the group mid-stream
		case 15:
			stopC = start() // joins mid-stream
		case 22:
			_ = start() // and one more
		case 25:
			stopA()
		}
		// Keep about two chunks in flight.
		eventually(t, 30*time.Second, "the stream to follow", func() (bool, string) {
			n, err := rdb.XLen(ctx, q.StreamKey()).Result()
			return err == nil && n >= int64((i-1)*per), fmt.Sprint(n, err)
		})
	}
	waitStream(t, rdb, q, chunks*per, 60*time.Second)
	waitUnacked(t, e, group, topic, 30*time.Second)
	stopC()
	t.Logf("%d batches, %d redelivered messages absorbed by dedupe", h.Batches.Load(), h.Duplicates.Load())
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
	prefix := dispatchtest.Prefix(t)
	rdb := dispatchtest.Redis(t, prefix)
	q := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	const n = 2000
	if err := e.produce(context.Background(), topic, records(n)); err != nil {
		t.Fatal(err)
	}
	poison := topic + "/0/300"
	var broken atomic.Bool
	broken.Store(true)
	h := dispatchtest.NewHandler(q, "kafka", "src")
	h.Before = func(batch []broker.Message) error {
		for _, m := range batch {
			if m.ID == poison && broken.Load() {
				return fmt.Errorf("write of %s failed", poison)
			}
		}
		return nil
	}
	cfg := config(e, topic, group)
	cfg.Batch = broker.Batch{Size: 50}
	cfg.Inflight = 2 // the harder case: a batch can settle beside a failing one
	c, err := kafka.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	brokertest.Start(t, c, h)
	eventually(t, 30*time.Second, "the poisoned batch to fail 5 times", func() (bool, string) {
		committed, err := e.committed(context.Background(), group, topic)
		if err != nil {
			return false, err.Error()
		}
		if committed[0] > 300 {
			t.Fatalf("partition 0 committed at %d, past the failing offset 300", committed[0])
		}
		return h.Errors.Load() >= 5, fmt.Sprintf("failures %d, committed %v", h.Errors.Load(), committed)
	})
	ids, _, err := dispatchtest.ReadStream(context.Background(), rdb, q)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ids[poison]; ok {
		t.Fatal("the failing message is in the stream")
	}
	broken.Store(false)
	waitStream(t, rdb, q, n, 30*time.Second)
	waitUnacked(t, e, group, topic, 30*time.Second)
}
