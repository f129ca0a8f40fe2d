package main

import (
	"errors"
	"fmt"

	"github.com/sluice-io/sluice/broker/amqp"
	"github.com/sluice-io/sluice/source"
)

// amqpConfig maps an amqp pub_sub source to the configuration of one of its
// workers. Each worker is its own AMQP connection with one channel and one
// consumer on the queue, so a source with `workers: N` opens N connections
// that compete for the queue's messages. The connection is named
// "sluice/<source id>" for rabbitmqctl list_connections and the management
// UI. Batching, prefetch, heartbeat and backoff keep the amqp defaults.
func amqpConfig(ps *source.PubSub, sourceID string) (amqp.Config, error) {
	if ps == nil || ps.AMQP == nil {
		return amqp.Config{}, fmt.Errorf("source %s: %w", sourceID, errors.New("pub_sub.amqp is required"))
	}
	a := ps.AMQP
	cfg := amqp.Config{
		Schema:             a.Schema,
		Host:               a.Host,
		Port:               a.Port,
		Vhost:              a.Vhost,
		Queue:              a.Queue,
		DeadLetterExchange: a.DeadLetterExchange,
		ConnectionName:     "sluice/" + sourceID,
	}
	if a.Auth != nil {
		cfg.User, cfg.Password = a.Auth.User, a.Auth.Password
	}
	if a.BindExchange != nil {
		cfg.BindExchange, cfg.RoutingKey = a.BindExchange.Exchange, a.BindExchange.RoutingKey
	}
	if err := cfg.Validate(); err != nil {
		return amqp.Config{}, fmt.Errorf("source %s: pub_sub.amqp: %w", sourceID, err)
	}
	return cfg, nil
}
