// Package gcppubsub consumes Google Cloud Pub/Sub subscriptions for sluice
// (cloud.google.com/go/pubsub/v2).
//
// # Workers
//
// One Consumer is one worker of a source. A worker is one subscriber client
// with Config.Streams StreamingPull streams (the client's NumGoroutines); the
// supervisor runs `workers` Consumers per source, so a source holds
// workers × Streams streams and its workers compete for the subscription's
// messages (Pub/Sub spreads them over every open stream).
//
// # Delivery
//
// Received messages are gathered into batches (Config.Batch: 100 messages or
// 50ms) and handed to the Handler. Each message is acked once the Handler has
// written or dead-lettered it; Rejected messages are nacked, so Pub/Sub's
// own dead-letter policy (if the subscription has one) forwards them after
// its max_delivery_attempts. When the Handler fails (Redis down) the whole
// batch is nacked at once, for immediate redelivery rather than after the ack
// deadline, and the consumer pauses with capped, jittered backoff before it
// takes the next batch. While a message waits its turn the client library
// keeps extending its ack deadline.
//
// Flow control is bounded: at most Config.MaxOutstandingMessages messages and
// Config.MaxOutstandingBytes bytes are held (received, not yet acked or
// nacked) per consumer. Messages with an ordering key are passed on in their
// order; the single batcher keeps it within and across batches.
//
// A message's identity (broker.Message.ID) is its Pub/Sub message ID. Its
// attributes become headers, with two more when present:
// "x-pubsub-ordering-key" (the ordering key) and "x-pubsub-delivery-attempt"
// (set by Pub/Sub only on subscriptions with a dead-letter policy).
//
// # Connection and errors
//
// Credentials: Config.ServiceAccount (a JSON key, passed with
// option.WithAuthCredentialsJSON restricted to the service_account type), or
// the host's Application Default Credentials when it is empty. Emulators: set
// Config.Endpoint, or PUBSUB_EMULATOR_HOST in the environment; both dial plain
// gRPC without credentials, and a service account, if given, is not used.
//
// Before it receives, Run reads the subscription (bounded by
// Config.ConnectTimeout), so a missing subscription, rejected credentials or
// an unreachable endpoint is an error Run returns, naming the cause, and the
// supervisor retries with backoff and shows it in the source's status. A
// service account allowed only to consume (roles/pubsub.subscriber) may not
// read the subscription; that PermissionDenied is not fatal: the pull
// streams then report any error themselves and Run returns it.
//
// Lag: Pub/Sub's backlog is only known to Cloud Monitoring, so Consumer does
// not implement broker.Lagger.
package gcppubsub

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sluice-io/sluice/broker"
)

// Headers the consumer adds to a message's attributes.
const (
	HeaderOrderingKey     = "x-pubsub-ordering-key"
	HeaderDeliveryAttempt = "x-pubsub-delivery-attempt"
)

// emulatorEnv is the environment variable the client library and emulators
// agree on.
const emulatorEnv = "PUBSUB_EMULATOR_HOST"

// Consumer is one worker on a Pub/Sub subscription.
type Consumer struct {
	cfg    Config
	logger *slog.Logger
}

var _ broker.Consumer = (*Consumer)(nil)

// New returns a Consumer for cfg. It does not connect: Run does.
func New(cfg Config, logger *slog.Logger) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("pubsub config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Consumer{
		cfg:    cfg.withDefaults(),
		logger: logger.With("subscription", cfg.subscriptionName()),
	}, nil
}

// clientOptions are the options of the Pub/Sub client: an emulator endpoint
// without credentials, or the service account's key, or nothing (ADC).
func (c *Consumer) clientOptions() []option.ClientOption {
	var opts []option.ClientOption
	switch {
	case c.cfg.Endpoint != "":
		opts = append(opts,
			option.WithEndpoint(c.cfg.Endpoint),
			option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
			option.WithTelemetryDisabled(),
		)
	case os.Getenv(emulatorEnv) != "":
		// The client library dials the emulator itself, without credentials.
	case len(c.cfg.ServiceAccount) > 0:
		opts = append(opts, option.WithAuthCredentialsJSON(option.ServiceAccount, c.cfg.ServiceAccount))
	}
	return append(opts, c.cfg.clientOptions...)
}

