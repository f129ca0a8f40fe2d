package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sluice-io/sluice/broker/kafka"
	"github.com/sluice-io/sluice/source"
)

// kafkaConfig maps a kafka pub_sub source to the configuration of one of its
// workers. Each worker is one kafka-go Reader in the source's consumer group,
// so a source with `workers: N` is N group members splitting the topic's
// partitions; workers beyond the partition count idle. A source without a
// consumer_group_id (or a blank one) gets kafka.DefaultGroupID(source id):
// stable across restarts and replicas. auth.type "" with auth.tls true is TLS
// without SASL; auth.ca_cert (PEM) replaces the system CAs. Batching, fetch
// wait, session timeout and backoff keep the kafka defaults.
func kafkaConfig(ps *source.PubSub, sourceID string) (kafka.Config, error) {
	if ps == nil || ps.Kafka == nil {
		return kafka.Config{}, fmt.Errorf("source %s: %w", sourceID, errors.New("pub_sub.kafka is required"))
	}
	k := ps.Kafka
	group := strings.TrimSpace(k.ConsumerGroupID)
	if group == "" {
		group = kafka.DefaultGroupID(sourceID)
	}
	cfg := kafka.Config{
		Brokers:  k.Brokers,
		Topic:    k.TopicName,
		GroupID:  group,
		ClientID: "sluice-" + sourceID,
	}
	if a := k.Auth; a != nil {
		cfg.Auth = kafka.Auth{
			Mechanism: strings.ToLower(strings.TrimSpace(a.Type)),
			Hash:      strings.ToUpper(strings.TrimSpace(a.Hash)),
			Username:  a.Username,
			Password:  a.Password,
			TLS:       a.TLS,
			CACert:    a.CACert,
		}
	}
	if err := cfg.Validate(); err != nil {
		return kafka.Config{}, fmt.Errorf("source %s: pub_sub.kafka: %w", sourceID, err)
	}
	return cfg, nil
}
