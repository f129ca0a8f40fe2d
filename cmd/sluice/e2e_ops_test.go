package main

// End-to-end tests of what an operator relies on: metrics that add up and
// logs without secrets. (SIGTERM, readiness and the exit code are in
// TestE2EAMQPTermDrains.)

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sluice-io/sluice/broker/supervisor"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

// scrape reads /metrics and sums each metric's samples whose labels include
// match.
func scrape(t *testing.T, d *daemon, match map[string]string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(d.URL + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	out := make(map[string]float64)
	for name, f := range families {
	metrics:
		for _, m := range f.GetMetric() {
			labels := make(map[string]string)
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range match {
				if labels[k] != v {
					continue metrics
				}
			}
			out[name] += value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// TestE2EMetricsAddUp runs an AMQP source whose malformed messages go to the
// Redis dead-letter stream, redelivers some messages under the same
// message-id, and checks that the per-source counters equal the counts:
// received = dispatched + duplicates + dead-lettered.
func TestE2EMetricsAddUp(t *testing.T) {
	t.Parallel()
	const n, again = 2000, 300
	d := startDaemon(t)
	e := newAMQPE2E(t)
	body := e.sourceBody(2)
	delete(body["pub_sub"].(map[string]any)["amqp"].(map[string]any), "deadLetterExchange")
	src := d.CreateSource("p1", body)
	waitWorkersRunning(d, "p1", src.UID, 2)

	malformed := e.publish(0, n, 100)
	e.publish(0, again, 0) // the same message-ids again: duplicates
	d.WaitStream(n, time.Minute)
	e.waitReady(e.src, 0, time.Minute)
	d.RequireExactlyOnce(n)
	dead, err := d.RDB.XLen(context.Background(), d.DeadLetterKey()).Result()
	if err != nil || dead != int64(malformed) {
		t.Fatalf("dead-letter stream holds %d (err %v), want %d", dead, err, malformed)
	}

	// The queue has nothing ready, but deliveries prefetched by the workers
	// may still be in hand: wait until every message was settled (the
	// counters move together when a batch is) and none is in flight, then
	// check every counter.
	labels := map[string]string{"source_id": src.UID, "project_id": "p1", "broker": "amqp"}
	received := float64(n + again + malformed)
	m := scrape(t, d, labels)
	for deadline := time.Now().Add(30 * time.Second); (m["sluice_messages_received_total"] < received || m["sluice_messages_in_flight"] > 0) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		m = scrape(t, d, labels)
	}
	want := map[string]float64{
		"sluice_messages_received_total":      received,
		"sluice_messages_dispatched_total":    n,
		"sluice_messages_duplicate_total":     again,
		"sluice_messages_dead_lettered_total": float64(malformed),
		"sluice_transient_failures_total":     0,
		"sluice_messages_in_flight":           0,
	}
	for name, w := range want {
		if m[name] != w {
			t.Errorf("%s = %v, want %v", name, m[name], w)
		}
	}
	if got := m["sluice_messages_dispatched_total"] + m["sluice_messages_duplicate_total"] + m["sluice_messages_dead_lettered_total"]; got != m["sluice_messages_received_total"] {
		t.Errorf("dispatched + duplicates + dead-lettered = %v, received = %v", got, m["sluice_messages_received_total"])
	}
	if m["sluice_batch_size"] == 0 || m["sluice_workers"] != 2 {
		t.Errorf("batch size observations %v, workers %v; want some and 2", m["sluice_batch_size"], m["sluice_workers"])
	}
	proc := scrape(t, d, nil)
	for _, name := range []string{"sluice_dispatch_stream_length", "sluice_backpressure_engaged",
		"sluice_reconcile_duration_seconds", "sluice_redis_errors_total", "go_goroutines"} {
		if _, ok := proc[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if proc["sluice_reconcile_duration_seconds"] < 1 {
		t.Error("no reconcile observed")
	}
}

// TestE2ELogsHoldNoSecrets runs sources whose credentials are wrong or whose
// brokers are unreachable, so sluice logs failures and backoffs at debug
// level, and checks that no secret appears in the logs or in /status.
func TestE2ELogsHoldNoSecrets(t *testing.T) {
	t.Parallel()
	const (
		amqpPassword  = "amqp-S3cret-p@ss/word"
		kafkaPassword = "kafka-S3cret-sasl-password"
		sqsSecret     = "sqs-S3cret-access-key-material"
		privateKey    = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDsecretkeymaterial"
	)
	fake := pstest.NewServerWithAddress("127.0.0.1:0")
	t.Cleanup(func() { _ = fake.Close() })
	d := startDaemon(t, "PUBSUB_EMULATOR_HOST="+fake.Addr)
	e := newAMQPE2E(t)

	body := e.sourceBody(1)
	body["pub_sub"].(map[string]any)["amqp"].(map[string]any)["auth"] = map[string]any{"user": "guest", "password": amqpPassword}
	bad := d.CreateSource("p1", body)

	serviceAccount := fmt.Sprintf(`{"type":"service_account","project_id":"proj","private_key_id":"kid",`+
		`"private_key":"-----BEGIN PRIVATE KEY-----\n%s\n-----END PRIVATE KEY-----\n",`+
		`"client_email":"sluice@proj.iam.gserviceaccount.com","client_id":"1","token_uri":"https://oauth2.googleapis.com/token"}`, privateKey)
	google := d.CreateSource("p1", map[string]any{
		"name": "google", "type": "pub_sub",
		"pub_sub": map[string]any{"type": "google", "workers": 1, "google": map[string]any{
			"project_id": "proj", "subscription_id": "missing", "service_account": json.RawMessage(serviceAccount),
		}},
	})

	kafka := d.CreateSource("p1", map[string]any{
		"name": "kafka", "type": "pub_sub",
		"pub_sub": map[string]any{"type": "kafka", "workers": 1, "kafka": map[string]any{
			"brokers": []string{fmt.Sprintf("127.0.0.1:%d", dispatchtest.FreePort(t))}, "topic_name": "orders",
			"auth": map[string]any{"type": "scram", "hash": "SHA512", "username": "svc", "password": kafkaPassword},
		}},
	})
	sqs := d.CreateSource("p1", map[string]any{
		"name": "sqs", "type": "pub_sub",
		"pub_sub": map[string]any{"type": "sqs", "workers": 1, "sqs": map[string]any{
			"access_key_id": "AKIDEXAMPLE", "secret_key": sqsSecret, "default_region": "eu-west-1",
			"queue_name": "orders", "endpoint": fmt.Sprintf("http://127.0.0.1:%d", dispatchtest.FreePort(t)),
		}},
	})

	statuses := map[string]string{}
	for _, id := range []string{bad.UID, google.UID, kafka.UID, sqs.UID} {
		d.WaitStatus("p1", id, 30*time.Second, "a failure recorded", func(st supervisor.SourceStatus) bool {
			return len(st.Workers) > 0 && st.Workers[0].Failures > 0
		})
		_, st := d.Do(http.MethodGet, "/api/v1/projects/p1/sources/"+id+"/status", nil)
		statuses["status of "+id] = string(st)
	}
	logs := d.Logs()
	statuses["logs"] = logs
	if !strings.Contains(logs, "backing off") {
		t.Fatalf("expected backoff lines in the logs:\n%s", logs)
	}
	for _, secret := range []string{amqpPassword, kafkaPassword, sqsSecret, "S3cret", privateKey, "BEGIN PRIVATE KEY"} {
		for what, text := range statuses {
			if strings.Contains(text, secret) {
				t.Errorf("%s contain the secret %q", what, secret)
			}
		}
	}
}
