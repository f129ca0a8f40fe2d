package supervisor

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
	"github.com/sluice-io/sluice/source"
)

func amqpSource(id string, workers int, dlx string) source.Source {
	return source.Source{
		UID: id, ProjectID: "p1", Type: source.TypePubSub,
		PubSub: &source.PubSub{Type: source.PubSubAMQP, Workers: workers, AMQP: &source.AMQP{
			Schema: "amqp", Host: "127.0.0.1", Port: "5672", Queue: "q-" + id, DeadLetterExchange: dlx,
		}},
	}
}

func newTestHandler(src source.Source, q Queue) *handler {
	m := NewMetrics(nil)
	w := &worker{src: src, log: slog.New(slog.DiscardHandler), metrics: m.sourceLabels(src)}
	w.handler = &handler{w: w, queue: q, hard: context.Background(),
		nativeDead: src.PubSub.AMQP != nil && src.PubSub.AMQP.DeadLetterExchange != ""}
	return w.handler
}

func msg(id, body string) broker.Message {
	return broker.Message{ID: id, Body: []byte(body), Headers: map[string]string{"X-Trace": "t-" + id},
		PublishedAt: time.Now()}
}

const good = `{"endpoint_id":"ep1","event_type":"order.paid","data":{"n":1}}`

func TestHandlerWritesDedupesAndDeadLetters(t *testing.T) {
	t.Parallel()
	prefix := dispatchtest.Prefix(t)
	rdb := dispatchtest.Redis(t, prefix)
	q := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	h := newTestHandler(amqpSource("src1", 1, ""), q)
	ctx := context.Background()

	batch := []broker.Message{msg("m1", good), msg("m2", `{"data":{}}`), msg("m3", good), msg("m4", `not json`)}
	res, err := h.Handle(ctx, batch)
	require.NoError(t, err)
	require.Equal(t, []broker.Result{broker.Written, broker.DeadLettered, broker.Written, broker.DeadLettered}, res)

	// The same batch redelivered: the good ones are duplicates, still settled.
	res, err = h.Handle(ctx, batch)
	require.NoError(t, err)
	require.Equal(t, []broker.Result{broker.Written, broker.DeadLettered, broker.Written, broker.DeadLettered}, res)

	entries, err := rdb.XRange(ctx, q.StreamKey(), "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, entries, 2, "each good message is written once")
	ev, err := dispatch.ParseEntry(entries[0].Values)
	require.NoError(t, err)
	require.Equal(t, "src1", ev.SourceID)
	require.Equal(t, "p1", ev.ProjectID)
	require.Equal(t, "amqp", ev.Broker)
	require.Equal(t, "m1", ev.BrokerMessageID)
	require.Equal(t, "t-m1", ev.Headers["x-trace"])

	dead, err := rdb.XLen(ctx, q.DeadLetterKey()).Result()
	require.NoError(t, err)
	require.EqualValues(t, 2, dead, "each malformed message is dead-lettered once")

	st := h.w.snapshot()
	require.EqualValues(t, 8, st.Received)
	require.EqualValues(t, 2, st.Dispatched)
	require.EqualValues(t, 2, st.Duplicates)
	require.EqualValues(t, 4, st.DeadLettered)
	require.NotNil(t, st.LastMessageAt)
}

func TestHandlerRejectsWhenTheBrokerDeadLetters(t *testing.T) {
	t.Parallel()
	prefix := dispatchtest.Prefix(t)
	rdb := dispatchtest.Redis(t, prefix)
	q := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	h := newTestHandler(amqpSource("src2", 1, "dlx"), q)

	res, err := h.Handle(context.Background(), []broker.Message{msg("m1", `{}`), msg("m2", good)})
	require.NoError(t, err)
	require.Equal(t, []broker.Result{broker.Rejected, broker.Written}, res)
	n, err := rdb.XLen(context.Background(), q.DeadLetterKey()).Result()
	require.NoError(t, err)
	require.Zero(t, n, "the broker's dead-letter exchange gets it, not the Redis dead-letter stream")
}

func TestHandlerRedisDownIsTransient(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1: every Redis call fails at once.
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = down.Close() })
	h := newTestHandler(amqpSource("src3", 1, ""), dispatch.New(down, dispatch.Options{Prefix: "unused"}))

	for _, batch := range [][]broker.Message{{msg("m1", good)}, {msg("m2", `{}`)}} {
		res, err := h.Handle(context.Background(), batch)
		require.Error(t, err, "neither a write nor a dead letter can succeed without Redis")
		require.Nil(t, res)
	}
	st := h.w.snapshot()
	require.EqualValues(t, 2, st.Failures)
	require.NotEmpty(t, st.LastError)
	require.Zero(t, st.Dispatched+st.DeadLettered)
}

// panicky is the real queue with a fault injected: its first Enqueue panics.
type panicky struct {
	*dispatch.Queue
	panicked bool
}

func (p *panicky) Enqueue(ctx context.Context, evs []dispatch.Event) ([]dispatch.Outcome, error) {
	if !p.panicked {
		p.panicked = true
		panic("injected")
	}
	return p.Queue.Enqueue(ctx, evs)
}

func TestHandlerPanicIsAFailureNeverAnAck(t *testing.T) {
	t.Parallel()
	prefix := dispatchtest.Prefix(t)
	rdb := dispatchtest.Redis(t, prefix)
	q := &panicky{Queue: dispatch.New(rdb, dispatch.Options{Prefix: prefix})}
	h := newTestHandler(amqpSource("src4", 1, ""), q)

	res, err := h.Handle(context.Background(), []broker.Message{msg("m1", good)})
	require.ErrorContains(t, err, "panicked")
	require.Nil(t, res)
	res, err = h.Handle(context.Background(), []broker.Message{msg("m1", good)})
	require.NoError(t, err)
	require.Equal(t, []broker.Result{broker.Written}, res)
	n, err := rdb.XLen(context.Background(), q.StreamKey()).Result()
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
}

// TestHandlerHoldsBackWhileTheStreamIsFull: above the high-water mark a
// batch waits, unwritten and unacked, until readers drain the stream below
// the low-water mark.
func TestHandlerHoldsBackWhileTheStreamIsFull(t *testing.T) {
	t.Parallel()
	prefix := dispatchtest.Prefix(t)
	rdb := dispatchtest.Redis(t, prefix)
	q := dispatch.New(rdb, dispatch.Options{Prefix: prefix, HighWater: 5, LowWater: 2, PollInterval: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan struct{})
	go func() { defer close(ran); _ = q.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	h := newTestHandler(amqpSource("src5", 1, ""), q)

	var fill []broker.Message
	for i := range 6 {
		fill = append(fill, msg("fill-"+strconv.Itoa(i), good))
	}
	_, err := h.Handle(ctx, fill)
	require.NoError(t, err)
	dispatchtest.WaitFor(t, 10*time.Second, "backpressure", q.Backpressured)

	done := make(chan error, 1)
	go func() { _, err := h.Handle(ctx, []broker.Message{msg("held", good)}); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("Handle returned (%v) while the stream was above the high-water mark", err)
	case <-time.After(200 * time.Millisecond):
	}
	n, err := rdb.XLen(ctx, q.StreamKey()).Result()
	require.NoError(t, err)
	require.EqualValues(t, 6, n, "nothing is written while held back")

	// A reader trims what it has consumed: below the low-water mark the
	// held batch goes through.
	require.NoError(t, rdb.XTrimMaxLen(ctx, q.StreamKey(), 1).Err())
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Handle still held back after the stream drained")
	}
	n, err = rdb.XLen(ctx, q.StreamKey()).Result()
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
}