// Run consumes the subscription until ctx is done or the subscription fails.
// See broker.Consumer.
func (c *Consumer) Run(ctx context.Context, h broker.Handler) error {
	client, err := pubsub.NewClient(ctx, c.cfg.ProjectID, c.clientOptions()...)
	if err != nil {
		return fmt.Errorf("pubsub client for project %q: %w", c.cfg.ProjectID, err)
	}
	defer client.Close()

	if err := c.check(ctx, client); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while connecting: nothing was received
		}
		return err
	}
	h.Healthy()

	sub := client.Subscriber(c.cfg.subscriptionName())
	sub.ReceiveSettings.NumGoroutines = c.cfg.Streams
	sub.ReceiveSettings.MaxOutstandingMessages = c.cfg.MaxOutstandingMessages
	sub.ReceiveSettings.MaxOutstandingBytes = c.cfg.MaxOutstandingBytes
	sub.ReceiveSettings.MaxDurationPerAckExtension = c.cfg.AckExtension

	rctx, stopReceive := context.WithCancel(ctx)
	defer stopReceive()
	items := make(chan item)
	recvDone := make(chan struct{})
	var recvErr error
	go func() {
		defer close(recvDone)
		recvErr = sub.Receive(rctx, func(cbctx context.Context, m *pubsub.Message) {
			it := item{m: m}
			if m.OrderingKey == "" {
				// Hold the callback until the message is settled, so
				// the library's flow control counts it as outstanding.
				// Ordered messages return at once instead: the library
				// runs one callback per ordering key at a time, and
				// holding it would cap a key at one message a batch.
				it.done = make(chan struct{})
			}
			select {
			case items <- it:
			case <-cbctx.Done():
				m.Nack()
				return
			}
			if it.done != nil {
				<-it.done
			}
		})
	}()

	b := batcher{cfg: c.cfg, logger: c.logger, h: h, items: items, recvDone: recvDone, stopReceive: stopReceive}
	failure := b.run(ctx)
	<-recvDone
	if failure != nil {
		return failure
	}
	if recvErr != nil && ctx.Err() == nil {
		return fmt.Errorf("receive from %s: %w", c.cfg.subscriptionName(), describe(recvErr))
	}
	return nil
}

// check reads the subscription, so that a missing subscription, rejected
// credentials or an unreachable endpoint fail Run with a clear error instead
// of leaving the pull streams retrying in silence.
func (c *Consumer) check(ctx context.Context, client *pubsub.Client) error {
	cctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	name := c.cfg.subscriptionName()
	s, err := client.SubscriptionAdminClient.GetSubscription(cctx, &pubsubpb.GetSubscriptionRequest{Subscription: name})
	if status.Code(err) == codes.PermissionDenied {
		// roles/pubsub.subscriber may consume without reading the
		// subscription; the pull streams will tell if it may not consume.
		c.logger.Debug("subscription not readable, consuming anyway", "error", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read subscription %s: %w", name, describe(err))
	}
	c.logger.Debug("subscription found",
		"topic", s.GetTopic(),
		"ack_deadline_seconds", s.GetAckDeadlineSeconds(),
		"message_ordering", s.GetEnableMessageOrdering(),
		"exactly_once", s.GetEnableExactlyOnceDelivery(),
		"dead_letter_topic", s.GetDeadLetterPolicy().GetDeadLetterTopic())
	return nil
}

// describe puts a plain cause in front of the gRPC errors an operator meets.
func describe(err error) error {
	switch status.Code(err) {
	case codes.NotFound:
		return fmt.Errorf("subscription does not exist: %w", err)
	case codes.Unauthenticated:
		return fmt.Errorf("credentials rejected: %w", err)
	case codes.PermissionDenied:
		return fmt.Errorf("permission denied: %w", err)
	case codes.DeadlineExceeded, codes.Unavailable:
		return fmt.Errorf("pubsub unreachable: %w", err)
	}
	return err
}

// item is one received message on its way to the batcher. done, when not
// nil, is closed once the message is acked or nacked.
type item struct {
	m    *pubsub.Message
	done chan struct{}
}

func (it item) settle(ack bool) {
	if ack {
		it.m.Ack()
	} else {
		it.m.Nack()
	}
	if it.done != nil {
		close(it.done)
	}
}

// batcher gathers received messages into batches and settles them.
type batcher struct {
	cfg      Config
	logger   *slog.Logger
	h        broker.Handler
	items    <-chan item
	recvDone <-chan struct{}
	// stopReceive ends Receive early (after a Handler panic).
	stopReceive context.CancelFunc

	pending []item
	batch   []broker.Message
	attempt int           // consecutive failed batches
	delay   time.Duration // the pause after the last failed batch
	failing bool          // whether h.Failing was the last report
}

// run hands batches to the Handler until Receive has returned (ctx done or
// a fatal stream error). After ctx is done it settles the batch in hand and
// nacks whatever else still arrives. It returns a failure only for a Handler
// panic, after Receive has been stopped.
func (b *batcher) run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	hctx := context.WithoutCancel(ctx)
	stopping := ctx.Done()
	for {
		select {
		case it := <-b.items:
			if ctx.Err() != nil {
				it.settle(false)
				continue
			}
			b.pending = append(b.pending, it)
			if len(b.pending) == 1 {
				timer.Reset(b.cfg.Batch.Wait)
			}
			if len(b.pending) < b.cfg.Batch.Size {
				continue
			}
			timer.Stop()
		case <-timer.C:
		case <-stopping:
			stopping = nil // settle the batch in hand, then nack the rest
			timer.Stop()
		case <-b.recvDone:
			for _, it := range b.pending {
				it.settle(false)
			}
			return nil
		}
		if len(b.pending) == 0 {
			continue
		}
		ok, err := b.flush(hctx)
		if err != nil {
			// A panic: stop Receive, nacking all that still comes.
			b.stopReceive()
			b.drainUntilDone()
			return err
		}
		if !ok && ctx.Err() == nil {
			b.pause(ctx)
		}
	}
}

