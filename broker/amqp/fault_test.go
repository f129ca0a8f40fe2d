package amqp

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

// Fault tests publish at a steady pace so that the fault lands mid-stream,
// then count the dispatch stream: every message exactly once.
const (
	faultMessages = 16000
	faultRate     = 2000 // messages per second: the stream lasts 8s
)

// pacedPublisher publishes ids to queue at faultRate in the background.
type pacedPublisher struct {
	wg  sync.WaitGroup
	err error
}

func publishPaced(a *admin, queue string, ids []string) *pacedPublisher {
	p := &pacedPublisher{}
	p.wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		const chunk = 100
		lim := rate.NewLimiter(rate.Limit(faultRate), chunk)
		for i := 0; i < len(ids); i += chunk {
			if p.err = lim.WaitN(ctx, chunk); p.err != nil {
				return
			}
			pubs := make([]amqp091.Publishing, 0, chunk)
			for j := i; j < min(i+chunk, len(ids)); j++ {
				pubs = append(pubs, event(ids[j], j))
			}
			if p.err = a.publish(ctx, "", queue, pubs); p.err != nil {
				return
			}
		}
	})
	return p
}

func (p *pacedPublisher) wait(t *testing.T) {
	t.Helper()
	p.wg.Wait()
	if p.err != nil {
		t.Fatalf("publish: %v", p.err)
	}
}

func messageIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return ids
}

// TestConnectionsClosedMidStream closes the workers' connections on the
// broker (rabbitmqctl close_connection, only this test's connections) while
// messages flow into a real dispatch queue. The workers reconnect by
// themselves; the unacked deliveries come back and dedupe keeps the stream
// exactly-once.
func TestConnectionsClosedMidStream(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: rabbitmqctl or a fault lasting seconds")
	}
	t.Parallel()
	a := newAdmin(t)
	name := uniqueName(t)
	a.queue(name, "")
	rdb := dispatchtest.Redis(t, name)
	q := dispatch.New(rdb, dispatch.Options{Prefix: name})
	ids := messageIDs(name, faultMessages)
	h := dispatchtest.NewHandler(q, "amqp", "src")

	cfg := testConfig(name)
	cfg.ConnectionName = name
	const workers = 2
	var stops []func()
	for range workers {
		stops = append(stops, brokertest.Start(t, newConsumer(t, cfg), h))
	}
	dispatchtest.WaitFor(t, 10*time.Second, "both workers consuming", func() bool { return h.HealthyReports.Load() >= workers })
	conns := connectionsNamed(t, name)
	if len(conns) != workers {
		t.Fatalf("found %d connections named %s, want %d", len(conns), name, workers)
	}

	pub := publishPaced(a, name, ids)
	dispatchtest.WaitFor(t, 30*time.Second, "a first part of the stream", func() bool { return h.Written.Load() >= faultMessages/8 })
	var wg sync.WaitGroup
	errs := make([]error, len(conns))
	for i, c := range conns {
		wg.Go(func() { _, errs[i] = rabbitmqctlErr("close_connection", c, "sluice fault test") })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := h.Written.Load(); got >= int64(len(ids)) {
		t.Fatalf("all %d messages were written before the connections closed; publish more or slower", got)
	}
	dispatchtest.WaitFor(t, 20*time.Second, "the workers to notice the closed connections", func() bool { return h.FailingReports.Load() >= workers })
	dispatchtest.WaitFor(t, 20*time.Second, "the workers to consume again", func() bool { return h.HealthyReports.Load() >= 2*workers })

	pub.wait(t)
	waitStream(t, rdb, q, len(ids), time.Minute)
	for _, stop := range stops {
		stop()
	}
	counts, _ := dispatchtest.StreamCounts(t, rdb, q)
	dispatchtest.RequireExactlyOnce(t, counts, len(ids), ids...)
	if n, err := a.ready(context.Background(), name); err != nil || n != 0 {
		t.Errorf("queue holds %d messages (err %v), want 0", n, err)
	}
	t.Logf("%d messages exactly once; the dedupe absorbed %d redeliveries", len(ids), h.Duplicates.Load())
}

// TestRedisStoppedMidStream shuts a private Redis down for 5 seconds while
// messages flow: the workers keep the batch in hand un-acked, retry it with
// backoff, and once Redis is back the stream holds every message once.
func TestRedisStoppedMidStream(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: rabbitmqctl or a fault lasting seconds")
	}
	t.Parallel()
	a := newAdmin(t)
	name := uniqueName(t)
	a.queue(name, "")
	r := dispatchtest.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	q := dispatch.New(rdb, dispatch.Options{Prefix: name})
	ids := messageIDs(name, faultMessages)
	h := dispatchtest.NewHandler(q, "amqp", "src")

	cfg := testConfig(name)
	cfg.Reconnect = broker.Backoff{Min: 50 * time.Millisecond, Max: 500 * time.Millisecond}
	const workers = 2
	var stops []func()
	for range workers {
		stops = append(stops, brokertest.Start(t, newConsumer(t, cfg), h))
	}
	dispatchtest.WaitFor(t, 10*time.Second, "both workers consuming", func() bool { return h.HealthyReports.Load() >= workers })

	pub := publishPaced(a, name, ids)
	dispatchtest.WaitFor(t, 30*time.Second, "a first part of the stream", func() bool { return h.Written.Load() >= faultMessages/8 })
	r.Stop()
	dispatchtest.WaitFor(t, 10*time.Second, "the workers to report the failing writes", func() bool { return h.FailingReports.Load() >= workers })
	stoppedAt := h.Written.Load()
	time.Sleep(5 * time.Second) // the outage itself
	if got := h.Written.Load(); got != stoppedAt {
		t.Fatalf("%d events written while Redis was down", got-stoppedAt)
	}
	r.Start()

	pub.wait(t)
	waitStream(t, rdb, q, len(ids), time.Minute)
	for _, stop := range stops {
		stop()
	}
	if stoppedAt >= int64(len(ids)) {
		t.Fatalf("all messages were written before Redis stopped; publish more or slower")
	}
	counts, _ := dispatchtest.StreamCounts(t, rdb, q)
	dispatchtest.RequireExactlyOnce(t, counts, len(ids), ids...)
	if n, err := a.ready(context.Background(), name); err != nil || n != 0 {
		t.Errorf("queue holds %d messages (err %v), want 0", n, err)
	}
	t.Logf("%d messages exactly once across a 5s Redis outage at %d written; %d handler failures reported; %d redeliveries or retried writes absorbed by the dedupe",
		len(ids), stoppedAt, h.FailingReports.Load(), h.Duplicates.Load())
}
