package main

// End-to-end tests of AMQP sources: the real sluice binary, the real
// RabbitMQ and Redis of the machine, driven through the admin API.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/sluice-io/sluice/broker/amqp"
	"github.com/sluice-io/sluice/broker/supervisor"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
	"github.com/sluice-io/sluice/source"
)

func TestAMQPConfigMapping(t *testing.T) {
	ps := &source.PubSub{Type: source.PubSubAMQP, Workers: 4, AMQP: &source.AMQP{
		Schema: "amqps", Host: "mq.example.com", Port: "5671", Queue: "orders", Vhost: "team/a",
		DeadLetterExchange: "orders.dlx",
		Auth:               &source.AMQPAuth{User: "svc", Password: "p@ss:w/rd 100%"},
		BindExchange:       &source.BindExchange{Exchange: "events", RoutingKey: "orders.*"},
	}}
	got, err := amqpConfig(ps, "src1")
	if err != nil {
		t.Fatal(err)
	}
	want := amqp.Config{
		Schema: "amqps", Host: "mq.example.com", Port: "5671", Vhost: "team/a", Queue: "orders",
		User: "svc", Password: "p@ss:w/rd 100%", DeadLetterExchange: "orders.dlx",
		BindExchange: "events", RoutingKey: "orders.*", ConnectionName: "sluice/src1",
	}
	if got != want {
		t.Errorf("amqpConfig =\n%+v\nwant\n%+v", got, want)
	}
	if got.URL().Redacted() != "amqps://svc:xxxxx@mq.example.com:5671/team%2Fa" {
		t.Errorf("URL = %s", got.URL().Redacted())
	}
	if _, err := amqpConfig(&source.PubSub{Type: source.PubSubAMQP}, "src2"); err == nil {
		t.Error("amqpConfig without pub_sub.amqp = nil error")
	}
	if _, err := amqpConfig(&source.PubSub{Type: source.PubSubAMQP, AMQP: &source.AMQP{Host: "h"}}, "src3"); err == nil {
		t.Error("amqpConfig without a queue = nil error")
	}
}

var amqpUnsafe = regexp.MustCompile(`[^A-Za-z0-9_]+`)

// amqpE2E is one test's RabbitMQ objects: an exchange the source binds to,
// a dead-letter exchange with a queue to read it, and the source's queue.
type amqpE2E struct {
	t                       *testing.T
	conn                    *amqp091.Connection
	exchange, dlx, dlq, src string
	pubErr                  atomic.Pointer[error]
}

func newAMQPE2E(t *testing.T) *amqpE2E {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "test.e2e." + amqpUnsafe.ReplaceAllString(t.Name(), "_") + "." + hex.EncodeToString(b[:])
	conn, err := amqp091.Dial("amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		t.Fatalf("connect to RabbitMQ: %v", err)
	}
	e := &amqpE2E{t: t, conn: conn, exchange: name + ".in", dlx: name + ".dlx", dlq: name + ".dlq", src: name + ".q"}
	t.Cleanup(func() {
		_ = e.do(func(ch *amqp091.Channel) error {
			_, _ = ch.QueueDelete(e.src, false, false, false)
			_, _ = ch.QueueDelete(e.dlq, false, false, false)
			_ = ch.ExchangeDelete(e.exchange, false, false)
			return ch.ExchangeDelete(e.dlx, false, false)
		})
		_ = conn.Close()
	})
	if err := e.do(func(ch *amqp091.Channel) error {
		if err := ch.ExchangeDeclare(e.exchange, amqp091.ExchangeTopic, true, false, false, false, nil); err != nil {
			return err
		}
		if err := ch.ExchangeDeclare(e.dlx, amqp091.ExchangeFanout, true, false, false, false, nil); err != nil {
			return err
		}
		if _, err := ch.QueueDeclare(e.dlq, true, false, false, false, nil); err != nil {
			return err
		}
		return ch.QueueBind(e.dlq, "", e.dlx, false, nil)
	}); err != nil {
		t.Fatalf("declare test topology: %v", err)
	}
	return e
}

func (e *amqpE2E) do(f func(ch *amqp091.Channel) error) error {
	ch, err := e.conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	return f(ch)
}

