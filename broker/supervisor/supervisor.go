// Package supervisor runs the broker consumers of every pub_sub source.
//
// It reconciles the desired set of sources (pub_sub, neither deleted nor
// disabled) with the running set: it stops removed sources, restarts changed
// ones and starts new ones, on every change notice from the store and on a
// periodic full resync. Each source runs Workers workers; a worker that fails
// is restarted after a capped, jittered exponential backoff.
//
// The supervisor imports the broker contract, the source store and the
// dispatch queue; none of them imports it.
package supervisor

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/source"
)

// Store is what the supervisor reads of the source definitions.
type Store interface {
	// All returns every source that is not deleted.
	All(ctx context.Context) ([]source.Source, error)
	// Watch calls changed for every change notice until ctx is done (nil)
	// or the subscription fails (an error); ready is called once subscribed.
	Watch(ctx context.Context, ready func(), changed func(sourceID string)) error
}

// Queue is the dispatch queue the workers write to.
type Queue interface {
	Enqueue(ctx context.Context, events []dispatch.Event) ([]dispatch.Outcome, error)
	DeadLetter(ctx context.Context, raw dispatch.Raw, reason string) error
	// WaitBelowHighWater blocks while the dispatch stream is above its high
	// water mark (backpressure).
	WaitBelowHighWater(ctx context.Context) error
}

// Factory builds the consumer of one worker (0-based) of a source. An error
// is a configuration the broker package rejects; the worker backs off and
// retries, so a fixed definition recovers on its own.
type Factory func(src source.Source, worker int) (broker.Consumer, error)

// Config tunes the supervisor. The zero value uses the defaults.
type Config struct {
	// Resync is the period of the full resync that covers missed change
	// notices. Default 30s.
	Resync time.Duration
	// Backoff paces the restarts of a failed worker. Default 500ms doubling
	// to 30s, with jitter.
	Backoff broker.Backoff
	// HealthyAfter is how long a worker must run before a failure counts as a
	// fresh one (the backoff starts over). Default 30s.
	HealthyAfter time.Duration
	// Grace bounds how long a stopping worker may take to write and ack the
	// batch in hand. Default 30s.
	Grace time.Duration
	// Decode holds the message decoding options (body size limit).
	Decode dispatch.DecodeOptions
}

func (c Config) withDefaults() Config {
	c.Resync = cmp.Or(c.Resync, 30*time.Second)
	c.Backoff.Min = cmp.Or(c.Backoff.Min, 500*time.Millisecond)
	c.Backoff.Max = cmp.Or(c.Backoff.Max, 30*time.Second)
	c.HealthyAfter = cmp.Or(c.HealthyAfter, 30*time.Second)
	c.Grace = cmp.Or(c.Grace, 30*time.Second)
	return c
}

// Supervisor reconciles sources and runs their workers.
type Supervisor struct {
	store   Store
	queue   Queue
	factory Factory
	cfg     Config
	log     *slog.Logger
	metrics *Metrics

	poke       chan struct{}
	reconciled atomic.Bool

	mu      sync.Mutex
	running map[string]*runner // by source id
}

// New returns a supervisor. metrics may be nil (nothing is registered then).
func New(store Store, queue Queue, factory Factory, cfg Config, metrics *Metrics, logger *slog.Logger) *Supervisor {
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	s := &Supervisor{
		store:   store,
		queue:   queue,
		factory: factory,
		cfg:     cfg.withDefaults(),
		log:     logger,
		metrics: metrics,
		poke:    make(chan struct{}, 1),
		running: make(map[string]*runner),
	}
	metrics.sup = s
	return s
}

// Ready reports whether the first reconcile has completed.
func (s *Supervisor) Ready() bool { return s.reconciled.Load() }

// Run reconciles until ctx is done, then stops every source, letting each
// write and ack the batch in hand within the grace period. It returns nil
// after every worker has exited.
func (s *Supervisor) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { s.watch(ctx) })
	defer wg.Wait()
	defer s.stopAll()

	tick := time.NewTicker(s.cfg.Resync)
	defer tick.Stop()
	for {
		s.reconcile(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-s.poke:
		case <-tick.C:
		}
	}
}

// Poke asks for a reconcile soon; repeated pokes merge into one.
func (s *Supervisor) Poke() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// watch follows the store's change notices, resubscribing with backoff when
// the subscription fails (Redis down). Every (re)subscription pokes a full
// reconcile, since notices may have been missed meanwhile.
func (s *Supervisor) watch(ctx context.Context) {
	for attempt := 0; ; {
		start := time.Now()
		err := s.store.Watch(ctx, s.Poke, func(string) { s.Poke() })
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > s.cfg.HealthyAfter {
			attempt = 0
		}
		s.log.Warn("source change notices interrupted", "error", err, "attempt", attempt)
		if !s.cfg.Backoff.Sleep(ctx, attempt) {
			return
		}
		attempt++
	}
}

// reconcile makes the running set match the store. When the store cannot be
// read, running workers keep their configuration and the next poke or tick
// tries again.
func (s *Supervisor) reconcile(ctx context.Context) {
	start := time.Now()
	all, err := s.store.All(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("reconcile: read sources", "error", err)
			s.metrics.reconciled(start, err)
			// Retry sooner than the resync period.
			time.AfterFunc(s.cfg.Backoff.Delay(2), s.Poke)
		}
		return
	}
	desired := make(map[string]source.Source)
	for _, src := range all {
		if wanted(src) {
			desired[src.UID] = src
		}
	}

	s.mu.Lock()
	var stopping []*runner
	for id, r := range s.running {
		src, ok := desired[id]
		switch {
		case !ok:
			s.log.Info("source stopping", "source_id", id, "reason", "removed or disabled")
		case fingerprint(src) != r.fingerprint:
			s.log.Info("source restarting", "source_id", id, "reason", "configuration changed")
		default:
			continue
		}
		delete(s.running, id)
		r.stop()
		stopping = append(stopping, r)
	}
	s.mu.Unlock()
	for _, r := range stopping {
		r.wait()
		if _, ok := desired[r.src.UID]; !ok {
			s.metrics.forget(r.src)
		}
	}

	s.mu.Lock()
	for id, src := range desired {
		if _, ok := s.running[id]; ok {
			continue
		}
		r := s.start(src)
		s.running[id] = r
		s.log.Info("source started", "source_id", id, "project_id", src.ProjectID,
			"broker", src.PubSub.Type, "workers", src.PubSub.Workers)
	}
	s.mu.Unlock()
	s.metrics.reconciled(start, nil)
	s.reconciled.Store(true)
}

func (s *Supervisor) stopAll() {
	s.mu.Lock()
	rs := make([]*runner, 0, len(s.running))
	for id, r := range s.running {
		r.stop()
		rs = append(rs, r)
		delete(s.running, id)
	}
	s.mu.Unlock()
	for _, r := range rs {
		r.wait()
		s.log.Info("source stopped", "source_id", r.src.UID)
	}
}

// wanted reports whether src should be consumed.
func wanted(src source.Source) bool {
	return src.Type == source.TypePubSub && src.PubSub != nil && src.DeletedAt == nil && !src.IsDisabled
}

// fingerprint identifies everything that affects consumption: the whole
// pub_sub block. Any change to it restarts the source.
func fingerprint(src source.Source) string {
	b, err := json.Marshal(src.PubSub)
	if err != nil {
		return fmt.Sprintf("unencodable:%v", err)
	}
	return string(b)
}
