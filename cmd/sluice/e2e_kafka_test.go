package main

// End-to-end tests of Kafka sources: the real sluice binary against franz-go's
// kfake (a Kafka wire-protocol server in this test process) and the shared
// Redis, driven through the admin API.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/sluice-io/sluice/broker/kafka"
	"github.com/sluice-io/sluice/broker/supervisor"
	"github.com/sluice-io/sluice/source"
)

func TestKafkaConfigMapping(t *testing.T) {
	ps := &source.PubSub{Type: source.PubSubKafka, Workers: 3, Kafka: &source.Kafka{
		Brokers: []string{"k1:9092", "k2:9092"}, TopicName: "orders", ConsumerGroupID: "billing",
		Auth: &source.KafkaAuth{Type: "scram", Hash: "SHA512", Username: "svc", Password: "pw", TLS: true},
	}}
	got, err := kafkaConfig(ps, "src1")
	if err != nil {
		t.Fatal(err)
	}
	want := kafka.Config{
		Brokers: []string{"k1:9092", "k2:9092"}, Topic: "orders", GroupID: "billing", ClientID: "sluice-src1",
		Auth: kafka.Auth{Mechanism: "scram", Hash: "SHA512", Username: "svc", Password: "pw", TLS: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("kafkaConfig (-want +got):\n%s", diff)
	}

	// No group, or a blank one: the source's stable default.
	for _, group := range []string{"", " "} {
		ps := &source.PubSub{Type: source.PubSubKafka, Kafka: &source.Kafka{Brokers: []string{"k:9092"}, TopicName: "t", ConsumerGroupID: group}}
		got, err := kafkaConfig(ps, "src2")
		if err != nil {
			t.Fatal(err)
		}
		if got.GroupID != "sluice-src2" {
			t.Errorf("group %q mapped to %q, want sluice-src2", group, got.GroupID)
		}
	}
	// TLS without SASL.
	ps = &source.PubSub{Type: source.PubSubKafka, Kafka: &source.Kafka{Brokers: []string{"k:9093"}, TopicName: "t", Auth: &source.KafkaAuth{TLS: true}}}
	if got, err := kafkaConfig(ps, "src3"); err != nil || got.Auth != (kafka.Auth{TLS: true}) {
		t.Errorf("TLS only: %+v, %v", got.Auth, err)
	}
	if _, err := kafkaConfig(&source.PubSub{Type: source.PubSubKafka}, "src4"); err == nil {
		t.Error("kafkaConfig without pub_sub.kafka = nil error")
	}
	_, err = kafkaConfig(&source.PubSub{Type: source.PubSubKafka, Kafka: &source.Kafka{Brokers: []string{"k:9092"}}}, "src5")
	if err == nil || !strings.Contains(err.Error(), "pub_sub.kafka") || !strings.Contains(err.Error(), "topic") {
		t.Errorf("kafkaConfig without a topic = %v, want an error naming pub_sub.kafka and the topic", err)
	}
}

// kafkaE2E is one test's kfake cluster and a client to produce and inspect it.
type kafkaE2E struct {
	t       *testing.T
	cluster *kfake.Cluster
	addrs   []string
	client  *kgo.Client
	admin   *kadm.Client
}

func newKafkaE2E(t *testing.T, opts []kfake.Opt, clientOpts ...kgo.Opt) *kafkaE2E {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)...)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	e := &kafkaE2E{t: t, cluster: c, addrs: c.ListenAddrs()}
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(e.addrs...), kgo.ProducerLinger(0),
		kgo.RecordPartitioner(kgo.RoundRobinPartitioner()),
	}, clientOpts...)...)
	if err != nil {
		t.Fatal(err)
	}
	e.client, e.admin = cl, kadm.NewClient(cl)
	t.Cleanup(func() {
		cl.Close()
		c.Close()
	})
	return e
}

func (e *kafkaE2E) topic(name string, partitions int32) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.admin.CreateTopic(ctx, partitions, 1, nil, name)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		e.t.Fatalf("create topic %s: %v", name, err)
	}
}

