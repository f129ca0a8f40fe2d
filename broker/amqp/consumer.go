// Package amqp consumes a RabbitMQ (AMQP 0.9.1) queue for sluice, with
// github.com/rabbitmq/amqp091-go.
//
// # Workers
//
// One Consumer is one worker: its own connection with one channel and one
// basic.consume on the queue, with its own QoS prefetch. The workers of a
// source compete for the queue's messages; RabbitMQ spreads deliveries among
// them round-robin. A connection per worker keeps a slow or broken worker
// from stalling the others (flow control and heartbeats are per connection).
//
// # Topology
//
// On every (re)connect the consumer checks that BindExchange and
// DeadLetterExchange exist (a passive declare, so a typo is reported by name
// instead of dead-lettered messages vanishing), declares the queue durable
// with x-dead-letter-exchange when DeadLetterExchange is set, and binds it to
// BindExchange with RoutingKey. It never creates exchanges.
//
// # Acknowledgement
//
// Deliveries are gathered into batches (Batch.Size, Batch.Wait) and handed
// to the Handler. Only when Handle returns nil are they settled: Rejected
// messages are nacked one by one without requeue (RabbitMQ dead-letters them
// to the queue's dead-letter exchange), then every other message of the batch
// is acked with a single multiple=true ack up to the highest of their delivery
// tags. That single ack is exact: batches are handled in delivery order on one
// channel, so every lower tag is already settled, and the rejected ones were
// nacked before it. A Handle error acks nothing; the same batch is retried
// after a backoff until it succeeds, the connection dies, or the consumer is
// stopped. Unacked deliveries return to the queue when the channel closes.
//
// # Connection loss
//
// Run reconnects by itself: when an established connection or channel is
// lost, it reports the error with Handler.Failing, waits (Config.Reconnect
// backoff, reset after a successful reconnect) and connects again, reporting
// Handler.Healthy once it consumes. Run returns an error only when its first
// connection in this call cannot be established (broker unreachable, bad
// credentials, a missing exchange, a queue declared with other arguments) or
// the Handler breaks the contract; the supervisor then restarts it with its
// own backoff and shows the error.
//
// # Message identity
//
// broker.Message.ID is the AMQP message-id property. Dedupe in the dispatch
// queue keys on it, so a message redelivered after a lost connection or a
// crash between the write and the ack is written once. When the publisher
// sets no message-id, ID is empty and nothing can tell a redelivery from a
// new message: such messages are delivered at least once, and a redelivery
// (after a connection loss or a crash mid-batch) can appear twice in the
// dispatch stream. Publishers that need exactly-once must set message-id.
//
// # Headers
//
// The message's AMQP headers table is flattened into broker.Message.Headers
// (strings as they are, numbers and booleans formatted, byte arrays as text,
// timestamps RFC 3339, nested tables and arrays as JSON), so
// x-convoy-message-type comes through. Properties useful downstream are added
// under x-amqp-* names when set: content type and encoding, correlation id,
// type, app id, and the exchange and routing key the message was published
// with; a header of the same name wins. PublishedAt is the timestamp property
// (set by the publisher), zero when absent.
//
// # Lag
//
// Lag reports the queue's ready-message count (messages not yet delivered to
// any consumer, not counting unacked ones), refreshed every LagInterval with a
// passive queue declare on a second channel of the worker's connection.
package amqp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-io/sluice/broker"
)

var (
	_ broker.Consumer = (*Consumer)(nil)
	_ broker.Lagger   = (*Consumer)(nil)
)

// Consumer is one worker consuming an AMQP queue. Run may be called again
// after it returns, but not concurrently.
type Consumer struct {
	cfg    Config
	logger *slog.Logger

	lag   atomic.Int64
	hasLg atomic.Bool
}

