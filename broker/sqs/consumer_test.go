package sqs_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/broker/sqs"
	"github.com/sluice-io/sluice/broker/sqs/sqstest"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

// TestAttributesBecomeHeaders checks what lands in the dispatch stream for
// a message with attributes of every type: identity, headers, receive count.
func TestAttributesBecomeHeaders(t *testing.T) {
	t.Parallel()
	q := newQueue(t, nil)
	prefix := uniqueName(t)
	rdb := dispatchtest.Redis(t, prefix)
	dq := dispatch.New(rdb, dispatch.Options{Prefix: prefix})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sent, err := q.client.SendMessage(ctx, &awssqs.SendMessageInput{
		QueueUrl:    aws.String(q.url),
		MessageBody: aws.String(`{"event_type":"order.paid","data":{"id":7},"custom_headers":{"x-custom":"c","x-tenant":"from-body"}}`),
		MessageAttributes: map[string]types.MessageAttributeValue{
			"x-convoy-message-type": {DataType: aws.String("String"), StringValue: aws.String("broadcast")},
			"X-Tenant":              {DataType: aws.String("String"), StringValue: aws.String("acme")},
			"x-amount":              {DataType: aws.String("Number"), StringValue: aws.String("42.5")},
			"x-blob":                {DataType: aws.String("Binary"), BinaryValue: []byte{0, 1, 2}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	h := dispatchtest.NewHandler(dq, "sqs", "src-attrs")
	stop := brokertest.Start(t, newConsumer(t, q.config()), h)
	dispatchtest.WaitFor(t, 30*time.Second, "the message to be written", func() bool { return h.Written.Load() == 1 })
	q.waitEmpty(t, 30*time.Second)
	stop()

	_, evs := dispatchtest.StreamCounts(t, rdb, dq)
	if len(evs) != 1 {
		t.Fatalf("stream holds %d events, want 1", len(evs))
	}
	ev := evs[0]
	id := aws.ToString(sent.MessageId)
	if ev.BrokerMessageID != id || ev.Broker != "sqs" || ev.MessageType != dispatch.TypeBroadcast || ev.EventType != "order.paid" {
		t.Errorf("event = %+v, want broker sqs, id %s, broadcast order.paid", ev, id)
	}
	want := map[string]string{
		"x-convoy-message-type": "broadcast",
		"x-tenant":              "acme", // the broker's attribute wins over custom_headers
		"x-custom":              "c",
		"x-amount":              "42.5",
		"x-blob":                "AAEC",
		"x-broker-message-id":   id,
		sqs.HeaderReceiveCount:  "1",
		"x-sqs-sender-id":       "000000000000",
		"x-sqs-sent-timestamp":  ev.Headers["x-sqs-sent-timestamp"],
		"x-sqs-approximate-first-receive-timestamp": ev.Headers["x-sqs-approximate-first-receive-timestamp"],
	}
	for k, v := range want {
		if got, ok := ev.Headers[k]; !ok || got != v {
			t.Errorf("header %s = %q (present %v), want %q; all headers %v", k, got, ok, v, ev.Headers)
		}
	}
	if ev.Headers["x-sqs-sent-timestamp"] == "" {
		t.Errorf("no x-sqs-sent-timestamp header: %v", ev.Headers)
	}
}

// TestReceivesCarryTenThroughEndpoint runs the consumer through a proxy set
// as its endpoint: every call must go there (the endpoint is not derived
// from the queue URL, which names the emulator itself) and, with the queue
// full, every receive carries 10 messages.
func TestReceivesCarryTenThroughEndpoint(t *testing.T) {
	t.Parallel()
	q := newQueue(t, nil)
	prefix := uniqueName(t)
	rdb := dispatchtest.Redis(t, prefix)
	dq := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	const n = 200
	q.mustPublish(t, events("ten", n))

	p, err := sqstest.NewProxy(emulator(t).Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	cfg := q.config()
	cfg.Endpoint = p.URL
	h := dispatchtest.NewHandler(dq, "sqs", "src-ten")
	c := newConsumer(t, cfg)
	stop := brokertest.Start(t, c, h)
	dispatchtest.WaitFor(t, 30*time.Second, "every message to be written", func() bool { return h.Written.Load() == n })
	q.waitEmpty(t, 30*time.Second)
	stop()

	sizes := p.ReceiveSizes()
	var nonEmpty, total int
	for _, s := range sizes {
		if s > 0 {
			nonEmpty++
			total += s
			if s != 10 {
				t.Errorf("a receive carried %d messages, want 10 (all sizes %v)", s, sizes)
			}
		}
	}
	if total != n || nonEmpty != n/10 {
		t.Errorf("proxy saw %d messages in %d receives, want %d in %d", total, nonEmpty, n, n/10)
	}
	if got := p.Calls("DeleteMessageBatch"); got < n/10 {
		t.Errorf("proxy saw %d DeleteMessageBatch calls, want at least %d", got, n/10)
	}
	if st := c.Stats(); st.Received != n || st.Deleted != n {
		t.Errorf("stats %+v, want %d received and deleted", st, n)
	}
	counts, evs := dispatchtest.StreamCounts(t, rdb, dq)
	checkExactlyOnce(t, counts, evs, n)
}

// TestSlowHandleExtendsVisibility holds a batch in Handle for longer than
// the visibility timeout, set in the config or, by default, the queue's own:
// a competing worker must not get its messages.
func TestSlowHandleExtendsVisibility(t *testing.T) {
	t.Run("Config", func(t *testing.T) { testSlowHandle(t, nil, 2*time.Second) })
	t.Run("QueueAttribute", func(t *testing.T) { testSlowHandle(t, map[string]string{"VisibilityTimeout": "2"}, 0) })
}

func testSlowHandle(t *testing.T, attrs map[string]string, vis time.Duration) {
	t.Parallel()
	q := newQueue(t, attrs)
	prefix := uniqueName(t)
	rdb := dispatchtest.Redis(t, prefix)
	dq := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	const n = 10
	q.mustPublish(t, events("slow", n))

	cfg := q.config()
	cfg.VisibilityTimeout = vis
	cfg.WaitTime = time.Second
	slow := newConsumer(t, cfg)
	h := dispatchtest.NewHandler(dq, "sqs", "src-slow")
	entered := make(chan struct{})
	var first sync.Once
	h.Before = func([]broker.Message) error {
		var err error
		first.Do(func() {
			close(entered)
			// Hold the batch until its visibility was extended twice:
			// past the original 2s timeout.
			deadline := time.Now().Add(20 * time.Second)
			for slow.Stats().Extended < 2*n {
				if time.Now().After(deadline) {
					err = errors.New("visibility never extended")
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
		return err
	}
	stopSlow := brokertest.Start(t, slow, h)
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the slow worker got no batch")
	}
	other := dispatchtest.NewHandler(dq, "sqs", "src-slow")
	stopOther := brokertest.Start(t, newConsumer(t, cfg), other)
	dispatchtest.WaitFor(t, 30*time.Second, "the slow batch to be written", func() bool { return h.Written.Load()+other.Written.Load() == n })
	q.waitEmpty(t, 30*time.Second)
	stopSlow()
	stopOther()

	if got := other.Written.Load() + other.Duplicates.Load(); got != 0 {
		t.Errorf("the competing worker got %d of the held messages", got)
	}
	if h.Written.Load() != n || h.Errors.Load()+h.FailingReports.Load() != 0 {
		t.Errorf("slow worker wrote %d (want %d) with %d failures", h.Written.Load(), n, h.Errors.Load()+h.FailingReports.Load())
	}
	counts, evs := dispatchtest.StreamCounts(t, rdb, dq)
	checkExactlyOnce(t, counts, evs, n)
	for _, ev := range evs {
		if rc := ev.Headers[sqs.HeaderReceiveCount]; rc != "1" {
			t.Errorf("message %s was received %s times, want 1", ev.BrokerMessageID, rc)
		}
	}
}

// TestFailingBatchReleasedOnStop stops a worker whose Handler keeps failing:
// its messages must be visible again at once, not after the visibility
// timeout, and the retries in place must not have raised their receive
// count.
func TestFailingBatchReleasedOnStop(t *testing.T) {
	t.Parallel()
	q := newQueue(t, nil)
	prefix := uniqueName(t)
	rdb := dispatchtest.Redis(t, prefix)
	dq := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	const n = 10
	q.mustPublish(t, events("release", n))

	cfg := q.config()
	cfg.VisibilityTimeout = 5 * time.Minute // only a release makes them visible soon
	cfg.WaitTime = time.Second
	c := newConsumer(t, cfg)
	failing := dispatchtest.NewHandler(dq, "sqs", "src-release")
	failing.Before = func([]broker.Message) error { return errors.New("dispatch queue unavailable") }
	stop := brokertest.Start(t, c, failing)
	// Once the handler failed and the receive after the first completed,
	// the worker holds the batch and fetches nothing more.
	dispatchtest.WaitFor(t, 30*time.Second, "failed retries", func() bool { return failing.Errors.Load() >= 3 && c.Stats().Receives >= 2 })
	stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	visible, inFlight, err := q.counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if visible != n || inFlight != 0 {
		t.Fatalf("after the stop the queue has %d visible and %d in flight, want %d and 0", visible, inFlight, n)
	}

	h := dispatchtest.NewHandler(dq, "sqs", "src-release")
	stop = brokertest.Start(t, newConsumer(t, q.config()), h)
	dispatchtest.WaitFor(t, 30*time.Second, "every message to be written", func() bool { return h.Written.Load() == n })
	q.waitEmpty(t, 30*time.Second)
	stop()
	counts, evs := dispatchtest.StreamCounts(t, rdb, dq)
	checkExactlyOnce(t, counts, evs, n)
	for _, ev := range evs {
		if rc := ev.Headers[sqs.HeaderReceiveCount]; rc != "2" {
			t.Errorf("message %s: receive count %s, want 2 (one receive before the stop, one after)", ev.BrokerMessageID, rc)
		}
	}
}

// TestRedisOutage kills the dispatch queue's Redis mid-stream and restarts
// it: every message lands exactly once and the queue is emptied.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	q := newQueue(t, nil)
	r := dispatchtest.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: 1, DialTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	dq := dispatch.New(rdb, dispatch.Options{Prefix: "outage"})
	const n = 2000
	q.mustPublish(t, events("outage", n))

	h := dispatchtest.NewHandler(dq, "sqs", "src-outage")
	cfg := q.config()
	cfg.Batch = broker.Batch{Size: 50}
	stop := brokertest.Start(t, newConsumer(t, cfg), h)
	dispatchtest.WaitFor(t, 30*time.Second, "a quarter of the messages", func() bool { return h.Written.Load() >= n/4 })
	r.Stop()
	failed := h.Errors.Load()
	dispatchtest.WaitFor(t, 30*time.Second, "failures while Redis is down", func() bool { return h.Errors.Load() >= failed+3 })
	if w := h.Written.Load(); w >= n {
		t.Fatalf("all %d messages were written before the outage; nothing was tested", w)
	}
	r.Start()
	// A batch whose write Redis applied but whose reply the kill lost is
	// retried and found written (a duplicate): count the stream, not the
	// handler's writes.
	dispatchtest.WaitFor(t, 60*time.Second, "every message in the stream after the outage", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n2, err := rdb.XLen(ctx, dq.StreamKey()).Result()
		return err == nil && n2 == n
	})
	q.waitEmpty(t, 30*time.Second)
	stop()

	counts, evs := dispatchtest.StreamCounts(t, rdb, dq)
	checkExactlyOnce(t, counts, evs, n)
	t.Logf("%d handler failures during the outage, %d duplicates absorbed", h.Errors.Load()-failed, h.Duplicates.Load())
}

// TestMalformedBodyDeadLettered publishes malformed messages among good
// ones: each lands in the dead-letter stream once and leaves the queue.
func TestMalformedBodyDeadLettered(t *testing.T) {
	t.Parallel()
	q := newQueue(t, nil)
	prefix := uniqueName(t)
	rdb := dispatchtest.Redis(t, prefix)
	dq := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	const good = 30
	msgs := events("mixed", good)
	bad := []brokertest.Outgoing{
		{Body: []byte(`not json at all`)},
		{Body: []byte(`{"data":{"no":"event type"}}`), Headers: map[string]string{"x-convoy-message-type": "broadcast"}},
	}
	msgs = append(msgs[:10], append(bad, msgs[10:]...)...)
	q.mustPublish(t, msgs)

	h := dispatchtest.NewHandler(dq, "sqs", "src-mixed")
	stop := brokertest.Start(t, newConsumer(t, q.config()), h)
	dispatchtest.WaitFor(t, 30*time.Second, "every message to be settled", func() bool {
		return h.Written.Load() == good && h.Dead.Load() == int64(len(bad))
	})
	q.waitEmpty(t, 30*time.Second)
	stop()

	counts, evs := dispatchtest.StreamCounts(t, rdb, dq)
	checkExactlyOnce(t, counts, evs, good)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dead, err := rdb.XRange(ctx, dq.DeadLetterKey(), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	bodies := make(map[string]int)
	for _, e := range dead {
		if e.Values["broker"] != "sqs" || e.Values["message_id"] == "" || e.Values["reason"] == "" {
			t.Errorf("dead letter %v lacks broker, message id or reason", e.Values)
		}
		bodies[fmt.Sprint(e.Values["body"])]++
	}
	for _, b := range bad {
		if got := bodies[string(b.Body)]; got != 1 {
			t.Errorf("malformed body %q is in the dead-letter stream %d times, want 1", b.Body, got)
		}
	}
	if len(dead) != len(bad) {
		t.Errorf("dead-letter stream holds %d entries, want %d", len(dead), len(bad))
	}
}

// TestMissingQueue: Run returns a clear error for a queue that does not
// exist, so the supervisor backs off and shows it.
func TestMissingQueue(t *testing.T) {
	t.Parallel()
	q := testQueue{name: uniqueName(t)}
	emulator(t)
	c := newConsumer(t, q.config())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := dispatchtest.NewHandler(nil, "sqs", "src-missing")
	err := c.Run(ctx, h)
	if err == nil || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), q.name) {
		t.Fatalf("Run = %v, want an error saying queue %s does not exist", err, q.name)
	}
}

// TestLag reads the queue's backlog while the worker holds a batch.
func TestLag(t *testing.T) {
	t.Parallel()
	q := newQueue(t, nil)
	prefix := uniqueName(t)
	rdb := dispatchtest.Redis(t, prefix)
	dq := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	const n = 100
	q.mustPublish(t, events("lag", n))

	cfg := q.config()
	cfg.Batch = broker.Batch{Size: 10}
	cfg.LagInterval = 50 * time.Millisecond
	c := newConsumer(t, cfg)
	if _, ok := c.Lag(); ok {
		t.Error("Lag reports a figure before Run")
	}
	release := make(chan struct{})
	var held atomic.Int64
	h := dispatchtest.NewHandler(dq, "sqs", "src-lag")
	h.Before = func([]broker.Message) error {
		held.Store(1)
		<-release
		return nil
	}
	stop := brokertest.Start(t, c, h)
	// While the first batch is held the worker holds at most 30 messages
	// (in Handle, waiting, being received); the rest are waiting.
	dispatchtest.WaitFor(t, 30*time.Second, "a lag figure while a batch is held", func() bool {
		lag, ok := c.Lag()
		return held.Load() == 1 && ok && lag >= n-30 && lag < n
	})
	close(release)
	dispatchtest.WaitFor(t, 30*time.Second, "every message", func() bool { return h.Written.Load() == n })
	dispatchtest.WaitFor(t, 30*time.Second, "lag 0", func() bool { lag, ok := c.Lag(); return ok && lag == 0 })
	stop()
}

// TestKilledMidBatch kills (SIGKILL) a worker process after it wrote a
// batch and before it deleted it: the batch reappears after its visibility
// timeout, another worker takes it, and the dedupe keeps the stream
// exactly-once.
func TestKilledMidBatch(t *testing.T) {
	t.Parallel()
	q := newQueue(t, nil)
	prefix := uniqueName(t)
	rdb := dispatchtest.Redis(t, prefix)
	dq := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	const n, batches = 300, 5
	q.mustPublish(t, events("kill", n))

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		childEnv+"=1",
		"SQS_TEST_ENDPOINT="+emulator(t).Endpoint,
		"SQS_TEST_QUEUE="+q.name,
		"SQS_TEST_PREFIX="+prefix,
		fmt.Sprintf("SQS_TEST_BATCHES=%d", batches),
	)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Scan()
		line <- sc.Text()
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case l := <-line:
		if l != "holding" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("worker process said %q", l)
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal("worker process never wrote its batches")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before, err := rdb.XLen(ctx, dq.StreamKey()).Result()
	if err != nil {
		t.Fatal(err)
	}
	if before != batches*10 {
		t.Fatalf("the killed worker wrote %d events, want %d", before, batches*10)
	}

	h := dispatchtest.NewHandler(dq, "sqs", "src-kill")
	stop := brokertest.Start(t, newConsumer(t, q.config()), h)
	dispatchtest.WaitFor(t, 60*time.Second, "the rest of the messages", func() bool { return h.Written.Load() == n-before })
	q.waitEmpty(t, 30*time.Second)
	stop()
	// The last batch was written and never deleted: it came back, all 10.
	if got := h.Duplicates.Load(); got != 10 {
		t.Errorf("dedupe absorbed %d redelivered messages, want the 10 of the unacked batch", got)
	}
	counts, evs := dispatchtest.StreamCounts(t, rdb, dq)
	checkExactlyOnce(t, counts, evs, n)
}

// childEnv marks the worker process of TestKilledMidBatch.
const childEnv = "SLUICE_SQS_TEST_CHILD"

// runChild is the worker process of TestKilledMidBatch: it consumes in
// batches of 10, writes SQS_TEST_BATCHES batches, then holds the last one
// forever (after its write, before its delete), saying "holding" on stdout.
func runChild() int {
	var batches int
	_, _ = fmt.Sscan(os.Getenv("SQS_TEST_BATCHES"), &batches)
	rdb := redis.NewClient(&redis.Options{Addr: dispatchtest.RedisAddr()})
	dq := dispatch.New(rdb, dispatch.Options{Prefix: os.Getenv("SQS_TEST_PREFIX")})
	c, err := sqs.New(sqs.Config{
		AccessKeyID:       sqstest.AccessKeyID,
		SecretKey:         sqstest.SecretKey,
		Region:            sqstest.Region,
		QueueName:         os.Getenv("SQS_TEST_QUEUE"),
		Endpoint:          os.Getenv("SQS_TEST_ENDPOINT"),
		WaitTime:          time.Second,
		VisibilityTimeout: 2 * time.Second,
		Batch:             broker.Batch{Size: 10},
	}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	h := &holdingHandler{inner: dispatchtest.NewHandler(dq, "sqs", "src-kill"), batches: batches, c: c}
	if err := c.Run(context.Background(), h); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return 1
}

// holdingHandler writes batches through inner and, after the last one,
// waits until the earlier batches are deleted and never returns.
type holdingHandler struct {
	inner   *dispatchtest.Handler
	batches int
	n       int
	c       *sqs.Consumer
}

func (h *holdingHandler) Handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	if len(batch) != 10 {
		fmt.Printf("batch of %d\n", len(batch))
		select {}
	}
	res, err := h.inner.Handle(ctx, batch)
	if err != nil {
		return nil, err
	}
	if h.n++; h.n == h.batches {
		for deadline := time.Now().Add(30 * time.Second); h.c.Stats().Deleted < int64(10*(h.batches-1)); {
			if time.Now().After(deadline) {
				fmt.Println("earlier batches not deleted")
				select {}
			}
			time.Sleep(10 * time.Millisecond)
		}
		fmt.Println("holding")
		select {}
	}
	return res, nil
}

func (h *holdingHandler) Failing(error) {}
func (h *holdingHandler) Healthy()      {}
