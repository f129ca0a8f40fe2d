package supervisor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/dispatch"
)

// handler is the broker.Handler of one worker: it decodes a batch, writes
// the good messages to the dispatch queue in one call, dead-letters the
// malformed ones, and keeps the worker's status and metrics.
type handler struct {
	w          *worker
	queue      Queue
	decode     dispatch.DecodeOptions
	hard       context.Context // done when the stop grace period is over
	nativeDead bool            // the broker dead-letters Rejected messages itself
}

var _ broker.Handler = (*handler)(nil)

// Handle implements broker.Handler. A panic while handling is a transient
// failure: nothing is acked.
func (h *handler) Handle(ctx context.Context, batch []broker.Message) (results []broker.Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			results, err = nil, fmt.Errorf("handler panicked: %v", p)
		}
		if err != nil {
			h.w.transient(err)
		}
	}()
	// Writes of a stopping worker end when the grace period does.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(h.hard, cancel)()

	m := h.w.metrics
	m.inFlight.Add(float64(len(batch)))
	defer m.inFlight.Sub(float64(len(batch)))
	m.batchSize.Observe(float64(len(batch)))

	if err := h.queue.WaitBelowHighWater(ctx); err != nil {
		return nil, fmt.Errorf("wait for the dispatch stream to drain: %w", err)
	}

	src := h.w.src
	now := time.Now().UTC()
	results = make([]broker.Result, len(batch))
	events := make([]dispatch.Event, 0, len(batch))
	index := make([]int, 0, len(batch))
	type bad struct {
		i      int
		raw    dispatch.Raw
		reason string
		class  string
	}
	var dead []bad
	for i, msg := range batch {
		raw := dispatch.Raw{
			ProjectID:  src.ProjectID,
			SourceID:   src.UID,
			Broker:     src.PubSub.Type,
			MessageID:  msg.ID,
			Body:       msg.Body,
			Headers:    msg.Headers,
			ReceivedAt: now,
		}
		ev, err := dispatch.Decode(raw, h.decode)
		if err != nil {
			if !dispatch.IsPermanent(err) {
				return nil, fmt.Errorf("decode message %q: %w", msg.ID, err)
			}
			var pe *dispatch.PermanentError
			errors.As(err, &pe)
			dead = append(dead, bad{i, raw, pe.Reason, reasonClass(pe.Reason)})
			continue
		}
		events = append(events, ev)
		index = append(index, i)
	}

	var written, dups int
	if len(events) > 0 {
		outcomes, err := h.queue.Enqueue(ctx, events)
		if err != nil {
			return nil, fmt.Errorf("enqueue %d events: %w", len(events), err)
		}
		if len(outcomes) != len(events) {
			return nil, fmt.Errorf("enqueue returned %d outcomes for %d events", len(outcomes), len(events))
		}
		for j, o := range outcomes {
			results[index[j]] = broker.Written
			if o == dispatch.Duplicate {
				dups++
			} else {
				written++
			}
		}
	}
	for _, d := range dead {
		if h.nativeDead {
			results[d.i] = broker.Rejected
			continue
		}
		if err := h.queue.DeadLetter(ctx, d.raw, d.reason); err != nil {
			return nil, fmt.Errorf("dead-letter message %q: %w", d.raw.MessageID, err)
		}
		results[d.i] = broker.DeadLettered
	}
	for _, d := range dead {
		m.deadLettered.WithLabelValues(d.class).Inc()
	}

	done := time.Now()
	for _, msg := range batch {
		if !msg.PublishedAt.IsZero() {
			m.latency.Observe(done.Sub(msg.PublishedAt).Seconds())
		}
	}
	h.w.settled(written, dups, len(dead), done)
	return results, nil
}

// Failing implements broker.Handler.
func (h *handler) Failing(err error) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	h.w.fail(err)
	h.w.setState(StateBackingOff)
}

// Healthy implements broker.Handler.
func (h *handler) Healthy() { h.w.setState(StateRunning) }

// reasonClass sorts a permanent decode error into a small, bounded set of
// metric label values.
func reasonClass(msg string) string {
	switch {
	case strings.Contains(msg, "over the limit"):
		return "too_large"
	case strings.Contains(msg, "body is"), strings.Contains(msg, "body must be"):
		return "invalid_body"
	default:
		return "invalid_fields"
	}
}
