package kafka_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/broker/kafka"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

// collector is a Handler that keeps what it is handed and its health reports.
type collector struct {
	mu      sync.Mutex
	msgs    map[string]broker.Message // by ID
	failing []error
	healthy int
}

func newCollector() *collector { return &collector{msgs: make(map[string]broker.Message)} }

func (c *collector) Handle(_ context.Context, batch []broker.Message) ([]broker.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range batch {
		c.msgs[m.ID] = m
	}
	return make([]broker.Result, len(batch)), nil
}

func (c *collector) Failing(err error) {
	c.mu.Lock()
	c.failing = append(c.failing, err)
	c.mu.Unlock()
}

func (c *collector) Healthy() {
	c.mu.Lock()
	c.healthy++
	c.mu.Unlock()
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func TestMessageShape(t *testing.T) {
	t.Parallel()
	e := newKafka(t, nil)
	topic := e.topic(t, 1)
	ctx := context.Background()
	if err := e.produce(ctx, topic, []*kgo.Record{
		{Key: []byte("order-7"), Value: []byte(`{"a":1}`), Headers: []kgo.RecordHeader{{Key: "X-Convoy-Message-Type", Value: []byte("broadcast")}}},
		{Value: []byte(`{"b":2}`)},
	}); err != nil {
		t.Fatal(err)
	}
	c, err := kafka.New(config(e, topic, unique("g")), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := newCollector()
	stop := brokertest.Start(t, c, h)
	eventually(t, 20*time.Second, "2 messages", func() (bool, string) { return h.count() == 2, fmt.Sprint(h.count()) })
	stop()
	first := h.msgs[topic+"/0/0"]
	if string(first.Body) != `{"a":1}` || first.Headers["x-kafka-key"] != "order-7" || first.Headers["X-Convoy-Message-Type"] != "broadcast" || first.PublishedAt.IsZero() {
		t.Errorf("message 0 = %+v", first)
	}
	second, ok := h.msgs[topic+"/0/1"]
	if !ok {
		t.Fatalf("no message %s/0/1 in %v", topic, h.msgs)
	}
	if _, has := second.Headers["x-kafka-key"]; has {
		t.Errorf("a record without key got header x-kafka-key: %v", second.Headers)
	}
}

func TestSASL(t *testing.T) {
	t.Parallel()
	e := newKafka(t, []kfake.Opt{
		kfake.EnableSASL(),
		kfake.Superuser("PLAIN", "admin", "admin-secret"),
		kfake.User("PLAIN", "plainuser", "plain-secret"),
		kfake.User("SCRAM-SHA-256", "scram256", "scram256-secret"),
		kfake.User("SCRAM-SHA-512", "scram512", "scram512-secret"),
	}, kgo.SASL(plain.Auth{User: "admin", Pass: "admin-secret"}.AsMechanism()))
	topic := e.topic(t, 2)
	if err := e.produce(context.Background(), topic, records(50)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		auth kafka.Auth
	}{
		{"plain", kafka.Auth{Mechanism: "plain", Username: "plainuser", Password: "plain-secret"}},
		{"scram-sha-256", kafka.Auth{Mechanism: "scram", Hash: "SHA256", Username: "scram256", Password: "scram256-secret"}},
		{"scram-sha-512", kafka.Auth{Mechanism: "scram", Hash: "SHA512", Username: "scram512", Password: "scram512-secret"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := config(e, topic, unique("g"))
			cfg.Auth = tc.auth
			c, err := kafka.New(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			h := newCollector()
			stop := brokertest.Start(t, c, h)
			eventually(t, 20*time.Second, "50 messages", func() (bool, string) { return h.count() == 50, fmt.Sprint(h.count()) })
			stop()
		})
		t.Run(tc.name+"/wrong-password", func(t *testing.T) {
			t.Parallel()
			cfg := config(e, topic, unique("g"))
			cfg.Auth = tc.auth
			cfg.Auth.Password = "not-" + cfg.Auth.Password
			c, err := kafka.New(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err = c.Run(ctx, newCollector())
			if !contains(err, "sasl", "authentication failed", e.addrs[0]) {
				t.Fatalf("Run with a wrong password = %v, want a SASL authentication error naming the broker", err)
			}
			t.Logf("Run = %v", err)
			if strings.Contains(err.Error(), cfg.Auth.Password) {
				t.Fatalf("error reveals the password: %v", err)
			}
		})
	}
}

func TestStartErrors(t *testing.T) {
	t.Parallel()
	e := newKafka(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	c, err := kafka.New(config(e, "no-such-topic", unique("g")), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(ctx, newCollector()); !contains(err, "no-such-topic") {
		t.Errorf("Run on a missing topic = %v, want an error naming the topic", err)
	}

	cfg := config(e, "t", unique("g"))
	cfg.Brokers = []string{"127.0.0.1:" + strconv.Itoa(dispatchtest.FreePort(t))}
	c, err = kafka.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(ctx, newCollector()); !contains(err, "connect to kafka broker", cfg.Brokers[0]) {
		t.Errorf("Run without a broker = %v, want a connection error naming the broker", err)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	valid := kafka.Config{Brokers: []string{"k:9092"}, Topic: "t", GroupID: "g"}
	for _, tc := range []struct {
		name   string
		change func(*kafka.Config)
		want   []string // substrings of the error, none for valid
	}{
		{"valid", func(*kafka.Config) {}, nil},
		{"scram defaults to SHA256", func(c *kafka.Config) {
			c.Auth = kafka.Auth{Mechanism: "scram", Username: "u", Password: "p"}
		}, nil},
		{"tls without sasl", func(c *kafka.Config) { c.Auth = kafka.Auth{TLS: true} }, nil},
		{"everything missing", func(c *kafka.Config) { *c = kafka.Config{} }, []string{"brokers:", "topic:", "group_id:"}},
		{"blank group", func(c *kafka.Config) { c.GroupID = " " }, []string{"group_id:"}},
		{"bad broker", func(c *kafka.Config) { c.Brokers = []string{"k:9092", "nohost"} }, []string{"brokers[1]"}},
		{"bad mechanism", func(c *kafka.Config) { c.Auth = kafka.Auth{Mechanism: "gssapi"} }, []string{"auth.type"}},
		{"sasl without credentials", func(c *kafka.Config) { c.Auth = kafka.Auth{Mechanism: "plain"} }, []string{"auth.username", "auth.password"}},
		{"bad hash", func(c *kafka.Config) {
			c.Auth = kafka.Auth{Mechanism: "scram", Hash: "MD5", Username: "u", Password: "p"}
		}, []string{"auth.hash"}},
		{"ca without tls", func(c *kafka.Config) { c.Auth = kafka.Auth{CACert: "x"} }, []string{"auth.ca_cert"}},
		{"ca not pem", func(c *kafka.Config) { c.Auth = kafka.Auth{TLS: true, CACert: "not pem"} }, []string{"auth.ca_cert"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.change(&cfg)
			err := cfg.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				if _, err := kafka.New(cfg, nil); err != nil {
					t.Fatalf("New = %v", err)
				}
				return
			}
			if !contains(err, tc.want...) {
				t.Fatalf("Validate = %v, want mentions of %q", err, tc.want)
			}
			if _, err := kafka.New(cfg, nil); err == nil {
				t.Fatal("New accepted an invalid config")
			}
		})
	}
	if got := kafka.DefaultGroupID("src1"); got != "sluice-src1" {
		t.Errorf("DefaultGroupID = %q", got)
	}
}

// TestIdleWorkers: with more workers than partitions, the extra ones get no
// partition and say so; the lag of the others covers the whole backlog.
func TestIdleWorkers(t *testing.T) {
	t.Parallel()
	e := newKafka(t, nil)
	topic := e.topic(t, 2)
	group := unique("g")
	cs := make([]*kafka.Consumer, 3)
	for i := range cs {
		c, err := kafka.New(config(e, topic, group), nil)
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = c
		brokertest.Start(t, c, newCollector())
	}
	eventually(t, 20*time.Second, "a stable assignment of 2 partitions to 3 workers", func() (bool, string) {
		var assigned, idle int
		var detail []string
		for _, c := range cs {
			parts, ok := c.Partitions()
			if !ok {
				return false, "a worker has no assignment yet"
			}
			if len(parts) == 0 {
				idle++
			}
			assigned += len(parts)
			detail = append(detail, fmt.Sprint(parts))
			if lag, ok := c.Lag(); !ok || lag != 0 {
				return false, fmt.Sprintf("lag %d %v", lag, ok)
			}
		}
		return assigned == 2 && idle == 1, strings.Join(detail, " ")
	})
}

// blockingHandler blocks every Handle until release is closed.
type blockingHandler struct {
	*collector
	release chan struct{}
}

func (b *blockingHandler) Handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	<-b.release
	return b.collector.Handle(ctx, batch)
}

// TestLag: the lag counts what waits behind the group's committed offsets on
// the worker's partitions, and drains to 0.
func TestLag(t *testing.T) {
	t.Parallel()
	e := newKafka(t, nil)
	topic := e.topic(t, 3)
	if err := e.produce(context.Background(), topic, records(90)); err != nil {
		t.Fatal(err)
	}
	c, err := kafka.New(config(e, topic, unique("g")), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &blockingHandler{collector: newCollector(), release: make(chan struct{})}
	brokertest.Start(t, c, h)
	eventually(t, 20*time.Second, "lag 90 over 3 partitions", func() (bool, string) {
		parts, ok := c.Partitions()
		lag, _ := c.Lag()
		return ok && len(parts) == 3 && lag == 90, fmt.Sprint(parts, lag)
	})
	close(h.release)
	eventually(t, 20*time.Second, "lag 0", func() (bool, string) {
		lag, ok := c.Lag()
		return ok && lag == 0 && h.count() == 90, fmt.Sprint(lag, ok, h.count())
	})
}

// rejecting returns Rejected, which a Kafka consumer cannot honour.
type rejecting struct{ *collector }

func (r rejecting) Handle(_ context.Context, batch []broker.Message) ([]broker.Result, error) {
	res := make([]broker.Result, len(batch))
	res[0] = broker.Rejected
	return res, nil
}

// TestHandlerContract: a Handler that answers Rejected (Kafka has no
// broker-side dead letter) fails Run, and nothing is committed.
func TestHandlerContract(t *testing.T) {
	t.Parallel()
	e := newKafka(t, nil)
	topic := e.topic(t, 1)
	group := unique("g")
	if err := e.produce(context.Background(), topic, records(10)); err != nil {
		t.Fatal(err)
	}
	c, err := kafka.New(config(e, topic, group), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Run(ctx, rejecting{newCollector()}); !contains(err, "rejected", "no broker-side dead letter") {
		t.Fatalf("Run with a Handler answering Rejected = %v", err)
	}
	if n, err := e.unacked(context.Background(), group, topic); err != nil || n != 10 {
		t.Fatalf("unacked = %d (%v), want 10", n, err)
	}
}
