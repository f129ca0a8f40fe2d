package kafka_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/kafka"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// kenv is one in-process Kafka cluster (kfake) with an admin/producer client.
type kenv struct {
	cluster *kfake.Cluster
	addrs   []string
	client  *kgo.Client
	admin   *kadm.Client
}

// newKafka starts a kfake cluster for the test. kgoOpts are extra client
// options (SASL) for the test's own producer/admin client.
func newKafka(t testing.TB, opts []kfake.Opt, kgoOpts ...kgo.Opt) *kenv {
	t.Helper()
	opts = append([]kfake.Opt{kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(500 * time.Millisecond)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	e := &kenv{cluster: c, addrs: c.ListenAddrs()}
	e.connect(t, kgoOpts...)
	t.Cleanup(func() {
		e.client.Close()
		e.cluster.Close()
	})
	return e
}

func (e *kenv) connect(t testing.TB, kgoOpts ...kgo.Opt) {
	t.Helper()
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(e.addrs...),
		kgo.ProducerLinger(0),
		kgo.RecordPartitioner(kgo.RoundRobinPartitioner()),
		kgo.RetryTimeout(time.Minute),
	}, kgoOpts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	e.client = cl
	e.admin = kadm.NewClient(cl)
}

func unique(prefix string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// topic creates a fresh topic with the given partition count.
func (e *kenv) topic(t testing.TB, partitions int32) string {
	t.Helper()
	name := unique("t")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.admin.CreateTopic(ctx, partitions, 1, nil, name)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("create topic: %v", err)
	}
	return name
}

// produce writes recs to topic and waits for every ack.
func (e *kenv) produce(ctx context.Context, topic string, recs []*kgo.Record) error {
	for _, r := range recs {
		r.Topic = topic
	}
	return e.client.ProduceSync(ctx, recs...).FirstErr()
}

// committed returns the group's committed offset per partition of topic.
func (e *kenv) committed(ctx context.Context, group, topic string) (map[int32]int64, error) {
	resps, err := e.admin.FetchOffsetsForTopics(ctx, group, topic)
	if errors.Is(err, kerr.GroupIDNotFound) {
		return map[int32]int64{}, nil // never committed
	}
	if err != nil {
		return nil, err
	}
	out := make(map[int32]int64)
	for _, ps := range resps {
		for p, r := range ps {
			if r.Err != nil {
				return nil, r.Err
			}
			if r.At >= 0 {
				out[p] = r.At
			}
		}
	}
	return out, nil
}

// unacked is end offsets minus the group's committed offsets over topic.
func (e *kenv) unacked(ctx context.Context, group, topic string) (int, error) {
	ends, err := e.admin.ListEndOffsets(ctx, topic)
	if err != nil {
		return 0, err
	}
	if err := ends.Error(); err != nil {
		return 0, err
	}
	committed, err := e.committed(ctx, group, topic)
	if err != nil {
		return 0, err
	}
	n := 0
	ends.Each(func(o kadm.ListedOffset) {
		n += int(o.Offset - committed[o.Partition])
	})
	return n, nil
}

// config is a worker config tuned for quick tests on kfake.
func config(e *kenv, topic, group string) kafka.Config {
	return kafka.Config{
		Brokers:           e.addrs,
		Topic:             topic,
		GroupID:           group,
		Backoff:           broker.Backoff{Min: 10 * time.Millisecond, Max: 300 * time.Millisecond},
		MaxWait:           200 * time.Millisecond,
		SessionTimeout:    3 * time.Second,
		HeartbeatInterval: 200 * time.Millisecond,
		RebalanceTimeout:  5 * time.Second,
		DialTimeout:       5 * time.Second,
		LagInterval:       200 * time.Millisecond,
	}
}

// eventually polls cond every 20ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %s", timeout, what, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// body is a valid Convoy pub/sub message body identified by seq.
func body(seq int) []byte {
	return fmt.Appendf(nil, `{"endpoint_id":"ep1","event_type":"test","data":{"seq":%d}}`, seq)
}

func records(n int) []*kgo.Record {
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{
			Key:     fmt.Appendf(nil, "k%d", i),
			Value:   body(i),
			Headers: []kgo.RecordHeader{{Key: "x-seq", Value: fmt.Appendf(nil, "%d", i)}},
		}
	}
	return recs
}

// contains reports whether err's text contains every one of words.
func contains(err error, words ...string) bool {
	if err == nil {
		return false
	}
	s := strings.ToLower(err.Error())
	for _, w := range words {
		if !strings.Contains(s, strings.ToLower(w)) {
			return false
		}
	}
	return true
}
