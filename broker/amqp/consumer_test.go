package amqp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	brokertest.Run(t, func(t *testing.T) brokertest.Fixture {
		a := newAdmin(t)
		queue := uniqueName(t)
		a.queue(queue, "")
		var seq atomic.Int64
		return brokertest.Fixture{
			Publish: func(ctx context.Context, msgs []brokertest.Outgoing) error {
				pubs := make([]amqp091.Publishing, len(msgs))
				for i, m := range msgs {
					h := make(amqp091.Table, len(m.Headers))
					for k, v := range m.Headers {
						h[k] = v
					}
					pubs[i] = amqp091.Publishing{
						MessageId: queue + "-" + strconv.FormatInt(seq.Add(1), 10),
						Headers:   h,
						Body:      m.Body,
					}
				}
				return a.publish(ctx, "", queue, pubs)
			},
			NewConsumer: func(t *testing.T) broker.Consumer {
				return newConsumer(t, testConfig(queue))
			},
			// Called once the suite's consumers have stopped: their unacked
			// deliveries are back in the queue and count as ready.
			Unacked: func(ctx context.Context) (int, error) { return a.ready(ctx, queue) },
		}
	}, brokertest.Options{Messages: 300, Timeout: 30 * time.Second})
}

// TestBindAndDeadLetter runs the topology of a Convoy AMQP source: the
// consumer declares its queue with a dead-letter exchange and binds it to an
// existing topic exchange; valid messages published to the exchange reach
// the dispatch stream exactly once with their headers, malformed ones land in
// the dead-letter exchange's queue, and nothing stays in the source queue.
func TestBindAndDeadLetter(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	name := uniqueName(t)
	in, dlx, dlq, queue := name+".in", name+".dlx", name+".dlq", name+".q"
	a.exchange(in, amqp091.ExchangeTopic)
	a.exchange(dlx, amqp091.ExchangeFanout)
	a.queue(dlq, "")
	a.bind(dlq, dlx, "")
	t.Cleanup(func() {
		_ = a.do(func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(queue, false, false, false); return err })
	})

	prefix := name
	rdb := dispatchtest.Redis(t, prefix)
	q := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	const n = 300
	var valid, malformed []string
	pubs := make([]amqp091.Publishing, n)
	for i := range pubs {
		id := fmt.Sprintf("%s-%d", name, i)
		pubs[i] = event(id, i)
		// Malformed every 7th and the 10th of every batch of 10, so some
		// batches end in a rejected message.
		if i%7 == 3 || i%10 == 9 {
			pubs[i].Body = []byte(`{"data":{"no":"event type"}}`)
			malformed = append(malformed, id)
		} else {
			valid = append(valid, id)
		}
	}
	h := dispatchtest.NewHandler(q, "amqp", "src-"+name)
	h.Reject = true

	cfg := testConfig(queue)
	cfg.BindExchange, cfg.RoutingKey, cfg.DeadLetterExchange = in, "orders.*", dlx
	cfg.Batch = broker.Batch{Size: 10, Wait: 20 * time.Millisecond}
	stop := brokertest.Start(t, newConsumer(t, cfg), h)
	dispatchtest.WaitFor(t, 10*time.Second, "the consumer to consume", func() bool { return h.HealthyReports.Load() > 0 })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.publish(ctx, in, "orders.created", pubs); err != nil {
		t.Fatalf("publish: %v", err)
	}
	// Not matching the binding: never reaches the queue.
	if err := a.publish(ctx, in, "invoices.created", []amqp091.Publishing{event(name+"-unrouted", -1)}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	h.WaitWritten(t, int64(len(valid)), 30*time.Second)
	dispatchtest.WaitFor(t, 30*time.Second, "the malformed messages in the dead-letter queue", func() bool {
		got, err := a.ready(ctx, dlq)
		return err == nil && got >= len(malformed)
	})
	stop()
	if got, err := a.ready(ctx, queue); err != nil || got != 0 {
		t.Errorf("source queue holds %d messages (err %v), want 0", got, err)
	}

	counts, events := dispatchtest.StreamCounts(t, rdb, q)
	dispatchtest.RequireExactlyOnce(t, counts, len(valid), valid...)
	for _, ev := range events {
		if ev.MessageType != dispatch.TypeBroadcast || ev.EventType != "test.created" || ev.Broker != "amqp" {
			t.Fatalf("event %s: type %q, event_type %q, broker %q", ev.BrokerMessageID, ev.MessageType, ev.EventType, ev.Broker)
		}
		seq := strings.TrimPrefix(ev.BrokerMessageID, name+"-")
		want := map[string]string{
			"x-broker-message-id":   ev.BrokerMessageID,
			"x-convoy-message-type": "broadcast",
			"x-seq":                 seq,
			"x-amqp-exchange":       in,
			"x-amqp-routing-key":    "orders.created",
			"x-amqp-content-type":   "application/json",
		}
		for k, v := range want {
			if ev.Headers[k] != v {
				t.Fatalf("event %s: header %s = %q, want %q (headers %v)", ev.BrokerMessageID, k, ev.Headers[k], v, ev.Headers)
			}
		}
	}

	// The dead-letter queue holds exactly the malformed messages.
	dead := make(map[string]int)
	if err := a.do(func(ch *amqp091.Channel) error {
		for {
			d, ok, err := ch.Get(dlq, true)
			if err != nil || !ok {
				return err
			}
			dead[d.MessageId]++
		}
	}); err != nil {
		t.Fatalf("read dead-letter queue: %v", err)
	}
	if len(dead) != len(malformed) {
		t.Errorf("dead-letter queue holds %d distinct messages, want %d", len(dead), len(malformed))
	}
	for _, id := range malformed {
		if dead[id] != 1 {
			t.Errorf("malformed message %s is in the dead-letter queue %d times, want 1", id, dead[id])
		}
	}
}

