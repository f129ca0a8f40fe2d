package sqs_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/sqs"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

// BenchmarkConsume drains a backlog of messages (10,000; 2,000 for the
// floor) from a fresh fauxqs queue four ways, in one run, and reports each
// rate and the ratios:
//
//	raw_msgs/s       raw aws-sdk-go-v2 loop: ReceiveMessage(10) then one
//	                 DeleteMessageBatch, no Redis (the baseline)
//	floor_msgs/s     raw SDK, one message per receive and one DeleteMessage
//	                 per message, no Redis
//	sluice_msgs/s    this Consumer (batches of up to 100 gathered from
//	                 several receives) → dispatch.Decode →
//	                 dispatch.Queue.Enqueue on a real redis-server of the
//	                 benchmark's own → deletes
//	sluice10_msgs/s  the same with Batch.Size 10: each receive handed over
//	                 on its own
//
// Each rate is the messages over the median of the iterations' durations: on
// a shared machine a stray stall (another process's burst) would otherwise
// swamp a sum. A first raw drain warms the emulator up. The raw loops use
// the same HTTP client as the Consumer (sqs.NewHTTPClient): on a plain one
// a receive now and then loses its response and its ten messages stay
// invisible for the visibility timeout, which would measure that stall, not
// the SDK.
//
// Run it alone: go test -run '^$' -bench BenchmarkConsume -benchtime 5x ./broker/sqs
func BenchmarkConsume(b *testing.B) {
	emulator(b)
	// The floor is slow: it drains fewer messages.
	const n, nFloor = 10000, 2000
	name := uniqueName(b)
	// A Redis of the benchmark's own, so that other tests' load on the
	// shared one does not count against sluice.
	pr := dispatchtest.StartRedis(b, "--appendonly", "no")
	rdb := redis.NewClient(&redis.Options{Addr: pr.Addr()})
	b.Cleanup(func() { _ = rdb.Close() })
	drain(b, n, func(q testQueue) (time.Time, error) { return rawConsume(q, n, 10) })

	var raw, floor, sluice, sluice10 []time.Duration
	for i := 0; b.Loop(); i++ {
		prefix := fmt.Sprintf("%s-%d", name, i)
		phases := []func(){
			func() {
				raw = append(raw, drain(b, n, func(q testQueue) (time.Time, error) { return rawConsume(q, n, 10) }))
			},
			func() {
				floor = append(floor, drain(b, nFloor, func(q testQueue) (time.Time, error) { return rawConsume(q, nFloor, 1) }))
			},
			func() {
				sluice = append(sluice, drain(b, n, func(q testQueue) (time.Time, error) {
					return sluiceConsume(q, dispatch.New(rdb, dispatch.Options{Prefix: prefix + "-100"}), n, 100)
				}))
			},
			func() {
				sluice10 = append(sluice10, drain(b, n, func(q testQueue) (time.Time, error) {
					return sluiceConsume(q, dispatch.New(rdb, dispatch.Options{Prefix: prefix + "-10"}), n, 10)
				}))
			},
		}
		// Rotate the order so that no phase always runs first or last.
		for j := range phases {
			phases[(i+j)%len(phases)]()
		}
	}
	rate := func(msgs int, ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(msgs) / ds[len(ds)/2].Seconds()
	}
	r, f, s, s10 := rate(n, raw), rate(nFloor, floor), rate(n, sluice), rate(n, sluice10)
	b.ReportMetric(r, "raw_msgs/s")
	b.ReportMetric(f, "floor_msgs/s")
	b.ReportMetric(s, "sluice_msgs/s")
	b.ReportMetric(s10, "sluice10_msgs/s")
	b.ReportMetric(s/r, "sluice/raw")
	b.ReportMetric(s/f, "sluice/floor")
	b.ReportMetric(s10/r, "sluice10/raw")
}

// drain fills a fresh queue with n messages with the timer stopped, then
// times consume, which must take all of them and returns when it had.
func drain(b *testing.B, n int, consume func(q testQueue) (time.Time, error)) time.Duration {
	b.Helper()
	b.StopTimer()
	q := newQueue(b, nil)
	msgs := events(q.name, n)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	per := (n + 3) / 4
	for w := range 4 {
		part := msgs[min(w*per, n):min((w+1)*per, n)]
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := q.publish(ctx, part); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatalf("publish: %v", err)
	}
	b.StartTimer()
	start := time.Now()
	end, err := consume(q)
	if err != nil {
		b.Fatalf("consume %s: %v", q.name, err)
	}
	return end.Sub(start)
}

// rawConsume is the raw SDK loop: receive up to max messages, delete them
// (one DeleteMessageBatch, or one DeleteMessage each when max is 1), until
// n are deleted.
func rawConsume(q testQueue, n, max int) (time.Time, error) {
	ctx := context.Background()
	for got := 0; got < n; {
		out, err := q.client.ReceiveMessage(ctx, &awssqs.ReceiveMessageInput{
			QueueUrl:                    aws.String(q.url),
			MaxNumberOfMessages:         int32(max),
			WaitTimeSeconds:             1,
			MessageAttributeNames:       []string{"All"},
			MessageSystemAttributeNames: []types.MessageSystemAttributeName{types.MessageSystemAttributeNameAll},
		})
		if err != nil {
			return time.Time{}, err
		}
		if len(out.Messages) == 0 {
			continue
		}
		if max == 1 {
			for _, m := range out.Messages {
				if _, err := q.client.DeleteMessage(ctx, &awssqs.DeleteMessageInput{QueueUrl: aws.String(q.url), ReceiptHandle: m.ReceiptHandle}); err != nil {
					return time.Time{}, err
				}
			}
		} else {
			entries := make([]types.DeleteMessageBatchRequestEntry, len(out.Messages))
			for i, m := range out.Messages {
				entries[i] = types.DeleteMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: m.ReceiptHandle}
			}
			res, err := q.client.DeleteMessageBatch(ctx, &awssqs.DeleteMessageBatchInput{QueueUrl: aws.String(q.url), Entries: entries})
			if err != nil {
				return time.Time{}, err
			}
			if len(res.Failed) > 0 {
				return time.Time{}, fmt.Errorf("%d deletes failed", len(res.Failed))
			}
		}
		got += len(out.Messages)
	}
	return time.Now(), nil
}

// sluiceConsume runs a Consumer into the dispatch queue dq until it has
// written all n messages and deleted them.
func sluiceConsume(q testQueue, dq *dispatch.Queue, n, batch int) (time.Time, error) {
	cfg := q.config()
	cfg.WaitTime = time.Second
	cfg.Batch = broker.Batch{Size: batch}
	c, err := sqs.New(cfg, nil)
	if err != nil {
		return time.Time{}, err
	}
	h := dispatchtest.NewHandler(dq, "sqs", "src-bench")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	deadline := time.After(5 * time.Minute)
	for c.Stats().Deleted < int64(n) {
		select {
		case err := <-done:
			return time.Time{}, fmt.Errorf("Run returned early: %v", err)
		case <-deadline:
			return time.Time{}, fmt.Errorf("deleted %d of %d", c.Stats().Deleted, n)
		case <-h.Changed():
		case <-time.After(10 * time.Millisecond):
		}
	}
	end := time.Now()
	cancel()
	if err := <-done; err != nil {
		return time.Time{}, err
	}
	if got := h.Written.Load(); got != int64(n) {
		return time.Time{}, fmt.Errorf("sluice wrote %d of %d", got, n)
	}
	return end, nil
}
