package main

import (
	"errors"
	"fmt"

	"github.com/sluice-io/sluice/broker/sqs"
	"github.com/sluice-io/sluice/source"
)

// sqsConfig maps an sqs pub_sub source to the configuration of one of its
// workers. Each worker is one long-poll receive loop (10 messages a receive)
// with its own SDK client, so a source with `workers: N` keeps N receives
// in flight on the queue. Empty access_key_id and secret_key select the AWS
// SDK's default credential chain (environment, shared config, IRSA, ECS or
// EC2 instance role); endpoint, when set, is the SDK's BaseEndpoint.
// Waits, visibility, batching and backoff keep the sqs defaults.
func sqsConfig(ps *source.PubSub, sourceID string) (sqs.Config, error) {
	if ps == nil || ps.SQS == nil {
		return sqs.Config{}, fmt.Errorf("source %s: %w", sourceID, errors.New("pub_sub.sqs is required"))
	}
	s := ps.SQS
	cfg := sqs.Config{
		AccessKeyID: s.AccessKeyID,
		SecretKey:   s.SecretKey,
		Region:      s.DefaultRegion,
		QueueName:   s.QueueName,
		Endpoint:    s.Endpoint,
	}
	if err := cfg.Validate(); err != nil {
		return sqs.Config{}, fmt.Errorf("source %s: pub_sub.sqs: %w", sourceID, err)
	}
	return cfg, nil
}
