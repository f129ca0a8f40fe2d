// Package broker is the contract between sluice's supervisor and the broker
// consumers (one sub-package per broker). It is a leaf: it imports nothing of
// sluice and no broker SDK.
//
// The guarantee every consumer keeps: a message is acknowledged to its broker
// only after the Handler has returned a nil error for the batch that holds it.
package broker

import (
	"context"
	"time"
)

// Message is one message as a broker delivered it.
type Message struct {
	// ID is the broker's own identity of the message, stable across
	// redeliveries: Kafka "topic/partition/offset", the SQS MessageId, the
	// Pub/Sub message ID, the AMQP message-id property. Dedupe keys on it.
	// Empty when the broker offers none (an AMQP publisher that sets no
	// message-id); such a message cannot be deduplicated on redelivery.
	ID string
	// Body is the raw payload.
	Body []byte
	// Headers are the broker's headers or attributes, keyed as delivered.
	Headers map[string]string
	// PublishedAt is when the broker accepted the message, zero if unknown.
	PublishedAt time.Time
}

// Result says how the Handler settled one message of a batch.
type Result int

const (
	// Written: the message is in the dispatch stream, or was already (a
	// duplicate). The consumer acks it.
	Written Result = iota
	// DeadLettered: the message is permanently bad and has been recorded in
	// sluice's dead-letter stream. The consumer acks it.
	DeadLettered
	// Rejected: the message is permanently bad and the consumer must dead-letter
	// it through the broker itself (AMQP: nack without requeue, so the queue's
	// dead-letter exchange receives it). Only returned to consumers whose source
	// has a broker-side dead letter configured.
	Rejected
)

func (r Result) String() string {
	switch r {
	case Written:
		return "written"
	case DeadLettered:
		return "dead_lettered"
	case Rejected:
		return "rejected"
	default:
		return "unknown"
	}
}

// Handler takes batches of messages from a consumer. Implementations are safe
// for concurrent use by several consumers.
type Handler interface {
	// Handle settles a batch. A nil error means every message is settled and
	// results[i] says how batch[i] was (len(results) == len(batch)); the
	// consumer then acks (or, for Rejected, dead-letters) each of them.
	//
	// A non-nil error is transient (Redis down, a timeout): nothing in the batch
	// is settled, the consumer must not ack any of it, and it either retries the
	// same batch after a backoff or hands it back to the broker for redelivery.
	// Retrying a batch never duplicates an entry: the dispatch write is
	// idempotent on Message.ID.
	Handle(ctx context.Context, batch []Message) ([]Result, error)

	// Failing reports an error the consumer is working around by itself (a
	// fetch it will retry, a refused connection) so it shows in the source's
	// status. Healthy clears it. Both are cheap and safe to call often.
	Failing(err error)
	// Healthy reports that the consumer is connected and consuming.
	Healthy()
}

// Consumer consumes one worker's share of a source.
type Consumer interface {
	// Run connects, consumes and hands batches to h until ctx is done or the
	// consumer fails. It returns only after all its goroutines have exited.
	//
	// When ctx is done, Run stops fetching, settles the batch in hand by
	// calling h.Handle with a context that is not cancelled with ctx (for
	// example context.WithoutCancel(ctx); the caller bounds it with its own
	// grace period), acks what was settled, and returns nil.
	//
	// Any other return is a failure (broker unreachable, bad credentials, a
	// missing queue): the supervisor restarts Run after a backoff. Messages not
	// acked by then are redelivered by the broker.
	Run(ctx context.Context, h Handler) error
}

// Lagger is implemented by consumers that know how many messages wait on the
// broker for them (Kafka lag, SQS ApproximateNumberOfMessages, AMQP queue
// depth). Lag returns the last known figure and false when there is none yet;
// it must not block.
type Lagger interface {
	Lag() (n int64, ok bool)
}

// Partitioned is implemented by consumers whose source is split into
// partitions shared out among the workers (Kafka). Partitions returns the
// partitions this worker holds with the lag of each, and false when it does
// not know yet; an empty map means the worker holds none and idles (more
// workers than partitions). It must not block.
type Partitioned interface {
	Partitions() (lag map[int]int64, ok bool)
}

// Batch is how a consumer gathers messages before handing them over.
type Batch struct {
	// Size is the largest batch handed to Handle. Default 100.
	Size int
	// Wait is the longest a partial batch waits for more messages. Default 50ms.
	Wait time.Duration
}

// WithDefaults returns b with zero fields set to their defaults.
func (b Batch) WithDefaults() Batch {
	if b.Size <= 0 {
		b.Size = 100
	}
	if b.Wait <= 0 {
		b.Wait = 50 * time.Millisecond
	}
	return b
}
