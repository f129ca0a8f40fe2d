package amqp

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

// BenchmarkConsume drains a backlog of messages from a RabbitMQ queue into
// Redis three ways, in one run, and reports each rate and their ratios:
//
//	raw_msgs/s    raw amqp091-go: prefetch 500, each batch of what has
//	              arrived (≤ 500) → one pipelined XADD per message → one
//	              multi-ack (the baseline)
//	raw_batched_msgs/s  the same with sluice's batching: prefetch 200,
//	              batches of up to 100 or 50ms (isolates sluice's own cost:
//	              decoding, the dedupe script, the Handler contract)
//	floor_msgs/s  raw amqp091-go: prefetch 1, XADD and ack per message (a
//	              consumer that sets no QoS)
//	sluice_msgs/s this Consumer (defaults: batch 100/50ms, prefetch 200) →
//	              dispatch.Decode → dispatch.Queue.Enqueue (dedupe + XADD in
//	              one Lua script) → multi-ack
//
// The phases rotate their order every iteration; run a few on a shared
// machine (BENCH_BATCH=n sets the Consumer's batch size, default 100):
//
//	go test -run '^$' -bench BenchmarkConsume -benchtime 3x ./broker/amqp
func BenchmarkConsume(b *testing.B) {
	const n = 10000
	a := newAdmin(b)
	name := uniqueName(b)
	rdb := dispatchtest.Redis(b, name)
	url := testConfig("").URL().String()

	var raw, rawBatched, floor, sluice time.Duration
	for i := 0; b.Loop(); i++ {
		prefix := fmt.Sprintf("%s:%d", name, i)
		phases := []func(){
			func() {
				raw += drain(b, a, prefix+".raw", n, func(queue string) error {
					return rawConsume(url, queue, rdb, prefix+":raw", n, 500, 500, 0)
				})
			},
			func() {
				rawBatched += drain(b, a, prefix+".rawbatched", n, func(queue string) error {
					return rawConsume(url, queue, rdb, prefix+":rawbatched", n, 200, 100, 50*time.Millisecond)
				})
			},
			func() {
				floor += drain(b, a, prefix+".floor", n, func(queue string) error {
					return rawConsume(url, queue, rdb, prefix+":floor", n, 1, 1, 0)
				})
			},
			func() {
				sluice += drain(b, a, prefix+".sluice", n, func(queue string) error {
					return sluiceConsume(queue, rdb, prefix, n)
				})
			},
		}
		// Rotate the order so that no phase always runs first or last on
		// a machine whose load varies.
		for j := range phases {
			phases[(i+j)%len(phases)]()
		}
	}
	rate := func(d time.Duration) float64 { return float64(n*b.N) / d.Seconds() }
	b.ReportMetric(rate(raw), "raw_msgs/s")
	b.ReportMetric(rate(rawBatched), "raw_batched_msgs/s")
	b.ReportMetric(rate(floor), "floor_msgs/s")
	b.ReportMetric(rate(sluice), "sluice_msgs/s")
	b.ReportMetric(rate(sluice)/rate(raw), "sluice/raw")
	b.ReportMetric(rate(sluice)/rate(rawBatched), "sluice/raw_batched")
	b.ReportMetric(rate(sluice)/rate(floor), "sluice/floor")
}

// sluiceConsume runs a Consumer with default settings into a real dispatch
// queue until it has written all n messages.
func sluiceConsume(queue string, rdb *redis.Client, prefix string, n int) error {
	q := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	h := dispatchtest.NewHandler(q, "amqp", "src")
	cfg := testConfig(queue)
	if v, _ := strconv.Atoi(os.Getenv("BENCH_BATCH")); v > 0 {
		cfg.Batch.Size = v
	}
	c, err := New(cfg, nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	deadline := time.After(5 * time.Minute)
wait:
	for h.Written.Load() < int64(n) {
		select {
		case <-h.Changed():
		case err := <-done:
			return fmt.Errorf("Run returned early: %v", err)
		case <-deadline:
			break wait
		}
	}
	cancel()
	if err := <-done; err != nil {
		return err
	}
	if got := h.Written.Load(); got != int64(n) {
		return fmt.Errorf("sluice wrote %d of %d", got, n)
	}
	return nil
}

// drain publishes n messages to a fresh queue with the timer stopped, then
// times consume, which must take all n of them into Redis.
func drain(b *testing.B, a *admin, queue string, n int, consume func(queue string) error) time.Duration {
	b.Helper()
	b.StopTimer()
	a.queue(queue, "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := 0; i < n; i += 1000 {
		pubs := make([]amqp091.Publishing, 0, 1000)
		for j := i; j < min(i+1000, n); j++ {
			pubs = append(pubs, event(fmt.Sprintf("%s-%d", queue, j), j))
		}
		if err := a.publish(ctx, "", queue, pubs); err != nil {
			b.Fatalf("publish: %v", err)
		}
	}
	b.StartTimer()
	start := time.Now()
	if err := consume(queue); err != nil {
		b.Fatalf("consume %s: %v", queue, err)
	}
	return time.Since(start)
}

// rawConsume is the raw client pipeline: consume with prefetch, XADD a
// batch in one pipeline, ack it with one multi-ack. With wait 0 a batch is
// what has arrived (up to prefetch); otherwise up to size deliveries or
// what arrived within wait.
func rawConsume(url, queue string, rdb *redis.Client, stream string, n, prefetch, size int, wait time.Duration) error {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return err
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	ctx := context.Background()
	batch := make([]amqp091.Delivery, 0, size)
	for got := 0; got < n; {
		batch = append(batch[:0], <-deliveries)
		var timeout <-chan time.Time
		if wait > 0 {
			timeout = time.After(wait)
		}
	more:
		for len(batch) < size {
			if wait > 0 {
				select {
				case d := <-deliveries:
					batch = append(batch, d)
				case <-timeout:
					break more
				}
				continue
			}
			select {
			case d := <-deliveries:
				batch = append(batch, d)
			default:
				break more
			}
		}
		pipe := rdb.Pipeline()
		for _, d := range batch {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"id", d.MessageId, "data", d.Body}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		if err := ch.Ack(batch[len(batch)-1].DeliveryTag, true); err != nil {
			return err
		}
		got += len(batch)
	}
	return nil
}
