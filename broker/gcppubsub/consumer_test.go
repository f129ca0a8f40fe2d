package gcppubsub

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/google/go-cmp/cmp"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

func TestValidate(t *testing.T) {
	valid := Config{ProjectID: "p", SubscriptionID: "s"}
	tests := []struct {
		name string
		cfg  func(*Config)
		want []string // substrings of the error; none: valid
	}{
		{name: "minimal", cfg: func(*Config) {}},
		{name: "full subscription name", cfg: func(c *Config) { c.SubscriptionID = "projects/p/subscriptions/s" }},
		{name: "everything missing", cfg: func(c *Config) { *c = Config{} },
			want: []string{"project_id is required", "subscription_id is required"}},
		{name: "negative bounds", cfg: func(c *Config) {
			c.Streams, c.MaxOutstandingMessages, c.MaxOutstandingBytes = -1, -1, -1
		}, want: []string{"streams", "max outstanding messages", "max outstanding bytes"}},
		{name: "ack extension out of range", cfg: func(c *Config) { c.AckExtension = time.Second },
			want: []string{"ack extension must be between 10s and 600s"}},
		{name: "service account not JSON", cfg: func(c *Config) { c.ServiceAccount = []byte("secret-ish") },
			want: []string{"service_account: not a JSON object"}},
		{name: "service account of another type", cfg: func(c *Config) {
			c.ServiceAccount = []byte(`{"type":"authorized_user","client_secret":"hidden"}`)
		}, want: []string{`type is "authorized_user"`, "client_email is missing", "private_key is missing"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid
			tt.cfg(&cfg)
			err := cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want errors %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %v, want it to mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "secret-ish") || strings.Contains(err.Error(), "hidden") {
				t.Errorf("Validate echoes the key: %v", err)
			}
		})
	}
}

// Attributes become headers, with the ordering key and the delivery
// attempt; the identity is the Pub/Sub message ID.
func TestMessageHeaders(t *testing.T) {
	t.Parallel()
	f := newFake(t, 0, func(s *pubsubpb.Subscription) {
		s.EnableMessageOrdering = true
		s.DeadLetterPolicy = &pubsubpb.DeadLetterPolicy{DeadLetterTopic: testTopic, MaxDeliveryAttempts: 5}
	})
	id := f.srv.PublishOrdered(testTopic, event(1), map[string]string{"x-convoy-message-type": "single", "Mixed-Case": "kept"}, "key-1")
	plain := f.publish(event(2), map[string]string{"a": "b"})

	c, err := New(f.config(1), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	h := newRecordingHandler()
	stop := brokertest.Start(t, c, h)
	dispatchtest.WaitFor(t, 30*time.Second, "both messages", func() bool { return h.count() == 2 && f.unacked() == 0 })
	stop()
	h.mu.Lock()
	defer h.mu.Unlock()
	got := h.seen[id]
	want := map[string]string{
		"x-convoy-message-type": "single",
		"Mixed-Case":            "kept",
		HeaderOrderingKey:       "key-1",
		HeaderDeliveryAttempt:   "1",
	}
	if diff := cmp.Diff(want, got.Headers); diff != "" {
		t.Errorf("ordered message headers (-want +got):\n%s", diff)
	}
	if got.ID != id || string(got.Body) != string(event(1)) || got.PublishedAt.IsZero() {
		t.Errorf("ordered message = %+v, want ID %s, its body and a publish time", got, id)
	}
	if diff := cmp.Diff(map[string]string{"a": "b", HeaderDeliveryAttempt: "1"}, h.seen[plain].Headers); diff != "" {
		t.Errorf("plain message headers (-want +got):\n%s", diff)
	}
}

// Flow control bounds what a consumer holds: with 200 messages waiting and
// room for 100 in a batch, no batch holds more than MaxOutstandingMessages.
func TestFlowControlBoundsMessagesInHand(t *testing.T) {
	t.Parallel()
	const n, limit = 200, 10
	f := newFake(t, 0, nil)
	for i := range n {
		f.publish(event(i), nil)
	}
	cfg := f.config(4)
	cfg.MaxOutstandingMessages = limit
	c, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	h := newRecordingHandler()
	stop := brokertest.Start(t, c, h)
	dispatchtest.WaitFor(t, 30*time.Second, "every message", func() bool { return h.count() == n && f.unacked() == 0 })
	stop()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.largest > limit || h.largest < 2 {
		t.Errorf("largest batch held %d messages, want 2..%d", h.largest, limit)
	}
}

// flakyHandler fails its first failures batches, panics on its first batch
// when panics is set, and records the rest.
type flakyHandler struct {
	*recordingHandler
	failures int
	panics   bool
	calls    int
}

func (h *flakyHandler) Handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	h.mu.Lock()
	h.calls++
	calls := h.calls
	h.mu.Unlock()
	if h.panics && calls == 1 {
		panic("handler bug")
	}
	if calls <= h.failures {
		return nil, errors.New("dispatch queue unavailable")
	}
	return h.recordingHandler.Handle(ctx, batch)
}

// A failing batch is reported with Failing and cleared with Healthy once a
// batch succeeds again.
func TestHealthFollowsHandler(t *testing.T) {
	t.Parallel()
	const n = 30
	f := newFake(t, 0, nil)
	for i := range n {
		f.publish(event(i), nil)
	}
	cfg := f.config(2)
	cfg.Backoff = broker.Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	c, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	h := &flakyHandler{recordingHandler: newRecordingHandler(), failures: 2}
	stop := brokertest.Start(t, c, h)
	dispatchtest.WaitFor(t, 30*time.Second, "every message", func() bool { return h.count() == n && f.unacked() == 0 })
	stop()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.failing) != 2 || !strings.Contains(h.failing[0].Error(), "dispatch queue unavailable") {
		t.Errorf("Failing reported %v, want the 2 failed batches", h.failing)
	}
	if h.healthy != 2 {
		t.Errorf("Healthy reported %d times, want 2 (connected, recovered)", h.healthy)
	}
}

// A Handler panic is a failure of Run, and nothing of the batch is acked.
func TestHandlerPanicFailsRun(t *testing.T) {
	t.Parallel()
	const n = 30
	f := newFake(t, 0, nil)
	for i := range n {
		f.publish(event(i), nil)
	}
	c, err := New(f.config(2), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = c.Run(ctx, &flakyHandler{recordingHandler: newRecordingHandler(), panics: true})
	if err == nil || !strings.Contains(err.Error(), "handler panicked: handler bug") {
		t.Fatalf("Run = %v, want the panic as its error", err)
	}
	if got := f.unacked(); got != n {
		t.Fatalf("%d messages unacked after the panic, want all %d", got, n)
	}

	// Nothing was lost: the next worker gets every message.
	h := newRecordingHandler()
	stop := brokertest.Start(t, c, h)
	dispatchtest.WaitFor(t, 30*time.Second, "every message", func() bool { return h.count() == n && f.unacked() == 0 })
	stop()
}
