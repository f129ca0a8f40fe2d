package gcppubsub

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Started once per process by the client library's dependencies.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		// The client library's stream keep-alive goroutine outlives
		// Receive until its next ping tick.
		goleak.IgnoreTopFunction("cloud.google.com/go/pubsub/v2.(*messageIterator).streamKeepAliveHandler"),
	)
}

const (
	testProject = "sluice-test"
	testTopic   = "projects/" + testProject + "/topics/events"
	testSub     = "events-sub"
)

// fake is one pstest server with a topic and a subscription on it.
type fake struct {
	srv *pstest.Server
}

// newFake starts a private pstest server with testTopic and testSub
// (ackDeadline seconds; 10 when 0). It is closed when the test ends.
func newFake(tb testing.TB, ackDeadline int32, sub func(*pubsubpb.Subscription)) *fake {
	tb.Helper()
	srv := pstest.NewServerWithAddress("127.0.0.1:0")
	tb.Cleanup(func() { _ = srv.Close() })
	ctx := context.Background()
	if _, err := srv.GServer.CreateTopic(ctx, &pubsubpb.Topic{Name: testTopic}); err != nil {
		tb.Fatalf("create topic: %v", err)
	}
	s := &pubsubpb.Subscription{
		Name:               "projects/" + testProject + "/subscriptions/" + testSub,
		Topic:              testTopic,
		AckDeadlineSeconds: max(ackDeadline, 10),
	}
	if sub != nil {
		sub(s)
	}
	if _, err := srv.GServer.CreateSubscription(ctx, s); err != nil {
		tb.Fatalf("create subscription: %v", err)
	}
	return &fake{srv: srv}
}

// publish publishes body with attrs and returns the message ID.
func (f *fake) publish(body []byte, attrs map[string]string) string {
	return f.srv.Publish(testTopic, body, attrs)
}

// unacked counts published messages that no consumer has acked yet.
func (f *fake) unacked() int {
	n := 0
	for _, m := range f.srv.Messages() {
		if m.Acks == 0 {
			n++
		}
	}
	return n
}

// config is a consumer configuration for the fake.
func (f *fake) config(streams int) Config {
	return Config{
		ProjectID:      testProject,
		SubscriptionID: testSub,
		Endpoint:       f.srv.Addr,
		Streams:        streams,
	}
}

func testLogger(tb testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", tb.Name())
	}
	return slog.New(slog.DiscardHandler)
}
