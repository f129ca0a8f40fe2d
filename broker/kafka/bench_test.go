package kafka_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/broker/kafka"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

// BenchmarkIngest measures, in one run on one kfake topic of 6 partitions
// holding benchMessages messages (sub-benchmarks: data padded to ~100 B and
// to ~1 KiB per message):
//
//   - raw_fetch_commit: a plain kafka-go group Reader, FetchMessage and a
//     CommitMessages every 100 messages;
//   - raw_enqueue: dispatch.Queue.Enqueue of the same (already decoded)
//     events in batches of 100 on a real Redis (a private redis-server, so
//     other tests on the machine do not skew it);
//   - decode: dispatch.Decode of the same messages, alone;
//   - consumer_noop: one Consumer handing batches to a Handler that does
//     nothing (the consumer's own ceiling);
//   - sluice: one Consumer with the default configuration (batches of 100,
//     one in flight) handing batches to a handler that decodes and enqueues
//     into the real dispatch Queue;
//   - sluice_inflight2: the same with two batches in flight;
//   - floor: a kafka-go Reader that commits synchronously after every
//     message (benchFloorMessages of them).
//
// Each figure is messages per second from the first message to the last
// settled one (group joins excluded). It reports the ratios of sluice to the
// slower raw rate and to the floor. One round of all of them takes several
// seconds: run it with -benchtime=3x.
func BenchmarkIngest(b *testing.B) {
	for _, pad := range []int{100, 1000} {
		b.Run(fmt.Sprintf("data=%dB", pad), func(b *testing.B) { benchIngest(b, pad) })
	}
}

func benchIngest(b *testing.B, pad int) {
	const (
		partitions         = 6
		benchMessages      = 30000
		benchFloorMessages = 5000
		batch              = 100
	)
	e := newKafka(b, nil)
	topic := e.topic(b, partitions)
	ctx := context.Background()
	data := strings.Repeat("x", pad)
	recs := make([]*kgo.Record, benchMessages)
	for i := range recs {
		recs[i] = &kgo.Record{
			Key:   fmt.Appendf(nil, "k%d", i),
			Value: fmt.Appendf(nil, `{"endpoint_id":"ep1","event_type":"bench","data":{"seq":%d,"pad":"%s"}}`, i, data),
		}
	}
	for i := 0; i < len(recs); i += 1000 {
		if err := e.produce(ctx, topic, recs[i:i+1000]); err != nil {
			b.Fatal(err)
		}
	}
	// A private Redis: the shared one carries everyone's tests.
	pr := dispatchtest.StartRedis(b, "--appendonly", "no")
	rdb := redis.NewClient(&redis.Options{Addr: pr.Addr()})
	b.Cleanup(func() { _ = rdb.Close() })
	prefix := "bench"

	var rawRead, rawEnq, decode, noop, sluice, sluice2, floor time.Duration
	var rounds int
	for b.Loop() {
		rawRead += benchRawRead(b, e, topic, benchMessages, batch)
		enq, dec := benchRawEnqueue(b, rdb, fmt.Sprintf("%s:r%d:raw", prefix, rounds), topic, recs, batch)
		rawEnq += enq
		decode += dec
		noop += benchConsumer(b, e, nil, "", topic, benchMessages, 0)
		sluice += benchConsumer(b, e, rdb, fmt.Sprintf("%s:r%d:sluice", prefix, rounds), topic, benchMessages, 0)
		sluice2 += benchConsumer(b, e, rdb, fmt.Sprintf("%s:r%d:sluice2", prefix, rounds), topic, benchMessages, 2)
		floor += benchRawRead(b, e, topic, benchFloorMessages, 1)
		rounds++
	}
	rate := func(n int, d time.Duration) float64 { return float64(n*rounds) / d.Seconds() }
	rr, re, rs, rf := rate(benchMessages, rawRead), rate(benchMessages, rawEnq), rate(benchMessages, sluice), rate(benchFloorMessages, floor)
	b.ReportMetric(rr, "raw_fetch_commit_msgs/s")
	b.ReportMetric(re, "raw_enqueue_msgs/s")
	b.ReportMetric(rate(benchMessages, decode), "decode_msgs/s")
	b.ReportMetric(rate(benchMessages, noop), "consumer_noop_msgs/s")
	b.ReportMetric(rs, "sluice_msgs/s")
	b.ReportMetric(rate(benchMessages, sluice2), "sluice_inflight2_msgs/s")
	b.ReportMetric(rf, "floor_commit_each_msgs/s")
	b.ReportMetric(rs/min(rr, re), "x_slower_raw")
	b.ReportMetric(rs/rf, "x_floor")
}

