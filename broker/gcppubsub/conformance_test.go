package gcppubsub

import (
	"context"
	"testing"
	"time"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
)

// conformanceStreams: pstest serves about 90 messages a second per stream.
const conformanceStreams = 16

func TestConformance(t *testing.T) {
	t.Parallel()
	brokertest.Run(t, func(t *testing.T) brokertest.Fixture {
		f := newFake(t, 0, nil)
		return brokertest.Fixture{
			Publish: func(ctx context.Context, msgs []brokertest.Outgoing) error {
				for _, m := range msgs {
					f.publish(m.Body, m.Headers)
				}
				return nil
			},
			NewConsumer: func(t *testing.T) broker.Consumer {
				c, err := New(f.config(conformanceStreams), testLogger(t))
				if err != nil {
					t.Fatal(err)
				}
				return c
			},
			Unacked: func(context.Context) (int, error) { return f.unacked(), nil },
		}
	}, brokertest.Options{Messages: 200, Timeout: 30 * time.Second})
}