// New returns a Consumer for cfg. It does not connect; Run does.
func New(cfg Config, logger *slog.Logger) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("amqp config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	return &Consumer{
		cfg:    cfg,
		logger: logger.With("queue", cfg.Queue),
	}, nil
}

// Lag returns the queue's ready-message count from the last refresh.
func (c *Consumer) Lag() (int64, bool) {
	return c.lag.Load(), c.hasLg.Load()
}

// contractError marks a Handler that broke the broker contract: retrying or
// reconnecting cannot help, so Run returns it.
type contractError struct{ err error }

func (e *contractError) Error() string { return e.err.Error() }
func (e *contractError) Unwrap() error { return e.err }

// Run consumes until ctx is done, reconnecting after a lost connection. See
// the package documentation for when it returns an error.
func (c *Consumer) Run(ctx context.Context, h broker.Handler) error {
	everConsumed := false
	attempt := 0
	for {
		consumed, err := c.session(ctx, h)
		if ctx.Err() != nil {
			return nil
		}
		var ce *contractError
		if errors.As(err, &ce) {
			return err
		}
		if consumed {
			everConsumed = true
			attempt = 0
		}
		if !everConsumed {
			return err
		}
		h.Failing(err)
		c.logger.Warn("amqp consumer lost its connection; reconnecting", "err", err, "attempt", attempt+1)
		if !c.cfg.Reconnect.Sleep(ctx, attempt) {
			return nil
		}
		attempt++
	}
}

// session runs one connection: connect, declare, consume until the
// connection is lost (error) or ctx is done (nil). consumed reports whether
// it got as far as consuming.
func (c *Consumer) session(ctx context.Context, h broker.Handler) (consumed bool, err error) {
	u := c.cfg.URL()
	props := amqp091.NewConnectionProperties()
	props.SetClientConnectionName(c.cfg.ConnectionName)
	conf := amqp091.Config{
		Heartbeat:  c.cfg.Heartbeat,
		Properties: props,
		Dial:       c.dialer(ctx),
	}
	if c.cfg.Schema == "amqps" {
		// Nil RootCAs: the system roots.
		conf.TLSClientConfig = &tls.Config{ServerName: c.cfg.Host, MinVersion: tls.VersionTLS12}
	}
	conn, err := amqp091.DialConfig(u.String(), conf)
	if err != nil {
		return false, fmt.Errorf("connect to %s: %w", u.Redacted(), err)
	}
	defer conn.Close()

	ch, err := c.declare(conn)
	if err != nil {
		return false, err
	}
	defer ch.Close()
	if err := ch.Qos(c.cfg.Prefetch, 0, false); err != nil {
		return false, fmt.Errorf("set prefetch %d: %w", c.cfg.Prefetch, err)
	}
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	cancelled := ch.NotifyCancel(make(chan string, 1))
	deliveries, err := ch.Consume(c.cfg.Queue, "", false, false, false, false, nil)
	if err != nil {
		return false, fmt.Errorf("consume queue %q: %w", c.cfg.Queue, err)
	}
	h.Healthy()
	c.logger.Debug("amqp consumer consuming", "url", u.Redacted(), "prefetch", c.cfg.Prefetch)

	var wg sync.WaitGroup
	lagCtx, stopLag := context.WithCancel(ctx)
	if c.cfg.LagInterval > 0 {
		wg.Go(func() { c.pollLag(lagCtx, conn) })
	}
	defer wg.Wait()
	defer stopLag()

	s := &loop{c: c, h: h, ch: ch, deliveries: deliveries, closed: closed, cancelled: cancelled}
	return true, s.run(ctx)
}

// dialer connects over TCP, giving up when ctx is done, and bounds the TLS
// and AMQP handshakes that follow with a deadline (which the client library
// clears once the connection is open).
func (c *Consumer) dialer(ctx context.Context) func(network, addr string) (net.Conn, error) {
	return func(network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: c.cfg.DialTimeout}
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := conn.SetDeadline(time.Now().Add(c.cfg.DialTimeout)); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
}