func TestMissingExchangeIsNamed(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	name := uniqueName(t)
	a.exchange(name+".in", amqp091.ExchangeDirect)
	for _, tc := range []struct {
		field   string
		set     func(*Config)
		missing string
	}{
		{"bind exchange", func(c *Config) { c.BindExchange = name + ".nope"; c.RoutingKey = "k" }, name + ".nope"},
		{"dead-letter exchange", func(c *Config) { c.BindExchange = name + ".in"; c.DeadLetterExchange = name + ".nodlx" }, name + ".nodlx"},
	} {
		cfg := testConfig(name + ".q")
		tc.set(&cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := newConsumer(t, cfg).Run(ctx, &countingHandler{})
		cancel()
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%s %q does not exist", tc.field, tc.missing)) {
			t.Errorf("%s missing: Run = %v, want an error naming %q", tc.field, err, tc.missing)
		}
	}
	// The queue was never declared.
	if err := a.do(func(ch *amqp091.Channel) error {
		_, err := ch.QueueDeclarePassive(name+".q", true, false, false, false, nil)
		return err
	}); err == nil {
		t.Error("queue was declared although its exchange is missing")
		_ = a.do(func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(name+".q", false, false, false); return err })
	}
}

func TestQueueWithOtherArgumentsFails(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	name := uniqueName(t)
	a.exchange(name+".dlx", amqp091.ExchangeFanout)
	a.queue(name, "") // exists without a dead-letter exchange
	cfg := testConfig(name)
	cfg.DeadLetterExchange = name + ".dlx"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := newConsumer(t, cfg).Run(ctx, &countingHandler{})
	var aerr *amqp091.Error
	if !errors.As(err, &aerr) || aerr.Code != amqp091.PreconditionFailed || !strings.Contains(err.Error(), "declare queue") {
		t.Fatalf("Run = %v, want a PRECONDITION_FAILED declare error", err)
	}
}

// countingHandler writes nothing; it counts what it was handed.
type countingHandler struct {
	mu      sync.Mutex
	msgs    []broker.Message
	block   chan struct{} // when set, Handle waits for it to close
	entered chan struct{} // when set, closed by the first Handle
	once    sync.Once
	failing atomic.Int64
	lastErr atomic.Pointer[error]
}

func (h *countingHandler) Handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	if h.entered != nil {
		h.once.Do(func() { close(h.entered) })
	}
	if h.block != nil {
		<-h.block
	}
	h.mu.Lock()
	h.msgs = append(h.msgs, batch...)
	h.mu.Unlock()
	return make([]broker.Result, len(batch)), nil
}

func (h *countingHandler) Failing(err error) {
	h.lastErr.Store(&err)
	h.failing.Add(1)
}
func (h *countingHandler) Healthy() {}

