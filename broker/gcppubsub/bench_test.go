package gcppubsub

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

// BenchmarkThroughput compares, at equal stream counts and on pstest, the
// client library's own Receive that acks each message at once (the
// baseline) with a Consumer that writes every message to a real
// dispatch.Queue before acking it. A third side, a Consumer whose Handler
// does nothing, tells the consumer's own cost from the queue's (metric
// noop_msgs/s). b.N is the message count of each side,
// taken in three alternating rounds so that load on the machine falls on
// both alike. pstest serves about 90 messages a second per stream, so use
// a fixed count:
//
//	go test -run '^$' -bench Throughput -benchtime 3000x ./broker/gcppubsub/
func BenchmarkThroughput(b *testing.B) {
	for _, streams := range []int{4, 16} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			const rounds = 3
			var raw, noop, sluice time.Duration
			n := max(b.N/rounds, 1)
			for range rounds {
				raw += rawReceive(b, streams, n)
				noop += consume(b, streams, n, false)
				sluice += consume(b, streams, n, true)
			}
			total := float64(n * rounds)
			b.ReportMetric(total/raw.Seconds(), "raw_msgs/s")
			b.ReportMetric(total/noop.Seconds(), "noop_msgs/s")
			b.ReportMetric(total/sluice.Seconds(), "sluice_msgs/s")
			b.ReportMetric(raw.Seconds()/sluice.Seconds(), "ratio")
		})
	}
}

// rawReceive returns how long Receive with Ack in the callback takes to
// take n messages off a fresh subscription.
func rawReceive(b *testing.B, streams, n int) time.Duration {
	f := newFake(b, 0, nil)
	for i := range n {
		f.publish(event(i), map[string]string{"x-test-seq": fmt.Sprint(i)})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	begin := time.Now()
	client, err := pubsub.NewClient(ctx, testProject,
		option.WithEndpoint(f.srv.Addr),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
		option.WithTelemetryDisabled())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	sub := client.Subscriber(testSub)
	sub.ReceiveSettings.NumGoroutines = streams
	sub.ReceiveSettings.MaxOutstandingMessages = defaultMaxOutstandingMessages
	sub.ReceiveSettings.MaxOutstandingBytes = defaultMaxOutstandingBytes
	var (
		seen    sync.Map
		unique  atomic.Int64
		done    = make(chan struct{})
		elapsed time.Duration
	)
	recvErr := make(chan error, 1)
	go func() {
		recvErr <- sub.Receive(ctx, func(_ context.Context, m *pubsub.Message) {
			m.Ack()
			if _, dup := seen.LoadOrStore(m.ID, true); !dup && unique.Add(1) == int64(n) {
				elapsed = time.Since(begin)
				close(done)
			}
		})
	}()
	select {
	case <-done:
	case err := <-recvErr:
		b.Fatalf("Receive = %v", err)
	case <-time.After(5 * time.Minute):
		b.Fatalf("raw Receive got %d of %d messages", unique.Load(), n)
	}
	cancel()
	if err := <-recvErr; err != nil {
		b.Fatalf("Receive = %v", err)
	}
	return elapsed
}

// consume returns how long a Consumer takes to settle n messages of a fresh
// subscription: written to a dispatch.Queue on the shared Redis when
// toQueue, else handed to a Handler that only counts them.
func consume(b *testing.B, streams, n int, toQueue bool) time.Duration {
	f := newFake(b, 0, nil)
	for i := range n {
		f.publish(event(i), map[string]string{"x-test-seq": fmt.Sprint(i)})
	}
	h := &countingHandler{target: int64(n), done: make(chan struct{})}
	if toQueue {
		prefix := dispatchtest.Prefix(b)
		q := dispatch.New(dispatchtest.Redis(b, prefix), dispatch.Options{Prefix: prefix})
		h.inner = dispatchtest.NewHandler(q, "google", "src-bench")
	}
	c, err := New(f.config(streams), testLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	begin := time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx, h) }()
	select {
	case <-h.done:
	case err := <-runErr:
		b.Fatalf("Run = %v", err)
	case <-time.After(5 * time.Minute):
		b.Fatalf("consumer settled %d of %d messages", h.settled.Load(), n)
	}
	elapsed := time.Since(begin)
	cancel()
	if err := <-runErr; err != nil {
		b.Fatalf("Run = %v", err)
	}
	if got := h.settled.Load(); got != int64(n) {
		b.Fatalf("settled %d messages, want %d (redelivered?)", got, n)
	}
	return elapsed
}

// countingHandler closes done once target messages are settled; with a nil
// inner it writes nothing.
type countingHandler struct {
	inner   *dispatchtest.Handler
	target  int64
	settled atomic.Int64
	once    sync.Once
	done    chan struct{}
}

func (h *countingHandler) Handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	var (
		res []broker.Result
		err error
	)
	if h.inner == nil {
		res = make([]broker.Result, len(batch))
	} else {
		res, err = h.inner.Handle(ctx, batch)
	}
	if err == nil && h.settled.Add(int64(len(batch))) >= h.target {
		h.once.Do(func() { close(h.done) })
	}
	return res, err
}

func (h *countingHandler) Failing(error) {}
func (h *countingHandler) Healthy()      {}