// benchRawRead reads n messages with a fresh group and commits every
// commitEvery messages, synchronously. It returns the time from the first
// message to the last commit.
func benchRawRead(b *testing.B, e *kenv, topic string, n, commitEvery int) time.Duration {
	b.Helper()
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers: e.addrs, GroupID: unique("bench"), Topic: topic,
		MaxWait: 200 * time.Millisecond, QueueCapacity: 500, ReadLagInterval: -1,
		StartOffset: kafkago.FirstOffset, HeartbeatInterval: 200 * time.Millisecond, SessionTimeout: 3 * time.Second,
	})
	defer r.Close()
	ctx := context.Background()
	pending := make([]kafkago.Message, 0, commitEvery)
	var start time.Time
	for i := range n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			start = time.Now()
		}
		pending = append(pending, m)
		if len(pending) == commitEvery || i == n-1 {
			if err := r.CommitMessages(ctx, pending...); err != nil {
				b.Fatal(err)
			}
			pending = pending[:0]
		}
	}
	return time.Since(start)
}

// benchRawEnqueue decodes the events of recs (timed apart) and enqueues
// them in batches; it returns the enqueue and the decode time.
func benchRawEnqueue(b *testing.B, rdb *redis.Client, prefix, topic string, recs []*kgo.Record, batch int) (enqueue, decode time.Duration) {
	b.Helper()
	q := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	events := make([]dispatch.Event, len(recs))
	start := time.Now()
	for i, r := range recs {
		ev, err := dispatch.Decode(dispatch.Raw{
			ProjectID: "p1", SourceID: "src", Broker: "kafka",
			MessageID: fmt.Sprintf("%s/%d/%d", topic, r.Partition, r.Offset), Body: r.Value,
			Headers: map[string]string{kafka.HeaderKey: string(r.Key)},
		}, dispatch.DecodeOptions{})
		if err != nil {
			b.Fatal(err)
		}
		events[i] = ev
	}
	decode = time.Since(start)
	ctx := context.Background()
	start = time.Now()
	for i := 0; i < len(events); i += batch {
		if _, err := q.Enqueue(ctx, events[i:min(i+batch, len(events))]); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start), decode
}

// benchConsumer runs one Consumer into the dispatch queue (or, with a nil
// rdb, into a handler that does nothing) until n messages are settled; it returns the time from the first Handle to the last write,
// then checks that every offset gets committed.
func benchConsumer(b *testing.B, e *kenv, rdb *redis.Client, prefix, topic string, n, inflight int) time.Duration {
	b.Helper()
	var h *dispatchtest.Handler
	if rdb != nil {
		h = dispatchtest.NewHandler(dispatch.New(rdb, dispatch.Options{Prefix: prefix}), "kafka", "src")
	}
	wrapped := &countingHandler{inner: h, want: int64(n), done: make(chan struct{})}
	group := unique("bench")
	cfg := config(e, topic, group)
	cfg.Batch = broker.Batch{}
	cfg.Inflight = inflight
	c, err := kafka.New(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	stop := brokertest.Start(b, c, wrapped)
	<-wrapped.done
	waitUnacked(b, e, group, topic, 30*time.Second)
	stop()
	if h != nil && h.Duplicates.Load() != 0 {
		b.Fatalf("%d duplicates in a clean run", h.Duplicates.Load())
	}
	wrapped.mu.Lock()
	defer wrapped.mu.Unlock()
	return wrapped.end.Sub(wrapped.start)
}

// countingHandler times a worker's Handle calls from the first to the one
// that completes want written messages; with a nil inner it writes nothing.
type countingHandler struct {
	inner      *dispatchtest.Handler
	want       int64
	mu         sync.Mutex
	written    int64
	start, end time.Time
	done       chan struct{}
}

func (c *countingHandler) Handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	c.mu.Lock()
	if c.start.IsZero() {
		c.start = time.Now()
	}
	c.mu.Unlock()
	var res []broker.Result
	var err error
	if c.inner == nil {
		res = make([]broker.Result, len(batch)) // no-op: the consumer alone
	} else {
		res, err = c.inner.Handle(ctx, batch)
	}
	if err != nil {
		return res, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.written += int64(len(batch)); c.written == c.want {
		c.end = time.Now()
		close(c.done)
	}
	return res, err
}

func (c *countingHandler) Failing(error) {}
func (c *countingHandler) Healthy()      {}