// declare checks the exchanges, declares and binds the queue, and returns the
// channel to consume on.
func (c *Consumer) declare(conn *amqp091.Connection) (*amqp091.Channel, error) {
	// A failed passive declare closes its channel, so every check gets a
	// fresh one.
	for _, ex := range []struct{ what, name string }{
		{"bind exchange", c.cfg.BindExchange},
		{"dead-letter exchange", c.cfg.DeadLetterExchange},
	} {
		if ex.name == "" {
			continue
		}
		ch, err := conn.Channel()
		if err != nil {
			return nil, fmt.Errorf("open channel: %w", err)
		}
		// RabbitMQ checks only that a passively declared exchange exists; the
		// kind given here is not compared.
		err = ch.ExchangeDeclarePassive(ex.name, amqp091.ExchangeDirect, false, false, false, false, nil)
		if err != nil {
			var aerr *amqp091.Error
			if errors.As(err, &aerr) && aerr.Code == amqp091.NotFound {
				return nil, fmt.Errorf("%s %q does not exist on vhost %q; create it first", ex.what, ex.name, c.cfg.Vhost)
			}
			return nil, fmt.Errorf("check %s %q: %w", ex.what, ex.name, err)
		}
		ch.Close()
	}

	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	var args amqp091.Table
	if c.cfg.DeadLetterExchange != "" {
		args = amqp091.Table{"x-dead-letter-exchange": c.cfg.DeadLetterExchange}
	}
	if _, err := ch.QueueDeclare(c.cfg.Queue, true, false, false, false, args); err != nil {
		return nil, fmt.Errorf("declare queue %q: %w", c.cfg.Queue, err)
	}
	if c.cfg.BindExchange != "" {
		if err := ch.QueueBind(c.cfg.Queue, c.cfg.RoutingKey, c.cfg.BindExchange, false, nil); err != nil {
			return nil, fmt.Errorf("bind queue %q to %q with key %q: %w", c.cfg.Queue, c.cfg.BindExchange, c.cfg.RoutingKey, err)
		}
	}
	return ch, nil
}