// sourceBody is the create request of an AMQP source in Convoy's shape.
func (e *amqpE2E) sourceBody(workers int) map[string]any {
	return map[string]any{
		"name": "amqp " + e.src,
		"type": "pub_sub",
		"pub_sub": map[string]any{
			"type":    "amqp",
			"workers": workers,
			"amqp": map[string]any{
				"schema":             "amqp",
				"host":               "127.0.0.1",
				"port":               "5672",
				"queue":              e.src,
				"deadLetterExchange": e.dlx,
				"auth":               map[string]any{"user": "guest", "password": "guest"},
				"bindExchange":       map[string]any{"exchange": e.exchange, "routingKey": "orders.*"},
			},
		},
	}
}

// amqpMessageID is the message-id of test message seq.
func amqpMessageID(seq int) string { return "msg-" + strconv.Itoa(seq) }

// publish sends messages seq from..to-1 (and, when malformed > 0, one
// malformed message after every malformed-th) to the bound exchange, and
// waits for RabbitMQ's confirms. It returns how many malformed it sent.
func (e *amqpE2E) publish(from, to, malformedEvery int) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ch, err := e.conn.Channel()
	if err != nil {
		e.t.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		e.t.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 2*(to-from)+1))
	sent, malformed := 0, 0
	pub := func(p amqp091.Publishing) {
		if err := ch.PublishWithContext(ctx, e.exchange, "orders.created", false, false, p); err != nil {
			e.t.Fatalf("publish: %v", err)
		}
		sent++
	}
	for seq := from; seq < to; seq++ {
		pub(amqp091.Publishing{
			MessageId:   amqpMessageID(seq),
			ContentType: "application/json",
			Headers:     amqp091.Table{"x-tenant": "t-" + strconv.Itoa(seq%7)},
			Body:        messageBody(seq),
		})
		if malformedEvery > 0 && seq%malformedEvery == malformedEvery-1 {
			pub(amqp091.Publishing{MessageId: "bad-" + strconv.Itoa(seq), Body: []byte(`{"data":"no event type"}`)})
			malformed++
		}
	}
	for range sent {
		select {
		case c := <-confirms:
			if !c.Ack {
				e.t.Fatalf("publish %d nacked", c.DeliveryTag)
			}
		case <-ctx.Done():
			e.t.Fatal("publish confirms did not arrive")
		}
	}
	return malformed
}

// publishErr publishes valid messages from..to-1 like publish, for a
// goroutine other than the test's: it records the first error in pubErr.
func (e *amqpE2E) publishErr(from, to int) {
	if e.pubErr.Load() != nil {
		return
	}
	err := e.do(func(ch *amqp091.Channel) error {
		if err := ch.Confirm(false); err != nil {
			return err
		}
		confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, to-from))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for seq := from; seq < to; seq++ {
			if err := ch.PublishWithContext(ctx, e.exchange, "orders.created", false, false, amqp091.Publishing{
				MessageId: amqpMessageID(seq), ContentType: "application/json", Body: messageBody(seq),
			}); err != nil {
				return err
			}
		}
		for range to - from {
			if c := <-confirms; !c.Ack {
				return fmt.Errorf("publish %d nacked", c.DeliveryTag)
			}
		}
		return nil
	})
	if err != nil {
		e.pubErr.CompareAndSwap(nil, &err)
	}
}

// publishPaced publishes valid messages 0..n-1 at perSec in the background,
// so that a fault injected early lands mid-stream; wait blocks until all
// are published and confirmed.
func (e *amqpE2E) publishPaced(n int, perSec float64) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		lim := rate.NewLimiter(rate.Limit(perSec), 100)
		for from := 0; from < n; from += 100 {
			if lim.WaitN(context.Background(), 100) != nil {
				return
			}
			e.publishErr(from, min(from+100, n))
		}
	}()
	return func() {
		e.t.Helper()
		<-done
		if err := e.pubErr.Load(); err != nil {
			e.t.Fatalf("publish: %v", *err)
		}
	}
}

// ready is how many messages wait in queue (all of them when no consumer
// holds any).
func (e *amqpE2E) ready(queue string) int {
	e.t.Helper()
	var n int
	if err := e.do(func(ch *amqp091.Channel) error {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		n = q.Messages
		return err
	}); err != nil {
		e.t.Fatalf("inspect queue %s: %v", queue, err)
	}
	return n
}

