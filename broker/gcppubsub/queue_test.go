package gcppubsub

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/dispatch"
)

// queueHandler is test glue standing where the supervisor's handler does:
// it decodes each message and writes it to a real dispatch.Queue, or
// dead-letters it there when it is malformed.
type queueHandler struct {
	q        *dispatch.Queue
	sourceID string

	failures atomic.Int64 // batches that failed (transient)
	settled  atomic.Int64 // messages written or dead-lettered
}

func (h *queueHandler) Handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	results := make([]broker.Result, len(batch))
	events := make([]dispatch.Event, 0, len(batch))
	index := make([]int, 0, len(batch))
	for i, m := range batch {
		raw := dispatch.Raw{
			ProjectID: "project", SourceID: h.sourceID, Broker: "google",
			MessageID: m.ID, Body: m.Body, Headers: m.Headers,
		}
		ev, err := dispatch.Decode(raw, dispatch.DecodeOptions{})
		if dispatch.IsPermanent(err) {
			if err := h.q.DeadLetter(ctx, raw, err.Error()); err != nil {
				h.failures.Add(1)
				return nil, err
			}
			results[i] = broker.DeadLettered
			continue
		}
		if err != nil {
			h.failures.Add(1)
			return nil, err
		}
		events = append(events, ev)
		index = append(index, i)
	}
	if len(events) > 0 {
		if _, err := h.q.Enqueue(ctx, events); err != nil {
			h.failures.Add(1)
			return nil, err
		}
	}
	for _, i := range index {
		results[i] = broker.Written
	}
	h.settled.Add(int64(len(batch)))
	return results, nil
}

func (h *queueHandler) Failing(error) {}
func (h *queueHandler) Healthy()      {}

// event is a valid body of Convoy's pub/sub contract carrying seq.
func event(seq int) []byte {
	return fmt.Appendf(nil, `{"endpoint_id":"ep-1","event_type":"test.seq","data":{"seq":%d}}`, seq)
}

// streamSeqs reads the whole dispatch stream and counts each data.seq.
func streamSeqs(t *testing.T, rdb *redis.Client, q *dispatch.Queue) map[int]int {
	t.Helper()
	entries, err := rdb.XRange(context.Background(), q.StreamKey(), "-", "+").Result()
	if err != nil {
		t.Fatalf("read dispatch stream: %v", err)
	}
	seqs := make(map[int]int)
	for _, e := range entries {
		ev, err := dispatch.ParseEntry(e.Values)
		if err != nil {
			t.Fatalf("entry %s: %v", e.ID, err)
		}
		var d struct{ Seq int }
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			t.Fatalf("entry %s data %s: %v", e.ID, ev.Data, err)
		}
		seqs[d.Seq]++
	}
	return seqs
}

// privateRedis is a redis-server of the test's own, persisting every write
// (append-only file, fsync always) so that it can be killed and restarted
// without losing what it acknowledged.
type privateRedis struct {
	t    *testing.T
	addr string
	port int
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

func startPrivateRedis(t *testing.T) *privateRedis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not installed")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	r := &privateRedis{t: t, port: port, addr: "127.0.0.1:" + strconv.Itoa(port), dir: t.TempDir()}
	r.start()
	t.Cleanup(r.kill)
	return r
}

func (r *privateRedis) start() {
	r.t.Helper()
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", r.dir)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	r.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(r.cmd, r.done)
	rdb := redis.NewClient(&redis.Options{Addr: r.addr, MaxRetries: -1})
	defer rdb.Close()
	waitFor(r.t, 10*time.Second, "private redis to answer", func() bool {
		return rdb.Ping(context.Background()).Err() == nil
	})
}

// kill stops the server with SIGKILL, as a crash would, and waits for it.
func (r *privateRedis) kill() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
}