// produce sends messages with seq from..to-1, in chunks, each with a key and
// a header.
func (e *kafkaE2E) produce(topic string, from, to int) {
	e.t.Helper()
	ctx := context.Background()
	const chunk = 1000
	for i := from; i < to; i += chunk {
		recs := make([]*kgo.Record, 0, chunk)
		for seq := i; seq < min(i+chunk, to); seq++ {
			recs = append(recs, &kgo.Record{
				Topic: topic, Key: fmt.Appendf(nil, "key-%d", seq), Value: messageBody(seq),
				Headers: []kgo.RecordHeader{{Key: "X-Tenant", Value: fmt.Appendf(nil, "t-%d", seq%7)}},
			})
		}
		if err := e.client.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			e.t.Fatalf("produce: %v", err)
		}
	}
}

// waitCommitted waits until the group has committed the end of every
// partition of topic.
func (e *kafkaE2E) waitCommitted(group, topic string, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		lag, err := e.lag(group, topic)
		if err == nil && lag == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("group %s: %d messages of %s not committed after %s (err %v)", group, lag, topic, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitGroupStable waits until group is stable with n members. A test that
// kills sluice waits for this first: kfake never expires a member whose
// JoinGroup was in flight when its connection died (a real broker does, after
// the session timeout), so a kill in the middle of a rebalance would leave
// that member holding its partitions forever.
func (e *kafkaE2E) waitGroupStable(group string, n int, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		g, err := e.describeGroup(group)
		if err == nil && g.State == "Stable" && len(g.Members) == n {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("group %s is %q with %d members after %s (%v), want Stable with %d", group, g.State, len(g.Members), timeout, err, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *kafkaE2E) describeGroup(group string) (kadm.DescribedGroup, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	described, err := e.admin.DescribeGroups(ctx, group)
	if err != nil {
		return kadm.DescribedGroup{}, err
	}
	g := described[group]
	return g, g.Err
}

// logGroup logs the group's members and their partitions when the test fails.
func (e *kafkaE2E) logGroup(group string) {
	e.t.Cleanup(func() {
		if !e.t.Failed() {
			return
		}
		g, err := e.describeGroup(group)
		e.t.Logf("group %s: %q, %d members (%v)", group, g.State, len(g.Members), err)
		for _, m := range g.Members {
			assigned, _ := m.Assigned.AsConsumer()
			e.t.Logf("  member %s: %+v", m.MemberID, assigned)
		}
	})
}

func (e *kafkaE2E) lag(group, topic string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ends, err := e.admin.ListEndOffsets(ctx, topic)
	if err != nil {
		return -1, err
	}
	committed, err := e.admin.FetchOffsetsForTopics(ctx, group, topic)
	if err != nil && !strings.Contains(err.Error(), kerr.GroupIDNotFound.Message) {
		return -1, err
	}
	var lag int64
	ends.Each(func(o kadm.ListedOffset) {
		at := int64(0)
		if c, ok := committed.Lookup(topic, o.Partition); ok && c.At > 0 {
			at = c.At
		}
		lag += o.Offset - at
	})
	return lag, nil
}

// kafkaSourceBody is the create request of a Kafka source in Convoy's shape.
func kafkaSourceBody(name string, workers int, brokers []string, topic, group string, auth map[string]any) map[string]any {
	k := map[string]any{"brokers": brokers, "topic_name": topic, "consumer_group_id": group}
	if auth != nil {
		k["auth"] = auth
	}
	return map[string]any{
		"name": name, "type": "pub_sub",
		"pub_sub": map[string]any{"type": "kafka", "workers": workers, "kafka": k},
	}
}

// kafkaWaitRunning waits until the source has n workers, all running.
func kafkaWaitRunning(d *daemon, project, id string, n int) {
	d.t.Helper()
	d.WaitStatus(project, id, time.Minute, fmt.Sprintf("%d running workers", n), func(st supervisor.SourceStatus) bool {
		for _, w := range st.Workers {
			if strings.Contains(w.LastError, `"kafka" is not supported`) {
				d.t.Fatalf("sluice has no kafka consumer: cmd/sluice/supervise.go needs the kafka case in consumerFactory (%s)", w.LastError)
			}
		}
		if len(st.Workers) != n {
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

// TestE2EKafka: a 6-partition topic consumed by 3 workers; 30,000 messages
// land in the dispatch stream exactly once with their identity, key and
// headers, and the group commits every offset.
func TestE2EKafka(t *testing.T) {
	t.Parallel()
	const n = 30000
	e := newKafkaE2E(t, nil)
	e.topic("orders", 6)
	d := startDaemon(t)
	src := d.CreateSource("p1", kafkaSourceBody("orders", 3, e.addrs, "orders", "", nil))
	if k := src.PubSub.Kafka; k == nil || k.TopicName != "orders" || len(k.Brokers) != 1 {
		t.Fatalf("created source: %+v", src.PubSub)
	}
	kafkaWaitRunning(d, "p1", src.UID, 3)
	// A worker reports a lag once it sees itself in a stable group: when all
	// three do, the group holds all three and each has two partitions.
	d.WaitStatus("p1", src.UID, time.Minute, "every worker in the group", func(st supervisor.SourceStatus) bool {
		for _, w := range st.Workers {
			if w.Lag == nil {
				return false
			}
		}
		return len(st.Workers) == 3
	})
	e.produce("orders", 0, n)
	d.WaitStream(n, 2*time.Minute)
	e.waitCommitted(kafka.DefaultGroupID(src.UID), "orders", time.Minute)

	events := d.RequireExactlyOnce(n)
	ids := make(map[string]bool, n)
	lastOffset := map[int]int{} // by partition: the default keeps each partition in order
	for _, ev := range events {
		seq := eventSeq(t, ev)
		var topic string
		var part, off int
		if _, err := fmt.Sscanf(strings.ReplaceAll(ev.BrokerMessageID, "/", " "), "%s %d %d", &topic, &part, &off); err != nil || topic != "orders" || part < 0 || part > 5 {
			t.Fatalf("event seq %d: broker_message_id %q is not orders/<partition>/<offset>", seq, ev.BrokerMessageID)
		}
		if ids[ev.BrokerMessageID] {
			t.Fatalf("broker_message_id %s twice", ev.BrokerMessageID)
		}
		ids[ev.BrokerMessageID] = true
		if last, ok := lastOffset[part]; ok && off <= last {
			t.Fatalf("partition %d: offset %d reached the stream after offset %d", part, off, last)
		}
		lastOffset[part] = off
		requireEnvelope(t, ev, src.UID, "kafka", ev.BrokerMessageID, map[string]string{
			"x-kafka-key": fmt.Sprintf("key-%d", seq),
			"x-tenant":    fmt.Sprintf("t-%d", seq%7),
		})
	}

	// Every worker got partitions (6 over 3) and the lag drains to 0.
	st := d.WaitStatus("p1", src.UID, 30*time.Second, "lag 0 on every worker", func(st supervisor.SourceStatus) bool {
		for _, w := range st.Workers {
			if w.Lag == nil || *w.Lag != 0 {
				return false
			}
		}
		return len(st.Workers) == 3
	})
	var received int64
	held := map[int]bool{}
	for _, w := range st.Workers {
		if len(w.Partitions) != 2 {
			t.Errorf("worker %d holds partitions %v, want 2 of the 6", w.Worker, w.Partitions)
		}
		for p := range w.Partitions {
			held[p] = true
		}
		received += w.Received
		if w.Received == 0 {
			t.Errorf("worker %d received nothing: %+v", w.Worker, w)
		}
	}
	if received < n {
		t.Errorf("workers received %d messages, want at least %d", received, n)
	}
	if len(held) != 6 {
		t.Errorf("the workers hold partitions %v, want all 6", held)
	}
}

// TestE2EKafkaIdleWorkers: three workers on a two-partition topic; the status
// says which worker idles and why, and the other two consume everything.
func TestE2EKafkaIdleWorkers(t *testing.T) {
	t.Parallel()
	const n = 2000
	e := newKafkaE2E(t, nil)
	e.topic("few", 2)
	d := startDaemon(t)
	src := d.CreateSource("p1", kafkaSourceBody("few", 3, e.addrs, "few", "", nil))
	kafkaWaitRunning(d, "p1", src.UID, 3)
	st := d.WaitStatus("p1", src.UID, time.Minute, "partitions shared out", func(st supervisor.SourceStatus) bool {
		assigned := 0
		for _, w := range st.Workers {
			if w.Lag == nil { // the worker does not know its assignment yet
				return false
			}
			assigned += len(w.Partitions)
		}
		return assigned == 2
	})
	idle := 0
	for _, w := range st.Workers {
		if len(w.Partitions) == 0 {
			idle++
			if !strings.Contains(w.Note, "more workers than partitions") {
				t.Errorf("idle worker %d has note %q", w.Worker, w.Note)
			}
		} else if w.Note != "" {
			t.Errorf("busy worker %d has note %q", w.Worker, w.Note)
		}
	}
	if idle != 1 {
		t.Fatalf("%d idle workers, want 1: %+v", idle, st.Workers)
	}
	e.produce("few", 0, n)
	d.WaitStream(n, time.Minute)
	d.RequireExactlyOnce(n)
}

// TestE2EKafkaSASL: sources authenticating with SASL PLAIN and SCRAM-SHA-512
// consume; a source with a wrong password shows the authentication failure
// in its status.
func TestE2EKafkaSASL(t *testing.T) {
	t.Parallel()
	e := newKafkaE2E(t, []kfake.Opt{
		kfake.EnableSASL(),
		kfake.Superuser("PLAIN", "admin", "admin-secret"),
		kfake.User("PLAIN", "plain-user", "plain-secret"),
		kfake.User("SCRAM-SHA-512", "scram-user", "scram-secret"),
	}, kgo.SASL(plain.Auth{User: "admin", Pass: "admin-secret"}.AsMechanism()))
	e.topic("plain", 2)
	e.topic("scram", 2)
	// Two batches in flight per worker: serve passes the setting on.
	d := startDaemon(t, "SLUICE_KAFKA_INFLIGHT=2")
	plainSrc := d.CreateSource("p1", kafkaSourceBody("plain", 1, e.addrs, "plain", "g-plain",
		map[string]any{"type": "plain", "username": "plain-user", "password": "plain-secret"}))
	scramSrc := d.CreateSource("p1", kafkaSourceBody("scram", 1, e.addrs, "scram", "g-scram",
		map[string]any{"type": "scram", "hash": "SHA512", "username": "scram-user", "password": "scram-secret"}))
	badSrc := d.CreateSource("p1", kafkaSourceBody("bad", 1, e.addrs, "scram", "g-bad",
		map[string]any{"type": "scram", "hash": "SHA512", "username": "scram-user", "password": "wrong-secret"}))

	e.produce("plain", 0, 500)
	e.produce("scram", 500, 1000)
	kafkaWaitRunning(d, "p1", plainSrc.UID, 1)
	kafkaWaitRunning(d, "p1", scramSrc.UID, 1)
	d.WaitStream(1000, time.Minute)
	e.waitCommitted("g-plain", "plain", time.Minute)
	e.waitCommitted("g-scram", "scram", time.Minute)
	d.RequireExactlyOnce(1000)

	st := d.WaitStatus("p1", badSrc.UID, time.Minute, "the authentication error", func(st supervisor.SourceStatus) bool {
		return len(st.Workers) == 1 && strings.Contains(st.Workers[0].LastError, "SASL Authentication Failed")
	})
	t.Logf("status of the source with a wrong password: state %s, last_error %q", st.Workers[0].State, st.Workers[0].LastError)
	if strings.Contains(st.Workers[0].LastError, "wrong-secret") {
		t.Fatal("the status reveals the password")
	}
	if st.Workers[0].State == supervisor.StateRunning {
		t.Errorf("worker with a wrong password is %s", st.Workers[0].State)
	}
}

// TestE2EKafkaKillAndRestart kills sluice serve (SIGKILL) mid-stream and
// starts it again: the group resumes from its committed offsets and the
// stream holds every message exactly once. A low high-water mark holds the
// first process back after a tenth of the messages, with batches fetched and
// not committed, however fast it consumes; the restart lifts it.
func TestE2EKafkaKillAndRestart(t *testing.T) {
	t.Parallel()
	const n = 20000
	e := newKafkaE2E(t, nil)
	e.topic("events", 4)
	d := startDaemon(t, fmt.Sprintf("SLUICE_HIGH_WATER=%d", n/10))
	src := d.CreateSource("p1", kafkaSourceBody("events", 2, e.addrs, "events", "g-events", nil))
	e.logGroup("g-events")
	kafkaWaitRunning(d, "p1", src.UID, 2)
	e.waitGroupStable("g-events", 2, time.Minute)
	e.produce("events", 0, n)
	d.WaitStream(n/10, time.Minute)
	d.Kill()
	killedAt, _ := d.RDB.XLen(context.Background(), d.StreamKey()).Result()
	if killedAt >= n {
		t.Fatalf("all %d messages were written before the kill", killedAt)
	}
	lag, _ := e.lag("g-events", "events")
	t.Logf("killed with %d of %d messages in the stream and %d not committed", killedAt, n, lag)
	d.SetEnv("SLUICE_HIGH_WATER=1000000")
	d.Start()
	d.WaitStream(n, 2*time.Minute)
	e.waitCommitted("g-events", "events", time.Minute)
	d.RequireExactlyOnce(n)
}
