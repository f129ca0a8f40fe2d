package sqs_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

// events returns n valid Convoy broadcast messages with an attribute.
func events(tag string, n int) []brokertest.Outgoing {
	out := make([]brokertest.Outgoing, n)
	for i := range out {
		out[i] = brokertest.Outgoing{
			Body: fmt.Appendf(nil, `{"event_type":"test.created","data":{"tag":%q,"seq":%d}}`, tag, i),
			Headers: map[string]string{
				"x-convoy-message-type": "broadcast",
				"x-seq":                 strconv.Itoa(i),
			},
		}
	}
	return out
}

// publish sends msgs to q, failing the test on error.
func (q testQueue) mustPublish(tb testing.TB, msgs []brokertest.Outgoing) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := q.publish(ctx, msgs); err != nil {
		tb.Fatalf("publish: %v", err)
	}
}

// waitEmpty waits until q holds no message, visible or in flight.
func (q testQueue) waitEmpty(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	dispatchtest.WaitFor(tb, timeout, "the queue to be empty", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n, err := q.unacked(ctx)
		return err == nil && n == 0
	})
}

// checkExactlyOnce fails unless the stream holds n distinct messages, each
// once, and every one carries a different data value.
func checkExactlyOnce(tb testing.TB, counts map[string]int, evs []dispatch.Event, n int) {
	tb.Helper()
	dispatchtest.RequireExactlyOnce(tb, counts, n)
	data := make(map[string]bool, len(evs))
	for _, ev := range evs {
		data[string(ev.Data)] = true
	}
	if len(data) != n {
		tb.Errorf("stream holds %d distinct payloads, want %d", len(data), n)
	}
}