func (h *countingHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.msgs)
}

// TestSpecialPassword logs in as a user whose password holds every
// character that needs escaping in a URL's userinfo, and checks that a
// wrong password fails without showing up in the error.
func TestSpecialPassword(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: rabbitmqctl or a fault lasting seconds")
	}
	t.Parallel()
	var b [4]byte
	_, _ = rand.Read(b[:])
	user := "sluice-test-" + hex.EncodeToString(b[:])
	password := "p@ss:w/rd 100% #?&=" + hex.EncodeToString(b[:])
	rabbitmqctl(t, "add_user", user, password)
	t.Cleanup(func() { rabbitmqctl(t, "delete_user", user) })
	rabbitmqctl(t, "set_permissions", "-p", "/", user, ".*", ".*", ".*")

	a := newAdmin(t)
	queue := uniqueName(t)
	a.queue(queue, "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.publish(ctx, "", queue, []amqp091.Publishing{event(queue+"-1", 1)}); err != nil {
		t.Fatal(err)
	}

	cfg := testConfig(queue)
	cfg.User, cfg.Password = user, password
	h := &countingHandler{}
	stop := brokertest.Start(t, newConsumer(t, cfg), h)
	dispatchtest.WaitFor(t, 20*time.Second, "the message", func() bool { return h.count() == 1 })
	stop()

	cfg.Password = password + "-wrong"
	err := newConsumer(t, cfg).Run(ctx, h)
	if err == nil {
		t.Fatal("Run with a wrong password = nil, want an error")
	}
	if strings.Contains(err.Error(), cfg.Password) || strings.Contains(err.Error(), "p%40ss") {
		t.Fatalf("error shows the password: %v", err)
	}
}

func TestLagIsQueueDepth(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	queue := uniqueName(t)
	a.queue(queue, "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pubs := make([]amqp091.Publishing, 50)
	for i := range pubs {
		pubs[i] = event(fmt.Sprintf("%s-%d", queue, i), i)
	}
	if err := a.publish(ctx, "", queue, pubs); err != nil {
		t.Fatal(err)
	}

	cfg := testConfig(queue)
	cfg.Batch = broker.Batch{Size: 10}
	cfg.Prefetch = 10
	cfg.LagInterval = 20 * time.Millisecond
	c := newConsumer(t, cfg)
	if _, ok := c.Lag(); ok {
		t.Fatal("Lag is known before Run")
	}
	h := &countingHandler{block: make(chan struct{}), entered: make(chan struct{})}
	stop := brokertest.Start(t, c, h)
	<-h.entered
	// 10 are delivered and held unacked by the blocked Handle; 40 wait.
	dispatchtest.WaitFor(t, 10*time.Second, "Lag = 40", func() bool { n, ok := c.Lag(); return ok && n == 40 })
	close(h.block)
	dispatchtest.WaitFor(t, 10*time.Second, "every message", func() bool { return h.count() == 50 })
	dispatchtest.WaitFor(t, 10*time.Second, "Lag = 0", func() bool { n, ok := c.Lag(); return ok && n == 0 })
	stop()
}

// TestQueueDeletedWhileConsuming deletes the queue under a running worker:
// the broker cancels its consumer, the worker reports it and reconnects,
// declaring the queue again, and consumes what arrives next.
func TestQueueDeletedWhileConsuming(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	queue := uniqueName(t)
	a.queue(queue, "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h := &countingHandler{}
	stop := brokertest.Start(t, newConsumer(t, testConfig(queue)), h)
	if err := a.publish(ctx, "", queue, []amqp091.Publishing{event(queue+"-1", 1)}); err != nil {
		t.Fatal(err)
	}
	dispatchtest.WaitFor(t, 10*time.Second, "the first message", func() bool { return h.count() == 1 })
	if err := a.do(func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(queue, false, false, false); return err }); err != nil {
		t.Fatal(err)
	}
	dispatchtest.WaitFor(t, 10*time.Second, "the cancel reported", func() bool { return h.failing.Load() > 0 })
	if err := *h.lastErr.Load(); !strings.Contains(err.Error(), "cancelled the consumer") {
		t.Errorf("Failing(%v), want the cancel named", err)
	}
	// The worker declares the queue again; publish until it is there.
	dispatchtest.WaitFor(t, 10*time.Second, "the queue declared again", func() bool { _, err := a.ready(ctx, queue); return err == nil })
	if err := a.publish(ctx, "", queue, []amqp091.Publishing{event(queue+"-2", 2)}); err != nil {
		t.Fatal(err)
	}
	dispatchtest.WaitFor(t, 10*time.Second, "the second message", func() bool { return h.count() == 2 })
	stop()
}

// TestAMQPSVerifiesTheServer dials amqps to a TLS server whose certificate
// no system root signed: the handshake must fail on verification.
func TestAMQPSVerifiesTheServer(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	host, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Schema: "amqps", Host: host, Port: port, Queue: "q"}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = newConsumer(t, cfg).Run(ctx, &countingHandler{})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Run against an untrusted TLS server = %v, want a certificate error", err)
	}
}

