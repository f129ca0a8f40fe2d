package amqp

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
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

// waitStream waits until the dispatch stream holds at least n entries. Tests
// with faults wait on the stream, not on the handler's Written count: a
// write whose reply was lost comes back as a Duplicate when retried.
func waitStream(tb testing.TB, rdb *redis.Client, q *dispatch.Queue, n int, timeout time.Duration) {
	tb.Helper()
	dispatchtest.WaitFor(tb, timeout, fmt.Sprintf("%d entries in the dispatch stream", n), func() bool {
		got, _ := rdb.XLen(context.Background(), q.StreamKey()).Result()
		return got >= int64(n)
	})
}
