package main

// End-to-end tests of Google Pub/Sub sources: the sluice binary consumes a
// pstest fake (in this test process) through PUBSUB_EMULATOR_HOST, with
// sources created over the HTTP API.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"

	"github.com/sluice-io/sluice/broker/supervisor"
)

const googleProject = "sluice-e2e"

// googleFake is a pstest server with one topic and subscription per name.
type googleFake struct {
	t   *testing.T
	srv *pstest.Server
}

func newGoogleFake(t *testing.T, names ...string) *googleFake {
	t.Helper()
	srv := pstest.NewServerWithAddress("127.0.0.1:0")
	t.Cleanup(func() { _ = srv.Close() })
	ctx := context.Background()
	for _, name := range names {
		topic := "projects/" + googleProject + "/topics/" + name
		if _, err := srv.GServer.CreateTopic(ctx, &pubsubpb.Topic{Name: topic}); err != nil {
			t.Fatalf("create topic: %v", err)
		}
		sub := &pubsubpb.Subscription{
			Name:               "projects/" + googleProject + "/subscriptions/" + name,
			Topic:              topic,
			AckDeadlineSeconds: 10,
		}
		if _, err := srv.GServer.CreateSubscription(ctx, sub); err != nil {
			t.Fatalf("create subscription: %v", err)
		}
	}
	return &googleFake{t: t, srv: srv}
}

// publish publishes messages seq from..to-1 (messageBody) to topic name with
// the attribute x-test-seq and returns their message IDs by seq.
func (f *googleFake) publish(name string, from, to int, ids map[int]string) {
	for seq := from; seq < to; seq++ {
		ids[seq] = f.srv.Publish("projects/"+googleProject+"/topics/"+name, messageBody(seq),
			map[string]string{"x-test-seq": strconv.Itoa(seq), "x-test-origin": "pstest"})
	}
}

// unacked counts published messages no consumer has acked yet.
func (f *googleFake) unacked() int {
	n := 0
	for _, m := range f.srv.Messages() {
		if m.Acks == 0 {
			n++
		}
	}
	return n
}

