package main

import (
	"errors"
	"fmt"

	"github.com/sluice-io/sluice/broker/gcppubsub"
	"github.com/sluice-io/sluice/source"
)

// googleConfig maps a google pub_sub source to the configuration of one of
// its workers. Each worker is one subscriber with one StreamingPull stream,
// so a source with `workers: N` keeps N streams open. Flow control, batching
// and backoff keep the gcppubsub defaults. The emulator is chosen by the
// process environment (PUBSUB_EMULATOR_HOST), never by the source.
func googleConfig(ps *source.PubSub, sourceID string) (gcppubsub.Config, error) {
	if ps == nil || ps.Google == nil {
		return gcppubsub.Config{}, fmt.Errorf("source %s: %w", sourceID, errors.New("pub_sub.google is required"))
	}
	g := ps.Google
	cfg := gcppubsub.Config{
		ProjectID:      g.ProjectID,
		SubscriptionID: g.SubscriptionID,
		ServiceAccount: g.ServiceAccount,
	}
	if err := cfg.Validate(); err != nil {
		return gcppubsub.Config{}, fmt.Errorf("source %s: pub_sub.google: %w", sourceID, err)
	}
	return cfg, nil
}