// pollLag refreshes the queue depth every LagInterval until ctx is done or
// the connection is closed.
func (c *Consumer) pollLag(ctx context.Context, conn *amqp091.Connection) {
	t := time.NewTicker(c.cfg.LagInterval)
	defer t.Stop()
	var ch *amqp091.Channel
	defer func() {
		if ch != nil {
			ch.Close()
		}
	}()
	for {
		if ch == nil || ch.IsClosed() {
			var err error
			if ch, err = conn.Channel(); err != nil {
				return // the connection is gone; the session ends too
			}
		}
		if q, err := ch.QueueDeclarePassive(c.cfg.Queue, true, false, false, false, nil); err == nil {
			c.lag.Store(int64(q.Messages))
			c.hasLg.Store(true)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// loop is one session's consume loop.
type loop struct {
	c          *Consumer
	h          broker.Handler
	ch         *amqp091.Channel
	deliveries <-chan amqp091.Delivery
	closed     <-chan *amqp091.Error
	cancelled  <-chan string

	batch []amqp091.Delivery
	msgs  []broker.Message
}

// run gathers and settles batches until ctx is done (nil) or the channel
// closes (error).
func (l *loop) run(ctx context.Context) error {
	size, wait := l.c.cfg.Batch.Size, l.c.cfg.Batch.Wait
	l.batch = make([]amqp091.Delivery, 0, size)
	l.msgs = make([]broker.Message, 0, size)
	timer := time.NewTimer(wait)
	timer.Stop()
	defer timer.Stop()
	for {
		l.batch, l.msgs = l.batch[:0], l.msgs[:0]
		// Wait for the first delivery of a batch as long as it takes.
		select {
		case <-ctx.Done():
			return nil
		case d, ok := <-l.deliveries:
			if !ok {
				return l.closeError()
			}
			l.add(d)
		}
		timer.Reset(wait)
		stopping, lost := false, false
	gather:
		for len(l.batch) < size {
			select {
			case d, ok := <-l.deliveries:
				if !ok {
					lost = true
					break gather
				}
				l.add(d)
			case <-timer.C:
				break gather
			case <-ctx.Done():
				stopping = true
				break gather
			}
		}
		timer.Stop()
		if lost {
			// The channel is gone: nothing of the batch can be acked any
			// more, and RabbitMQ redelivers all of it.
			return l.closeError()
		}
		if err := l.handle(ctx); err != nil {
			return err
		}
		if stopping || ctx.Err() != nil {
			return nil
		}
	}
}

func (l *loop) add(d amqp091.Delivery) {
	l.batch = append(l.batch, d)
	l.msgs = append(l.msgs, message(d))
}

// handle hands the batch to the Handler until it succeeds and settles it.
// It returns nil without settling when ctx is done while retrying, and an
// error when the channel closes.
func (l *loop) handle(ctx context.Context) error {
	// Handle's context outlives ctx: a stop lets the batch in hand finish.
	hctx := context.WithoutCancel(ctx)
	for attempt := 0; ; attempt++ {
		results, err := l.h.Handle(hctx, l.msgs)
		if err == nil {
			if attempt > 0 {
				l.h.Healthy()
			}
			return l.settle(results)
		}
		l.h.Failing(err)
		l.c.logger.Warn("handling a batch failed; retrying it", "err", err, "batch", len(l.msgs), "attempt", attempt+1)
		t := time.NewTimer(l.c.cfg.Reconnect.Delay(attempt))
		select {
		case <-t.C:
		case <-ctx.Done():
			// Not acked: RabbitMQ redelivers the batch once the channel closes.
			t.Stop()
			return nil
		case e := <-l.closed:
			t.Stop()
			return closeErr(e)
		}
	}
}

// settle acks and nacks the batch per results; see the package documentation.
func (l *loop) settle(results []broker.Result) error {
	if len(results) != len(l.batch) {
		return &contractError{fmt.Errorf("handler returned %d results for a batch of %d", len(results), len(l.batch))}
	}
	var lastAck uint64
	for i, r := range results {
		d := l.batch[i]
		switch r {
		case broker.Written, broker.DeadLettered:
			lastAck = d.DeliveryTag
		case broker.Rejected:
			if l.c.cfg.DeadLetterExchange == "" {
				return &contractError{fmt.Errorf("handler rejected a message but queue %q has no dead-letter exchange configured", l.c.cfg.Queue)}
			}
		default:
			return &contractError{fmt.Errorf("handler returned unknown result %d", r)}
		}
	}
	for i, r := range results {
		if r != broker.Rejected {
			continue
		}
		if err := l.ch.Nack(l.batch[i].DeliveryTag, false, false); err != nil {
			return fmt.Errorf("nack delivery: %w", err)
		}
	}
	if lastAck > 0 {
		if err := l.ch.Ack(lastAck, true); err != nil {
			return fmt.Errorf("ack deliveries up to tag %d: %w", lastAck, err)
		}
	}
	return nil
}

// closeError waits briefly for the reason the deliveries stopped.
func (l *loop) closeError() error {
	select {
	case e := <-l.closed:
		return closeErr(e)
	case _, ok := <-l.cancelled:
		if !ok { // closed together with the channel
			return closeErr(<-l.closed)
		}
		return fmt.Errorf("the broker cancelled the consumer of queue %q (was it deleted?)", l.c.cfg.Queue)
	case <-time.After(time.Second):
		return errors.New("amqp channel closed")
	}
}

func closeErr(e *amqp091.Error) error {
	if e == nil {
		return errors.New("amqp channel closed")
	}
	return fmt.Errorf("amqp channel closed: %w", e)
}