func (f *googleFake) waitAcked(timeout time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for f.unacked() > 0 {
		if time.Now().After(deadline) {
			f.t.Fatalf("pstest holds %d unacked messages after %s", f.unacked(), timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fakeServiceAccount is a syntactically valid service account key that
// Google has never seen; with the emulator sluice must not need it.
func fakeServiceAccount(t *testing.T) []byte {
	t.Helper()
	pk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	key, err := json.Marshal(map[string]string{
		"type":           "service_account",
		"project_id":     googleProject,
		"private_key_id": "0123456789abcdef",
		"private_key":    string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":   "sluice-e2e@" + googleProject + ".iam.gserviceaccount.com",
		"client_id":      "100000000000000000001",
		"token_uri":      "https://oauth2.googleapis.com/token",
	})
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// googleSource is a create-source request body for a google source.
func googleSource(name, subscription string, workers int, serviceAccount any) map[string]any {
	return map[string]any{
		"name": name,
		"type": "pub_sub",
		"pub_sub": map[string]any{
			"type":    "google",
			"workers": workers,
			"google": map[string]any{
				"project_id":      googleProject,
				"subscription_id": subscription,
				"service_account": serviceAccount,
			},
		},
	}
}

// 5,000 messages with attributes reach the dispatch stream exactly once,
// with their attributes and Pub/Sub identity; the service account is
// accepted as base64, as a JSON object and as an array of bytes.
func TestGoogleE2EExactlyOnce(t *testing.T) {
	t.Parallel()
	const big, small = 5000, 50
	f := newGoogleFake(t, "base64", "object", "bytes")
	ids := make(map[int]string, big+2*small)
	f.publish("base64", 0, big, ids)
	f.publish("object", big, big+small, ids)
	f.publish("bytes", big+small, big+2*small, ids)

	d := startDaemon(t, "PUBSUB_EMULATOR_HOST="+f.srv.Addr)
	key := fakeServiceAccount(t)
	asBytes := make([]int, len(key))
	for i, c := range key {
		asBytes[i] = int(c)
	}
	const project = "proj-google"
	forms := []struct {
		name string
		sa   any
	}{
		{"base64", base64.StdEncoding.EncodeToString(key)},
		{"object", json.RawMessage(key)},
		{"bytes", asBytes},
	}
	sourceOf := make(map[string]string) // subscription -> source id
	for _, form := range forms {
		workers := 2
		if form.name == "base64" {
			workers = 16 // pstest serves about 90 messages a second per stream
		}
		src := d.CreateSource(project, googleSource("google-"+form.name, form.name, workers, form.sa))
		if src.PubSub == nil || src.PubSub.Google == nil || !bytes.Equal(src.PubSub.Google.ServiceAccount, key) {
			t.Fatalf("service_account given as %s did not come back as the key", form.name)
		}
		sourceOf[form.name] = src.UID
	}

	d.WaitStream(big+2*small, 2*time.Minute)
	f.waitAcked(time.Minute)
	events := d.RequireExactlyOnce(big + 2*small)
	for _, ev := range events {
		var data struct{ Seq int }
		if err := json.Unmarshal(ev.Data, &data); err != nil {
			t.Fatal(err)
		}
		seq := data.Seq
		wantSource := sourceOf["base64"]
		switch {
		case seq >= big+small:
			wantSource = sourceOf["bytes"]
		case seq >= big:
			wantSource = sourceOf["object"]
		}
		if ev.SourceID != wantSource || ev.ProjectID != project || ev.Broker != "google" ||
			ev.BrokerMessageID != ids[seq] || ev.Headers["x-broker-message-id"] != ids[seq] ||
			ev.Headers["x-test-seq"] != strconv.Itoa(seq) || ev.Headers["x-test-origin"] != "pstest" {
			t.Fatalf("message %d: event %+v; want source %s, broker google, message id %s and its attributes",
				seq, ev, wantSource, ids[seq])
		}
	}
}

// A SIGKILLed daemon loses nothing: after a restart every message is in the
// stream exactly once (those written but not acked are redelivered once the
// ack deadline passes, and deduplicated). A low high-water mark holds the
// first process back after 300 messages, with more received and not acked,
// however fast it consumes; the restart lifts it.
func TestGoogleE2ESigkillRestart(t *testing.T) {
	t.Parallel()
	const n = 2000
	f := newGoogleFake(t, "kill")
	ids := make(map[int]string, n)
	f.publish("kill", 0, n, ids)

	d := startDaemon(t, "PUBSUB_EMULATOR_HOST="+f.srv.Addr, "SLUICE_HIGH_WATER=300")
	d.CreateSource("proj-google-kill", googleSource("google-kill", "kill", 8, json.RawMessage(fakeServiceAccount(t))))
	d.WaitStream(300, time.Minute)
	d.Kill()
	written, _ := d.RDB.XLen(context.Background(), d.StreamKey()).Result()
	d.SetEnv("SLUICE_HIGH_WATER=1000000")
	d.Start()

	d.WaitStream(n, 2*time.Minute)
	f.waitAcked(time.Minute)
	d.RequireExactlyOnce(n)
	redelivered := 0
	for _, m := range f.srv.Messages() {
		if m.Deliveries > 1 {
			redelivered++
		}
	}
	t.Logf("killed with %d of %d written; %d messages delivered more than once", written, n, redelivered)
	if written >= n {
		t.Fatalf("every message was written before the kill; the test proves nothing")
	}
}

// A source whose subscription does not exist shows why in its status.
func TestGoogleE2EMissingSubscriptionStatus(t *testing.T) {
	t.Parallel()
	f := newGoogleFake(t, "exists")
	d := startDaemon(t, "PUBSUB_EMULATOR_HOST="+f.srv.Addr)
	const project = "proj-google-missing"
	src := d.CreateSource(project, googleSource("google-missing", "no-such-subscription", 1, json.RawMessage(fakeServiceAccount(t))))
	st := d.WaitStatus(project, src.UID, time.Minute, "a worker failing on the missing subscription", func(st supervisor.SourceStatus) bool {
		for _, w := range st.Workers {
			if strings.Contains(w.LastError, "subscription does not exist") {
				return true
			}
		}
		return false
	})
	if st.State == string(supervisor.StateRunning) {
		t.Errorf("source state %q with a missing subscription", st.State)
	}
	t.Logf("worker status: %+v", st.Workers[0])
}