// funcHandler settles batches with a function.
type funcHandler struct {
	handle  func(batch []broker.Message) ([]broker.Result, error)
	calls   atomic.Int64
	failing atomic.Int64
}

func (h *funcHandler) Handle(_ context.Context, batch []broker.Message) ([]broker.Result, error) {
	h.calls.Add(1)
	return h.handle(batch)
}
func (h *funcHandler) Failing(error) { h.failing.Add(1) }
func (h *funcHandler) Healthy()      {}

// TestStopWhileRetrying stops a worker whose Handle keeps failing: Run
// returns nil without acking, and every message is back in the queue.
func TestStopWhileRetrying(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	queue := uniqueName(t)
	a.queue(queue, "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pubs := make([]amqp091.Publishing, 30)
	for i := range pubs {
		pubs[i] = event(fmt.Sprintf("%s-%d", queue, i), i)
	}
	if err := a.publish(ctx, "", queue, pubs); err != nil {
		t.Fatal(err)
	}
	h := &funcHandler{handle: func([]broker.Message) ([]broker.Result, error) {
		return nil, errors.New("dispatch queue unavailable")
	}}
	stop := brokertest.Start(t, newConsumer(t, testConfig(queue)), h)
	dispatchtest.WaitFor(t, 10*time.Second, "a few failed attempts", func() bool { return h.calls.Load() >= 3 })
	stop()
	if h.failing.Load() < 3 {
		t.Errorf("Failing reported %d times for %d failed batches", h.failing.Load(), h.calls.Load())
	}
	dispatchtest.WaitFor(t, 10*time.Second, "all 30 messages back in the queue", func() bool {
		n, err := a.ready(ctx, queue)
		return err == nil && n == 30
	})
}

// TestHandlerBreakingTheContractAcksNothing: a wrong number of results, an
// unknown result, or Rejected without a dead-letter exchange (RabbitMQ would
// drop the message) make Run fail without settling anything.
func TestHandlerBreakingTheContractAcksNothing(t *testing.T) {
	t.Parallel()
	a := newAdmin(t)
	for _, tc := range []struct {
		name   string
		handle func(batch []broker.Message) ([]broker.Result, error)
		want   string
	}{
		{"short results", func(b []broker.Message) ([]broker.Result, error) { return make([]broker.Result, len(b)-1), nil }, "results for a batch of"},
		{"unknown result", func(b []broker.Message) ([]broker.Result, error) {
			r := make([]broker.Result, len(b))
			r[0] = broker.Result(42)
			return r, nil
		}, "unknown result"},
		{"rejected without DLX", func(b []broker.Message) ([]broker.Result, error) {
			r := make([]broker.Result, len(b))
			r[len(r)-1] = broker.Rejected
			return r, nil
		}, "no dead-letter exchange"},
	} {
		queue := uniqueName(t) + "." + unsafeChars.ReplaceAllString(tc.name, "_")
		a.queue(queue, "")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		pubs := []amqp091.Publishing{event(queue+"-1", 1), event(queue+"-2", 2)}
		if err := a.publish(ctx, "", queue, pubs); err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(queue)
		cfg.Batch = broker.Batch{Size: 2, Wait: time.Second}
		err := newConsumer(t, cfg).Run(ctx, &funcHandler{handle: tc.handle})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Run = %v, want an error with %q", tc.name, err, tc.want)
		}
		if n, err := a.ready(ctx, queue); err != nil || n != 2 {
			t.Errorf("%s: queue holds %d messages (err %v), want both back", tc.name, n, err)
		}
		cancel()
	}
}
