package gcppubsub

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

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

func TestRedisOutageLosesNothing(t *testing.T) {
	t.Parallel()
	const n = 400
	f := newFake(t, 0, nil)
	ids := make(map[string]bool, n)
	for i := range n {
		ids[f.publish(event(i), map[string]string{"x-test-seq": strconv.Itoa(i)})] = true
	}

	r := dispatchtest.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	q := dispatch.New(rdb, dispatch.Options{Prefix: dispatchtest.Prefix(t)})
	h := dispatchtest.NewHandler(q, "google", "src-outage")

	cfg := f.config(conformanceStreams)
	cfg.Backoff = broker.Backoff{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond}
	c, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	stop := brokertest.Start(t, c, h)

	dispatchtest.WaitFor(t, 30*time.Second, "the first 50 messages to be written", func() bool { return h.Written.Load()+h.Duplicates.Load()+h.Dead.Load() >= 50 })
	r.Stop()
	failed := h.Errors.Load()
	dispatchtest.WaitFor(t, 30*time.Second, "3 batches to fail while Redis is down", func() bool { return h.Errors.Load() >= failed+3 })
	r.Start()

	dispatchtest.WaitFor(t, 60*time.Second, "every message to be acked", func() bool { return f.unacked() == 0 })
	stop()

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
	t.Logf("%d messages, %d failed batches, %d nacks, %d redelivered", n, h.Errors.Load(), nacks, redelivered)
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

	prefix := dispatchtest.Prefix(t)
	rdb := dispatchtest.Redis(t, prefix)
	q := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	h := dispatchtest.NewHandler(q, "google", "src-malformed")
	c, err := New(f.config(4), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	stop := brokertest.Start(t, c, h)
	dispatchtest.WaitFor(t, 30*time.Second, "every message to be acked", func() bool { return f.unacked() == 0 })
	stop()

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