func (e *amqpE2E) waitReady(queue string, want int, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := e.ready(queue)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("queue %s holds %d messages after %s, want %d", queue, got, timeout, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitWorkersRunning(d *daemon, project, id string, workers int) {
	d.t.Helper()
	waitWorkersRunningStatus(d, project, id, workers)
}

func waitWorkersRunningStatus(d *daemon, project, id string, workers int) supervisor.SourceStatus {
	d.t.Helper()
	return d.WaitStatus(project, id, 30*time.Second, fmt.Sprintf("%d workers running", workers), func(st supervisor.SourceStatus) bool {
		if len(st.Workers) != workers {
			return false
		}
		for _, w := range st.Workers {
			if w.State != supervisor.StateRunning {
				return false
			}
		}
		return true
	})
}

// TestE2EAMQP creates an AMQP source with 4 workers, a bound exchange and a
// dead-letter exchange through the API, publishes 20,000 messages and some
// malformed ones to the exchange: every message is in the dispatch stream
// once with the right envelope, every malformed one in the dead-letter
// exchange's queue.
func TestE2EAMQP(t *testing.T) {
	t.Parallel()
	const n = 20000
	e := newAMQPE2E(t) // first: its cleanup runs after the daemon is gone
	d := startDaemon(t)
	src := d.CreateSource("p1", e.sourceBody(4))
	if src.PubSub == nil || src.PubSub.AMQP == nil || src.PubSub.AMQP.BindExchange == nil ||
		src.PubSub.AMQP.BindExchange.Exchange != e.exchange || src.PubSub.AMQP.BindExchange.RoutingKey != "orders.*" {
		t.Fatalf("created source: %+v", src.PubSub)
	}
	waitWorkersRunning(d, "p1", src.UID, 4)

	malformed := e.publish(0, n, 500)
	d.WaitStream(n, 2*time.Minute)
	e.waitReady(e.dlq, malformed, time.Minute)
	e.waitReady(e.src, 0, time.Minute)

	events := d.RequireExactlyOnce(n)
	for _, ev := range events {
		seq := eventSeq(t, ev)
		requireEnvelope(t, ev, src.UID, "amqp", amqpMessageID(seq), map[string]string{
			"x-tenant":           "t-" + strconv.Itoa(seq%7),
			"x-amqp-exchange":    e.exchange,
			"x-amqp-routing-key": "orders.created",
		})
	}

	// The dead-letter queue holds exactly the malformed messages.
	dead := map[string]int{}
	if err := e.do(func(ch *amqp091.Channel) error {
		for {
			m, ok, err := ch.Get(e.dlq, true)
			if err != nil || !ok {
				return err
			}
			dead[m.MessageId]++
		}
	}); err != nil {
		t.Fatal(err)
	}
	if len(dead) != malformed {
		t.Errorf("dead-letter queue holds %d distinct messages, want %d", len(dead), malformed)
	}
	for id, c := range dead {
		if c != 1 || id[:4] != "bad-" {
			t.Errorf("dead-letter queue holds %q %d times", id, c)
		}
	}
	st := d.Status("p1", src.UID)
	var dispatched, deadLettered int64
	for _, w := range st.Workers {
		dispatched += w.Dispatched
		deadLettered += w.DeadLettered
	}
	t.Logf("status: %d dispatched, %d dead-lettered over %d workers", dispatched, deadLettered, len(st.Workers))
	if rss, err := processRSS(d); err == nil {
		t.Logf("sluice serve RSS after %d messages with 4 workers: %.1f MiB", n, float64(rss)/(1<<20))
	}
}

// processRSS reads the resident set size of the daemon's process.
func processRSS(d *daemon) (int64, error) {
	d.mu.Lock()
	cmd := d.cmd
	d.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return 0, errors.New("no process")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	var size, resident int64
	if _, err := fmt.Sscanf(string(b), "%d %d", &size, &resident); err != nil {
		return 0, err
	}
	return resident * int64(os.Getpagesize()), nil
}

// TestE2EAMQPKillAndRestart kills sluice serve (SIGKILL) while it drains a
// queue and starts it again: the unacked messages come back from RabbitMQ
// and the dispatch stream holds every message exactly once.
func TestE2EAMQPKillAndRestart(t *testing.T) {
	t.Parallel()
	const n = 16000
	e := newAMQPE2E(t) // first: its cleanup runs after the daemon is gone
	d := startDaemon(t)
	src := d.CreateSource("p1", e.sourceBody(2))
	waitWorkersRunning(d, "p1", src.UID, 2)
	published := e.publishPaced(n, 2000)
	d.WaitStream(n/8, time.Minute)
	d.Kill()
	killedAt, _ := d.RDB.XLen(context.Background(), d.StreamKey()).Result()
	if killedAt >= n {
		t.Fatalf("all %d messages were written before the kill; publish more", killedAt)
	}
	t.Logf("killed with %d of %d messages in the stream", killedAt, n)
	d.Start()
	published()
	d.WaitStream(n, 2*time.Minute)
	e.waitReady(e.src, 0, time.Minute)
	d.RequireExactlyOnce(n)
}

// TestE2EAMQPTermDrains stops sluice serve with SIGTERM while it drains a
// 20,000-message queue: /readyz answers 503 through the shutdown delay, the
// process exits 0 within delay + grace having acked what it wrote, so the
// stream and the queue together hold every message exactly once; a restart
// finishes the queue.
func TestE2EAMQPTermDrains(t *testing.T) {
	t.Parallel()
	const n = 20000
	const grace, delay = 15 * time.Second, time.Second
	e := newAMQPE2E(t) // first: its cleanup runs after the daemon is gone
	d := startDaemon(t, "SLUICE_SHUTDOWN_GRACE="+grace.String(), "SLUICE_SHUTDOWN_DELAY="+delay.String())
	src := d.CreateSource("p1", e.sourceBody(4))
	waitWorkersRunning(d, "p1", src.UID, 4)
	published := e.publishPaced(n, 2000)
	d.WaitStream(n/8, time.Minute)
	took, notReady := d.Terminate(2 * grace)
	t.Logf("SIGTERM → exit 0 in %s; /readyz answered 503 %d times meanwhile", took.Round(time.Millisecond), notReady)
	if took < delay || took > delay+grace {
		t.Errorf("exit took %s, want between the %s delay and delay + the %s grace", took, delay, grace)
	}
	if notReady == 0 {
		t.Error("/readyz never answered 503 while sluice shut down")
	}
	written, err := d.RDB.XLen(context.Background(), d.StreamKey()).Result()
	if err != nil {
		t.Fatal(err)
	}
	published() // into the queue, with sluice stopped
	left := e.ready(e.src)
	if written >= n {
		t.Fatalf("all %d messages were written before the stop; publish more", written)
	}
	t.Logf("drained: %d in the stream, %d left in the queue", written, left)
	if int(written)+left != n {
		t.Errorf("after the drain the stream holds %d and the queue %d: %d messages were written but not acked", written, left, int(written)+left-n)
	}
	d.Start()
	d.WaitStream(n, 2*time.Minute)
	e.waitReady(e.src, 0, time.Minute)
	d.RequireExactlyOnce(n)
}

// TestE2EAMQPConnectionsClosed closes the workers' connections on the broker
// (only this source's, found by their connection name) while messages flow:
// the workers report it in /status, reconnect by themselves, and the stream
// holds every message exactly once.
func TestE2EAMQPConnectionsClosed(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: rabbitmqctl")
	}
	t.Parallel()
	const (
		n       = 16000
		perSec  = 2000 // the stream lasts 8s
		workers = 2
	)
	e := newAMQPE2E(t) // first: its cleanup runs after the daemon is gone
	d := startDaemon(t)
	src := d.CreateSource("p1", e.sourceBody(workers))
	waitWorkersRunning(d, "p1", src.UID, workers)
	pids := amqpConnectionPIDs(t, "sluice/"+src.UID)
	if len(pids) != workers {
		t.Fatalf("found %d connections named sluice/%s, want %d", len(pids), src.UID, workers)
	}

	published := e.publishPaced(n, perSec)
	d.WaitStream(n/8, time.Minute)
	var wg sync.WaitGroup
	for _, pid := range pids {
		wg.Go(func() {
			if out, err := exec.Command("rabbitmqctl", "-q", "close_connection", pid, "sluice e2e test").CombinedOutput(); err != nil {
				t.Errorf("close_connection %s: %v\n%s", pid, err, out)
			}
		})
	}
	wg.Wait()
	if got, _ := d.RDB.XLen(context.Background(), d.StreamKey()).Result(); got >= n {
		t.Fatalf("all %d messages were written before the connections closed; publish more or slower", got)
	}
	published()
	d.WaitStream(n, 2*time.Minute)
	e.waitReady(e.src, 0, time.Minute)
	d.RequireExactlyOnce(n)
	st := waitWorkersRunningStatus(d, "p1", src.UID, workers)
	for _, w := range st.Workers {
		if w.Failures == 0 || w.LastError == "" {
			t.Errorf("worker %d: %d failures, last error %q; want the closed connection reported", w.Worker, w.Failures, w.LastError)
		}
	}
}

// amqpConnectionPIDs lists the broker's pids of the connections whose
// client-provided connection_name is name or starts with name + "/".
func amqpConnectionPIDs(t *testing.T, name string) []string {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties").CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl list_connections: %v\n%s", err, out)
	}
	var pids []string
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, `"`+name+`"`) || strings.Contains(line, `"`+name+`/`) {
			if pid, _, ok := strings.Cut(line, "\t"); ok {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// BenchmarkE2EAMQP drains a backlog of n messages from a RabbitMQ queue
// into Redis, in one run: the raw amqp091-go pipeline (prefetch 500, what has
// arrived → one pipelined XADD per message → one multi-ack; and the same
// with sluice's batching, prefetch 200 and batches of 100 or 50ms) against a
// sluice serve process (the real supervisor, handler and dispatch queue)
// with an AMQP source of 1 and of 4 workers. The phases rotate their order
// every iteration.
//
//	go test -run '^$' -bench BenchmarkE2EAMQP -benchtime 3x ./cmd/sluice
func BenchmarkE2EAMQP(b *testing.B) {
	const n = 20000
	d := startDaemon(b)
	conn, err := amqp091.Dial("amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() }) // after the queues' cleanups
	var b8 [4]byte
	_, _ = rand.Read(b8[:])
	name := "test.e2e.bench." + hex.EncodeToString(b8[:])
	ctx := context.Background()

	// backlog declares a fresh queue holding n messages.
	backlog := func(queue string) {
		b.StopTimer()
		defer b.StartTimer()
		ch, err := conn.Channel()
		if err != nil {
			b.Fatal(err)
		}
		defer ch.Close()
		if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(queue, false, false, false)
				_ = ch.Close()
			}
		})
		if err := ch.Confirm(false); err != nil {
			b.Fatal(err)
		}
		confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, n))
		for seq := range n {
			if err := ch.PublishWithContext(ctx, "", queue, false, false, amqp091.Publishing{
				MessageId: queue + "-" + strconv.Itoa(seq), Body: messageBody(seq),
			}); err != nil {
				b.Fatal(err)
			}
		}
		for range n {
			if c := <-confirms; !c.Ack {
				b.Fatal("publish nacked")
			}
		}
	}
	viaSluice := func(queue string, workers int) time.Duration {
		backlog(queue)
		before, err := d.RDB.XLen(ctx, d.StreamKey()).Result()
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		body := map[string]any{"name": queue, "type": "pub_sub", "pub_sub": map[string]any{
			"type": "amqp", "workers": workers,
			"amqp": map[string]any{"schema": "amqp", "host": "127.0.0.1", "port": "5672", "queue": queue,
				"auth": map[string]any{"user": "guest", "password": "guest"}},
		}}
		src := d.CreateSource("bench", body)
		for {
			got, err := d.RDB.XLen(ctx, d.StreamKey()).Result()
			if err != nil {
				b.Fatal(err)
			}
			if got-before >= n {
				break
			}
			if time.Since(start) > 5*time.Minute {
				b.Fatalf("sluice wrote %d of %d in 5 minutes", got-before, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
		elapsed := time.Since(start)
		if code, out := d.Do("DELETE", "/api/v1/projects/bench/sources/"+src.UID, nil); code != 200 {
			b.Fatalf("delete source: %d %s", code, out)
		}
		return elapsed
	}
	viaRaw := func(queue, stream string, prefetch, size int, wait time.Duration) time.Duration {
		backlog(queue)
		start := time.Now()
		ch, err := conn.Channel()
		if err != nil {
			b.Fatal(err)
		}
		defer ch.Close()
		if err := ch.Qos(prefetch, 0, false); err != nil {
			b.Fatal(err)
		}
		deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		batch := make([]amqp091.Delivery, 0, size)
		for got := 0; got < n; got += len(batch) {
			batch = append(batch[:0], <-deliveries)
			timeout := time.After(wait) // wait 0: only what has arrived
		more:
			for len(batch) < size {
				select {
				case m := <-deliveries:
					batch = append(batch, m)
				default:
					if wait == 0 {
						break more
					}
					select {
					case m := <-deliveries:
						batch = append(batch, m)
					case <-timeout:
						break more
					}
				}
			}
			pipe := d.RDB.Pipeline()
			for _, m := range batch {
				pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"id", m.MessageId, "data", m.Body}})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
			if err := ch.Ack(batch[len(batch)-1].DeliveryTag, true); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}

	var raw, rawBatched, one, four time.Duration
	for i := 0; b.Loop(); i++ {
		q := fmt.Sprintf("%s.%d", name, i)
		phases := []func(){
			func() { raw += viaRaw(q+".raw", d.Prefix+":rawbench", 500, 500, 0) },
			func() { rawBatched += viaRaw(q+".rawbatched", d.Prefix+":rawbench", 200, 100, 50*time.Millisecond) },
			func() { one += viaSluice(q+".w1", 1) },
			func() { four += viaSluice(q+".w4", 4) },
		}
		for j := range phases {
			phases[(i+j)%len(phases)]()
		}
	}
	perSec := func(t time.Duration) float64 { return float64(n*b.N) / t.Seconds() }
	b.ReportMetric(perSec(raw), "raw_msgs/s")
	b.ReportMetric(perSec(rawBatched), "raw_batched_msgs/s")
	b.ReportMetric(perSec(one), "sluice_1w_msgs/s")
	b.ReportMetric(perSec(four), "sluice_4w_msgs/s")
	b.ReportMetric(perSec(one)/perSec(raw), "1w/raw")
	b.ReportMetric(perSec(four)/perSec(raw), "4w/raw")
	b.ReportMetric(perSec(one)/perSec(rawBatched), "1w/raw_batched")
	if rss, err := processRSS(d); err == nil {
		b.ReportMetric(float64(rss)/(1<<20), "serve_RSS_MiB")
	}
}

// TestE2EAMQPRedisStopped stops sluice's Redis (a private redis-server that
// holds both the sources and the dispatch stream) for 5 seconds while
// messages flow: the workers keep running, report the failing writes, retry
// without acking, and the stream ends with every message exactly once.
func TestE2EAMQPRedisStopped(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: a 5s outage")
	}
	t.Parallel()
	const n = 16000
	r := dispatchtest.StartRedis(t)
	e := newAMQPE2E(t) // before the daemon: its cleanup runs after the daemon is gone
	d := startDaemon(t, "SLUICE_REDIS_URL="+r.URL())
	src := d.CreateSource("p1", e.sourceBody(2))
	waitWorkersRunning(d, "p1", src.UID, 2)
	published := e.publishPaced(n, 2000)
	d.WaitStream(n/8, time.Minute)
	r.Stop()
	// The status route needs Redis (it looks the source up), so the outage
	// is checked afterwards in the workers' failure counts.
	time.Sleep(5 * time.Second) // the outage itself
	r.Start()
	published()
	d.WaitStream(n, 2*time.Minute)
	e.waitReady(e.src, 0, time.Minute)
	d.RequireExactlyOnce(n)
	st := waitWorkersRunningStatus(d, "p1", src.UID, 2)
	var failures int64
	for _, w := range st.Workers {
		failures += w.Failures
	}
	if failures == 0 {
		t.Errorf("no worker reported a failure during the Redis outage: %+v", st.Workers)
	}
}

// publishRaw publishes n messages to the bound exchange with message-ids
// name-0..name-(n-1); format gets the index for its %d.
func (e *amqpE2E) publishRaw(name string, n int, format string) {
	e.t.Helper()
	if err := e.do(func(ch *amqp091.Channel) error {
		for i := range n {
			if err := ch.PublishWithContext(context.Background(), e.exchange, "orders.created", false, false, amqp091.Publishing{
				MessageId: name + "-" + strconv.Itoa(i), Body: fmt.Appendf(nil, format, i),
			}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		e.t.Fatalf("publish: %v", err)
	}
}