func TestRedisOutageLosesNothing(t *testing.T) {
	t.Parallel()
	const n = 400
	f := newFake(t, 0, nil)
	ids := make(map[string]bool, n)
	for i := range n {
		ids[f.publish(event(i), map[string]string{"x-test-seq": strconv.Itoa(i)})] = true
	}

	r := startPrivateRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.addr, MaxRetries: -1,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	q := dispatch.New(rdb, dispatch.Options{Prefix: testPrefix(t)})
	h := &queueHandler{q: q, sourceID: "src-outage"}

	cfg := f.config(conformanceStreams)
	cfg.Backoff = broker.Backoff{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond}
	c, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, c, h)

	waitFor(t, 30*time.Second, "the first 50 messages to be written", func() bool { return h.settled.Load() >= 50 })
	r.kill()
	failed := h.failures.Load()
	waitFor(t, 30*time.Second, "3 batches to fail while Redis is down", func() bool { return h.failures.Load() >= failed+3 })
	r.start()

	waitFor(t, 60*time.Second, "every message to be acked", func() bool { return f.unacked() == 0 })
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}

	seqs := streamSeqs(t, rdb, q)
	for i := range n {
		if seqs[i] != 1 {
			t.Errorf("message %d is %d times in the dispatch stream, want 1", i, seqs[i])
		}
	}
	if len(seqs) != n {
		t.Errorf("dispatch stream holds %d distinct messages, want %d", len(seqs), n)
	}
	// The failed batches were nacked (a zero ack deadline) and delivered
	// again, not left to expire.
	var nacks, redelivered int
	for _, m := range f.srv.Messages() {
		for _, ma := range m.Modacks {
			if ma.AckDeadline == 0 {
				nacks++
			}
		}
		if m.Deliveries > 1 {
			redelivered++
		}
		if m.Acks == 0 || !ids[m.ID] {
			t.Errorf("message %s: %d acks", m.ID, m.Acks)
		}
	}
	if nacks == 0 || redelivered == 0 {
		t.Errorf("%d nacks and %d redelivered messages, want both > 0", nacks, redelivered)
	}
	t.Logf("%d messages, %d failed batches, %d nacks, %d redelivered", n, h.failures.Load(), nacks, redelivered)
}

func TestMalformedDeadLetteredOnce(t *testing.T) {
	t.Parallel()
	const good = 60
	f := newFake(t, 0, nil)
	bad := map[string]bool{}
	publishBad := func(body string) {
		bad[f.publish([]byte(body), map[string]string{"x-test": "bad"})] = true
	}
	for i := range good {
		f.publish(event(i), nil)
		if i%20 == 0 {
			publishBad(`not json`)
			publishBad(`{"endpoint_id":"ep-1","data":{}}`) // no event_type
		}
	}

	rdb := redis.NewClient(&redis.Options{Addr: sharedRedisAddr()})
	prefix := testPrefix(t)
	t.Cleanup(func() { deleteKeys(t, rdb, prefix); _ = rdb.Close() })
	q := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	h := &queueHandler{q: q, sourceID: "src-malformed"}
	c, err := New(f.config(4), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, c, h)
	waitFor(t, 30*time.Second, "every message to be acked", func() bool { return f.unacked() == 0 })
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}

	ctx := context.Background()
	if n, err := rdb.XLen(ctx, q.DeadLetterKey()).Result(); err != nil || n != int64(len(bad)) {
		t.Errorf("dead-letter stream holds %d entries (err %v), want %d", n, err, len(bad))
	}
	seqs := streamSeqs(t, rdb, q)
	if len(seqs) != good {
		t.Errorf("dispatch stream holds %d distinct messages, want %d", len(seqs), good)
	}
	for i := range good {
		if seqs[i] != 1 {
			t.Errorf("message %d is %d times in the dispatch stream, want 1", i, seqs[i])
		}
	}
	for id := range bad {
		m := f.srv.Message(id)
		if m.Deliveries != 1 || m.Acks != 1 {
			t.Errorf("malformed message %s: delivered %d times and acked %d, want 1 and 1", id, m.Deliveries, m.Acks)
		}
	}
}

func sharedRedisAddr() string {
	if a := os.Getenv("SLUICE_TEST_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// deleteKeys removes every key of a queue with this prefix, tagged or not.
func deleteKeys(tb testing.TB, rdb *redis.Client, prefix string) {
	ctx := context.Background()
	for _, pattern := range []string{prefix + "*", "{" + prefix + "*"} {
		keys, err := rdb.Keys(ctx, pattern).Result()
		if err != nil {
			tb.Errorf("list keys %s: %v", pattern, err)
			continue
		}
		if len(keys) > 0 {
			_ = rdb.Del(ctx, keys...).Err()
		}
	}
}