// flush hands the pending messages to the Handler and settles them. It
// reports whether the Handler succeeded; err is a Handler panic.
func (b *batcher) flush(ctx context.Context) (ok bool, err error) {
	items := b.pending
	b.pending = b.pending[:0]
	b.batch = b.batch[:0]
	for _, it := range items {
		b.batch = append(b.batch, message(it.m))
	}
	results, herr, panicked := b.handle(ctx)
	if panicked != nil {
		for _, it := range items {
			it.settle(false)
		}
		return false, panicked
	}
	if herr == nil && len(results) != len(items) {
		herr = fmt.Errorf("handler returned %d results for %d messages", len(results), len(items))
	}
	if herr != nil {
		for _, it := range items {
			it.settle(false)
		}
		b.delay = b.cfg.Backoff.Delay(b.attempt)
		b.attempt++
		b.logger.Warn("batch failed, nacked for redelivery",
			"error", herr, "messages", len(items), "attempt", b.attempt, "pause", b.delay)
		b.h.Failing(fmt.Errorf("handle batch of %d messages: %w", len(items), herr))
		b.failing = true
		return false, nil
	}
	for i, it := range items {
		it.settle(results[i] != broker.Rejected)
	}
	b.attempt = 0
	if b.failing {
		b.failing = false
		b.h.Healthy()
	}
	return true, nil
}

// handle calls the Handler, turning a panic into an error.
func (b *batcher) handle(ctx context.Context) (results []broker.Result, err, panicked error) {
	defer func() {
		if r := recover(); r != nil {
			panicked = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	results, err = b.h.Handle(ctx, b.batch)
	return results, err, nil
}

// pause waits out the backoff after a failed batch. Messages arriving
// meanwhile wait in their callbacks, their ack deadlines extended.
func (b *batcher) pause(ctx context.Context) {
	t := time.NewTimer(b.delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	case <-b.recvDone:
	}
}

// drainUntilDone nacks everything that arrives until Receive returns. It is
// only used after a Handler panic; Run's caller sees the failure.
func (b *batcher) drainUntilDone() {
	for {
		select {
		case it := <-b.items:
			it.settle(false)
		case <-b.recvDone:
			return
		}
	}
}

// message converts a Pub/Sub message into a broker.Message.
func message(m *pubsub.Message) broker.Message {
	headers := make(map[string]string, len(m.Attributes)+2)
	for k, v := range m.Attributes {
		headers[k] = v
	}
	if m.OrderingKey != "" {
		headers[HeaderOrderingKey] = m.OrderingKey
	}
	if m.DeliveryAttempt != nil {
		headers[HeaderDeliveryAttempt] = strconv.Itoa(*m.DeliveryAttempt)
	}
	return broker.Message{ID: m.ID, Body: m.Data, Headers: headers, PublishedAt: m.PublishTime}
}
