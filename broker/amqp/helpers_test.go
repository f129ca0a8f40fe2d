package amqp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/dispatch"
)

func TestMain(m *testing.M) {
	// go-redis logs every failed dial of the Redis outage test.
	redis.SetLogger(quietRedis{})
	goleak.VerifyTestMain(m)
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// The real RabbitMQ and Redis of the machine (overridable for CI).
func rabbitHost() string { return envOr("SLUICE_TEST_AMQP_HOST", "127.0.0.1") }
func rabbitPort() string { return envOr("SLUICE_TEST_AMQP_PORT", "5672") }
func redisAddr() string  { return envOr("SLUICE_TEST_REDIS_ADDR", "127.0.0.1:6379") }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9_]+`)

// uniqueName is a queue, exchange or key prefix no other test uses.
func uniqueName(tb testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "test.amqp." + unsafeChars.ReplaceAllString(tb.Name(), "_") + "." + hex.EncodeToString(b[:])
}

// testConfig is a consumer config for queue on the test broker.
func testConfig(queue string) Config {
	return Config{
		Host:      rabbitHost(),
		Port:      rabbitPort(),
		User:      "guest",
		Password:  "guest",
		Queue:     queue,
		Reconnect: broker.Backoff{Min: 50 * time.Millisecond, Max: time.Second},
	}
}

func newConsumer(tb testing.TB, cfg Config) *Consumer {
	tb.Helper()
	c, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return c
}

// admin is a connection for the test's own declares, publishes and counts.
type admin struct {
	tb   testing.TB
	conn *amqp091.Connection
}

func newAdmin(tb testing.TB) *admin {
	tb.Helper()
	conn, err := amqp091.Dial(testConfig("").URL().String())
	if err != nil {
		tb.Fatalf("connect to RabbitMQ: %v", err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return &admin{tb: tb, conn: conn}
}

// do runs f on a fresh channel (a failed operation closes its channel).
func (a *admin) do(f func(ch *amqp091.Channel) error) error {
	ch, err := a.conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	return f(ch)
}

// queue declares a durable queue like the consumer does and deletes it when
// the test ends.
func (a *admin) queue(name, dlx string) {
	a.tb.Helper()
	var args amqp091.Table
	if dlx != "" {
		args = amqp091.Table{"x-dead-letter-exchange": dlx}
	}
	if err := a.do(func(ch *amqp091.Channel) error {
		_, err := ch.QueueDeclare(name, true, false, false, false, args)
		return err
	}); err != nil {
		a.tb.Fatalf("declare queue %s: %v", name, err)
	}
	a.tb.Cleanup(func() {
		_ = a.do(func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(name, false, false, false); return err })
	})
}

// exchange declares an exchange and deletes it when the test ends.
func (a *admin) exchange(name, kind string) {
	a.tb.Helper()
	if err := a.do(func(ch *amqp091.Channel) error {
		return ch.ExchangeDeclare(name, kind, false, false, false, false, nil)
	}); err != nil {
		a.tb.Fatalf("declare exchange %s: %v", name, err)
	}
	a.tb.Cleanup(func() {
		_ = a.do(func(ch *amqp091.Channel) error { return ch.ExchangeDelete(name, false, false) })
	})
}

// bind binds queue to exchange with key.
func (a *admin) bind(queue, exchange, key string) {
	a.tb.Helper()
	if err := a.do(func(ch *amqp091.Channel) error { return ch.QueueBind(queue, key, exchange, false, nil) }); err != nil {
		a.tb.Fatalf("bind %s to %s: %v", queue, exchange, err)
	}
}

// ready is the queue's count of messages ready for delivery; with no
// consumer attached that is every message the queue holds.
func (a *admin) ready(ctx context.Context, queue string) (int, error) {
	var n int
	err := a.do(func(ch *amqp091.Channel) error {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		n = q.Messages
		return err
	})
	return n, err
}

// publish sends msgs to exchange with routing key key and waits until
// RabbitMQ has confirmed every one.
func (a *admin) publish(ctx context.Context, exchange, key string, msgs []amqp091.Publishing) error {
	ch, err := a.conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, len(msgs)))
	for _, m := range msgs {
		if err := ch.PublishWithContext(ctx, exchange, key, false, false, m); err != nil {
			return err
		}
	}
	for range msgs {
		select {
		case c, ok := <-confirms:
			if !ok {
				return errors.New("channel closed before every publish was confirmed")
			}
			if !c.Ack {
				return fmt.Errorf("publish %d was nacked", c.DeliveryTag)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// event is a valid Convoy pub/sub message with message-id id.
func event(id string, seq int) amqp091.Publishing {
	return amqp091.Publishing{
		MessageId:   id,
		ContentType: "application/json",
		Headers:     amqp091.Table{"x-convoy-message-type": "broadcast", "x-seq": int32(seq)},
		Body:        fmt.Appendf(nil, `{"event_type":"test.created","data":{"seq":%d,"id":%q}}`, seq, id),
	}
}

// rabbitmqctl runs the broker's CLI (slow: seconds per call).
func rabbitmqctl(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := rabbitmqctlErr(args...)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// rabbitmqctlErr is rabbitmqctl for goroutines other than the test's.
func rabbitmqctlErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", append([]string{"-q"}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("rabbitmqctl %s: %w\n%s", args[0], err, out)
	}
	return string(out), nil
}

// connectionsNamed lists the broker pids of the connections whose
// client-provided connection_name is name.
func connectionsNamed(tb testing.TB, name string) []string {
	tb.Helper()
	out := rabbitmqctl(tb, "list_connections", "--no-table-headers", "pid", "client_properties")
	var names []string
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `"`+name+`"`) && !strings.Contains(line, "<<\""+name+"\">>") {
			continue
		}
		conn, _, ok := strings.Cut(line, "\t")
		if ok {
			names = append(names, conn)
		}
	}
	return names
}

// --- dispatch glue ---

// testRedis connects to addr and deletes every key of prefix at the end.
func testRedis(tb testing.TB, addr, prefix string) *redis.Client {
	tb.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		tb.Fatalf("redis at %s: %v", addr, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, pattern := range []string{prefix + ":*", "{" + prefix + ":*"} {
			iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
			var keys []string
			for iter.Next(ctx) {
				keys = append(keys, iter.Val())
				if len(keys) == 1000 {
					rdb.Unlink(ctx, keys...)
					keys = keys[:0]
				}
			}
			if len(keys) > 0 {
				rdb.Unlink(ctx, keys...)
			}
		}
		_ = rdb.Close()
	})
	return rdb
}

// dispatchHandler is test glue standing where the supervisor's handler
// adapter stands in production: it decodes every message and enqueues the
// batch on a real dispatch queue. Malformed messages are Rejected when
// reject is set (the source has a dead-letter exchange); otherwise they fail
// the batch, so tests without one publish only valid messages.
type dispatchHandler struct {
	q        *dispatch.Queue
	sourceID string
	reject   bool

	written    atomic.Int64 // events newly written to the stream
	duplicates atomic.Int64 // redeliveries the dedupe absorbed
	failures   atomic.Int64 // Failing reports
	healthy    atomic.Int64
	target     int64
	done       chan struct{}
	once       sync.Once

	mu      sync.Mutex
	lastErr error
}

func newDispatchHandler(q *dispatch.Queue, sourceID string, target int) *dispatchHandler {
	return &dispatchHandler{q: q, sourceID: sourceID, target: int64(target), done: make(chan struct{})}
}

func (h *dispatchHandler) Handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	results := make([]broker.Result, len(batch))
	events := make([]dispatch.Event, 0, len(batch))
	for i, m := range batch {
		ev, err := dispatch.Decode(dispatch.Raw{
			ProjectID: "project", SourceID: h.sourceID, Broker: "amqp",
			MessageID: m.ID, Body: m.Body, Headers: m.Headers,
		}, dispatch.DecodeOptions{})
		if err != nil {
			if dispatch.IsPermanent(err) && h.reject {
				results[i] = broker.Rejected
				continue
			}
			return nil, err
		}
		events = append(events, ev)
	}
	if len(events) > 0 {
		out, err := h.q.Enqueue(ctx, events)
		if err != nil {
			return nil, err
		}
		var n int64
		for _, o := range out {
			if o == dispatch.Written {
				n++
			} else {
				h.duplicates.Add(1)
			}
		}
		if h.written.Add(n) >= h.target {
			h.once.Do(func() { close(h.done) })
		}
	}
	return results, nil
}

func (h *dispatchHandler) Failing(err error) {
	h.failures.Add(1)
	h.mu.Lock()
	h.lastErr = err
	h.mu.Unlock()
}

func (h *dispatchHandler) Healthy() { h.healthy.Add(1) }

// wait waits until the handler has written its target or the timeout ends.
func (h *dispatchHandler) wait(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	select {
	case <-h.done:
	case <-time.After(timeout):
		tb.Fatalf("written %d of %d events within %v", h.written.Load(), h.target, timeout)
	}
}

// waitStream waits until the dispatch stream holds at least n entries. Tests
// with faults wait on the stream, not on the handler's Written count: a
// write whose reply was lost comes back as a Duplicate when retried.
func waitStream(tb testing.TB, rdb *redis.Client, q *dispatch.Queue, n int, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	var got int64
	for {
		got, _ = rdb.XLen(context.Background(), q.StreamKey()).Result()
		if got >= int64(n) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("dispatch stream holds %d of %d entries after %v", got, n, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamCounts reads the whole dispatch stream and counts the entries per
// broker message id.
func streamCounts(tb testing.TB, rdb *redis.Client, q *dispatch.Queue) (map[string]int, []dispatch.Event) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	counts := make(map[string]int)
	var events []dispatch.Event
	start := "-"
	for {
		entries, err := rdb.XRangeN(ctx, q.StreamKey(), start, "+", 5000).Result()
		if err != nil {
			tb.Fatalf("read dispatch stream: %v", err)
		}
		for _, e := range entries {
			ev, err := dispatch.ParseEntry(e.Values)
			if err != nil {
				tb.Fatalf("entry %s: %v", e.ID, err)
			}
			counts[ev.BrokerMessageID]++
			events = append(events, ev)
		}
		if len(entries) < 5000 {
			return counts, events
		}
		start = "(" + entries[len(entries)-1].ID
	}
}

// checkExactlyOnce fails unless the stream holds ids[i] exactly once each
// and nothing else.
func checkExactlyOnce(tb testing.TB, counts map[string]int, ids []string) {
	tb.Helper()
	missing, dups := 0, 0
	for _, id := range ids {
		switch n := counts[id]; {
		case n == 0:
			missing++
		case n > 1:
			dups += n - 1
		}
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	if missing != 0 || dups != 0 || total != len(ids) {
		tb.Fatalf("stream holds %d entries for %d messages: %d missing, %d duplicated", total, len(ids), missing, dups)
	}
}

// --- a private redis-server that a test may stop ---

type privateRedis struct {
	tb   testing.TB
	port string
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

func freePort(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// startPrivateRedis starts a redis-server on a free port with an
// append-only file, so that a stop and a start keep its data.
func startPrivateRedis(tb testing.TB) *privateRedis {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Skip("redis-server not installed")
	}
	r := &privateRedis{tb: tb, port: freePort(tb), dir: tb.TempDir()}
	r.start()
	tb.Cleanup(r.stop)
	return r
}

func (r *privateRedis) addr() string { return "127.0.0.1:" + r.port }

func (r *privateRedis) start() {
	r.tb.Helper()
	var out bytes.Buffer
	r.cmd = exec.Command("redis-server", "--port", r.port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
		"--dir", r.dir, "--logfile", filepath.Join(r.dir, "redis.log"))
	r.cmd.Stdout, r.cmd.Stderr = &out, &out
	if err := r.cmd.Start(); err != nil {
		r.tb.Fatalf("start redis-server: %v", err)
	}
	r.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(r.cmd, r.done)
	rdb := redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for rdb.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			r.tb.Fatalf("redis-server on %s did not come up: %s", r.port, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop shuts the server down (SIGTERM: it flushes its append-only file)
// and waits for it to exit.
func (r *privateRedis) stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}
