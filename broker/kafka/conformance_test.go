package kafka_test

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/broker/kafka"
)

func TestConformance(t *testing.T) {
	e := newKafka(t, nil)
	brokertest.Run(t, func(t *testing.T) brokertest.Fixture {
		topic := e.topic(t, 4)
		group := unique("g")
		return brokertest.Fixture{
			Publish: func(ctx context.Context, msgs []brokertest.Outgoing) error {
				recs := make([]*kgo.Record, len(msgs))
				for i, m := range msgs {
					recs[i] = &kgo.Record{Value: m.Body}
					for k, v := range m.Headers {
						recs[i].Headers = append(recs[i].Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
					}
				}
				return e.produce(ctx, topic, recs)
			},
			NewConsumer: func(t *testing.T) broker.Consumer {
				c, err := kafka.New(config(e, topic, group), nil)
				if err != nil {
					t.Fatal(err)
				}
				return c
			},
			Unacked: func(ctx context.Context) (int, error) {
				return e.unacked(ctx, group, topic)
			},
		}
	}, brokertest.Options{Messages: 300, Timeout: 30 * time.Second})
}
