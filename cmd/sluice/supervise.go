package main

import (
	"fmt"
	"log/slog"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/amqp"
	"github.com/sluice-io/sluice/broker/gcppubsub"
	"github.com/sluice-io/sluice/broker/kafka"
	"github.com/sluice-io/sluice/broker/sqs"
	"github.com/sluice-io/sluice/broker/supervisor"
	"github.com/sluice-io/sluice/config"
	"github.com/sluice-io/sluice/source"
)

// consumerFactory is the supervisor's Factory: it maps a source's pub_sub
// block to the configuration of its broker package (consumer_<kind>.go) and
// builds one worker's consumer. The batch settings of cfg apply to every
// broker.
func consumerFactory(cfg config.Config, log *slog.Logger) supervisor.Factory {
	batch := broker.Batch{Size: cfg.BatchSize, Wait: cfg.BatchWait}
	return func(src source.Source, worker int) (broker.Consumer, error) {
		ps := src.PubSub
		l := log.With("source_id", src.UID, "project_id", src.ProjectID, "broker", ps.Type, "worker", worker)
		switch ps.Type {
		case source.PubSubAMQP:
			acfg, err := amqpConfig(ps, src.UID)
			acfg.Batch = batch
			acfg.ConnectionName = fmt.Sprintf("sluice/%s/%d", src.UID, worker)
			return consumer(acfg, err, amqp.New, l)
		case source.PubSubGoogle:
			gcfg, err := googleConfig(ps, src.UID)
			gcfg.Batch = batch
			return consumer(gcfg, err, gcppubsub.New, l)
		case source.PubSubKafka:
			kcfg, err := kafkaConfig(ps, src.UID)
			kcfg.Batch = batch
			kcfg.Inflight = cfg.KafkaInflight
			return consumer(kcfg, err, kafka.New, l)
		case source.PubSubSQS:
			scfg, err := sqsConfig(ps, src.UID)
			scfg.Batch = batch
			return consumer(scfg, err, sqs.New, l)
		default:
			return nil, fmt.Errorf("pub_sub.type %q is not supported", ps.Type)
		}
	}
}

// consumer builds a consumer from a mapped configuration, keeping a nil
// consumer out of the broker.Consumer interface.
func consumer[C any, K broker.Consumer](cfg C, err error, build func(C, *slog.Logger) (K, error), log *slog.Logger) (broker.Consumer, error) {
	if err != nil {
		return nil, err
	}
	c, err := build(cfg, log)
	if err != nil {
		return nil, err
	}
	return c, nil
}
