// Package brokertest is the conformance suite every broker consumer passes.
//
// A broker package calls Run from its own test with a Setup that creates a
// fresh queue or topic on a real broker (or the broker's own fake) and returns
// a Fixture for it. The suite drives the consumer with a recording Handler and
// checks the contract of package broker: everything published is handed over,
// nothing is acked before Handle succeeds, transient failures lose nothing,
// settled messages are not redelivered, and a stop settles the batch in hand.
package brokertest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sluice-io/sluice/broker"
)

// Outgoing is a message the suite publishes.
type Outgoing struct {
	Body    []byte
	Headers map[string]string
}

// Fixture is one fresh queue or topic of the broker under test.
type Fixture struct {
	// Publish sends msgs in order. Each must get its own broker identity,
	// which consumers report as broker.Message.ID (an AMQP fixture sets the
	// message-id property).
	Publish func(ctx context.Context, msgs []Outgoing) error
	// NewConsumer returns a new worker on the fixture's queue or topic; the
	// workers of one fixture compete for its messages (one consumer group).
	NewConsumer func(t *testing.T) broker.Consumer
	// Unacked returns how many published messages the broker still holds for
	// the fixture's consumers (not yet acked or committed). The suite polls it
	// until it reaches the expected figure.
	Unacked func(ctx context.Context) (int, error)
}

// Setup creates a Fixture for one test. It registers its own cleanup.
type Setup func(t *testing.T) Fixture

// Options tune the suite to a broker's speed.
type Options struct {
	// Messages is how many messages most tests publish. Default 200.
	Messages int
	// Timeout bounds every wait of the suite. Default 60s.
	Timeout time.Duration
}

// Run runs the conformance suite.
func Run(t *testing.T, setup Setup, opts Options) {
	if opts.Messages <= 0 {
		opts.Messages = 200
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 60 * time.Second
	}
	s := suite{setup: setup, n: opts.Messages, timeout: opts.Timeout}
	t.Run("DeliversEveryMessage", s.deliversEveryMessage)
	t.Run("TransientFailureLosesNothing", s.transientFailureLosesNothing)
	t.Run("DeadLetteredAreSettled", s.deadLetteredAreSettled)
	t.Run("StopSettlesBatchInHand", s.stopSettlesBatchInHand)
	t.Run("CompetingConsumers", s.competingConsumers)
	t.Run("StopWhileIdle", s.stopWhileIdle)
}

type suite struct {
	setup   Setup
	n       int
	timeout time.Duration
}

// messages returns n messages with bodies that identify them and a header.
func messages(prefix string, n int) []Outgoing {
	out := make([]Outgoing, n)
	for i := range out {
		out[i] = Outgoing{
			Body:    fmt.Appendf(nil, `{"event_type":"test","data":{"seq":"%s-%d"}}`, prefix, i),
			Headers: map[string]string{"x-test-seq": strconv.Itoa(i)},
		}
	}
	return out
}

func (s suite) deliversEveryMessage(t *testing.T) {
	t.Parallel()
	f := s.setup(t)
	msgs := messages("all", s.n)
	publish(t, f, msgs)

	rec := newRecorder(nil)
	stop := Start(t, f.NewConsumer(t), rec)
	rec.waitWritten(t, msgs, s.timeout)
	stop()

	rec.mu.Lock()
	defer rec.mu.Unlock()
	ids := make(map[string]string)
	for i, m := range msgs {
		body := string(m.Body)
		if got := rec.written[body]; got != 1 {
			t.Errorf("message %d written %d times, want 1", i, got)
		}
		msg := rec.last[body]
		if msg.ID == "" {
			t.Errorf("message %d has no broker identity", i)
		} else if other, dup := ids[msg.ID]; dup {
			t.Errorf("messages %q and %q share the identity %q", other, body, msg.ID)
		}
		ids[msg.ID] = body
		if got, want := msg.Headers["x-test-seq"], strconv.Itoa(i); got != want {
			t.Errorf("message %d: header x-test-seq = %q, want %q (headers %v)", i, got, want, msg.Headers)
		}
	}
	if rec.maxBatch < 2 {
		t.Errorf("largest batch held %d message(s); a consumer with %d messages waiting should batch", rec.maxBatch, s.n)
	}
	waitUnacked(t, f, 0, s.timeout)
}

func (s suite) transientFailureLosesNothing(t *testing.T) {
	t.Parallel()
	f := s.setup(t)
	msgs := messages("transient", s.n)
	publish(t, f, msgs)

	// The first batches fail as if Redis were down: nothing of them may be
	// acked, so every message must come back and be written in the end.
	const failures = 3
	var (
		mu    sync.Mutex
		calls int
		ids   = make(map[string]string)
	)
	rec := newRecorder(func(batch []broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		for _, m := range batch {
			if id, seen := ids[string(m.Body)]; seen && id != m.ID {
				return fmt.Errorf("redelivered message changed identity from %q to %q", id, m.ID)
			}
			ids[string(m.Body)] = m.ID
		}
		if calls <= failures {
			return errors.New("dispatch queue unavailable")
		}
		return nil
	})
	stop := Start(t, f.NewConsumer(t), rec)
	rec.waitWritten(t, msgs, s.timeout)
	stop()
	rec.mu.Lock()
	if rec.failed < failures {
		t.Errorf("handler failed %d times, want at least %d", rec.failed, failures)
	}
	if rec.err != nil {
		t.Error(rec.err)
	}
	rec.mu.Unlock()
	waitUnacked(t, f, 0, s.timeout)
}

func (s suite) deadLetteredAreSettled(t *testing.T) {
	t.Parallel()
	f := s.setup(t)
	msgs := messages("dead", s.n)
	publish(t, f, msgs)

	rec := newRecorder(nil)
	rec.result = func(m broker.Message) broker.Result {
		if seq, _ := strconv.Atoi(m.Headers["x-test-seq"]); seq%3 == 0 {
			return broker.DeadLettered
		}
		return broker.Written
	}
	stop := Start(t, f.NewConsumer(t), rec)
	rec.waitSettled(t, msgs, s.timeout)
	stop()
	waitUnacked(t, f, 0, s.timeout)

	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i, m := range msgs {
		w, d := rec.written[string(m.Body)], rec.dead[string(m.Body)]
		if i%3 == 0 && (d != 1 || w != 0) {
			t.Errorf("message %d: dead-lettered %d and written %d times, want 1 and 0", i, d, w)
		}
		if i%3 != 0 && (w != 1 || d != 0) {
			t.Errorf("message %d: written %d and dead-lettered %d times, want 1 and 0", i, w, d)
		}
	}
}

func (s suite) stopSettlesBatchInHand(t *testing.T) {
	t.Parallel()
	f := s.setup(t)
	msgs := messages("stop", s.n)
	publish(t, f, msgs)

	// The first Handle blocks until the consumer is told to stop; it must
	// then still be able to write (its context is not cancelled) and the
	// consumer must ack the batch before Run returns.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	entered := make(chan struct{})
	var once sync.Once
	var handleErr error
	rec := newRecorder(func(batch []broker.Message) error {
		first := false
		once.Do(func() { first = true })
		if !first {
			return nil
		}
		close(entered)
		<-ctx.Done()
		return nil
	})
	rec.ctxCheck = func(hctx context.Context) {
		if err := hctx.Err(); err != nil && handleErr == nil {
			handleErr = fmt.Errorf("Handle was given a context that is done: %w", err)
		}
	}
	c := f.NewConsumer(t)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, rec) }()
	select {
	case <-entered:
	case err := <-done:
		t.Fatalf("Run returned before handing over a batch: %v", err)
	case <-time.After(s.timeout):
		t.Fatal("no batch handed over")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after stop = %v, want nil", err)
		}
	case <-time.After(s.timeout):
		t.Fatal("Run did not return after its context was cancelled")
	}
	rec.mu.Lock()
	if handleErr != nil {
		t.Error(handleErr)
	}
	firstBatch := make(map[string]bool)
	for body, n := range rec.written {
		if n > 0 {
			firstBatch[body] = true
		}
	}
	rec.mu.Unlock()
	if len(firstBatch) == 0 {
		t.Fatal("the batch in hand was not written")
	}

	// A new worker gets the rest and none of the settled batch again.
	rec2 := newRecorder(nil)
	var rest []Outgoing
	for _, m := range msgs {
		if !firstBatch[string(m.Body)] {
			rest = append(rest, m)
		}
	}
	stop := Start(t, f.NewConsumer(t), rec2)
	if len(rest) > 0 {
		rec2.waitWritten(t, rest, s.timeout)
	}
	stop()
	waitUnacked(t, f, 0, s.timeout)
	rec2.mu.Lock()
	defer rec2.mu.Unlock()
	for body := range firstBatch {
		if rec2.written[body] > 0 {
			t.Errorf("message %s was settled before the stop and delivered again", body)
		}
	}
}

func (s suite) competingConsumers(t *testing.T) {
	t.Parallel()
	f := s.setup(t)
	msgs := messages("compete", s.n)

	rec := newRecorder(nil)
	var stops []func()
	for range 3 {
		stops = append(stops, Start(t, f.NewConsumer(t), rec))
	}
	publish(t, f, msgs)
	rec.waitWritten(t, msgs, s.timeout)
	for _, stop := range stops {
		stop()
	}
	waitUnacked(t, f, 0, s.timeout)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var dups int
	for _, m := range msgs {
		dups += rec.written[string(m.Body)] - 1
	}
	// Redelivery while workers join is allowed (dedupe absorbs it); report it.
	t.Logf("%d messages, %d redelivered to another worker", len(msgs), dups)
}

func (s suite) stopWhileIdle(t *testing.T) {
	t.Parallel()
	f := s.setup(t)
	rec := newRecorder(nil)
	stop := Start(t, f.NewConsumer(t), rec)
	stop()
	waitUnacked(t, f, 0, s.timeout)
}

func publish(t *testing.T, f Fixture, msgs []Outgoing) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.Publish(ctx, msgs); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// Start runs c with h until the returned stop is called (also when the test
// ends); stop fails the test unless Run returns nil within a minute.
func Start(tb testing.TB, c broker.Consumer, h broker.Handler) (stop func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					tb.Errorf("Run = %v, want nil after stop", err)
				}
			case <-time.After(time.Minute):
				tb.Error("Run did not return within a minute of its context being cancelled")
			}
		})
	}
	tb.Cleanup(stop)
	return stop
}

func waitUnacked(t *testing.T, f Fixture, want int, timeout time.Duration) {
	t.Helper()
	if f.Unacked == nil {
		return
	}
	deadline := time.Now().Add(timeout)
	var got int
	var err error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		got, err = f.Unacked(ctx)
		cancel()
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("broker holds %d unacked messages (err %v), want %d", got, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// recorder is the Handler the suite hands to consumers. It records what it
// settled; fail, when set, decides whether a batch fails as a transient error.
type recorder struct {
	mu       sync.Mutex
	fail     func(batch []broker.Message) error
	result   func(broker.Message) broker.Result
	ctxCheck func(context.Context)
	written  map[string]int
	dead     map[string]int
	last     map[string]broker.Message
	failed   int
	maxBatch int
	err      error
	changed  chan struct{}
}

func newRecorder(fail func([]broker.Message) error) *recorder {
	return &recorder{
		fail:    fail,
		written: make(map[string]int),
		dead:    make(map[string]int),
		last:    make(map[string]broker.Message),
		changed: make(chan struct{}, 1),
	}
}

func (r *recorder) Handle(ctx context.Context, batch []broker.Message) ([]broker.Result, error) {
	if len(batch) == 0 {
		r.mu.Lock()
		r.err = errors.New("Handle called with an empty batch")
		r.mu.Unlock()
		return nil, nil
	}
	var fail error
	if r.fail != nil {
		// fail may block (stopSettlesBatchInHand); it runs unlocked.
		fail = r.fail(batch)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctxCheck != nil {
		r.ctxCheck(ctx)
	}
	r.maxBatch = max(r.maxBatch, len(batch))
	if fail != nil {
		r.failed++
		return nil, fail
	}
	results := make([]broker.Result, len(batch))
	for i, m := range batch {
		body := string(m.Body)
		results[i] = broker.Written
		if r.result != nil {
			results[i] = r.result(m)
		}
		if results[i] == broker.Written {
			r.written[body]++
		} else {
			r.dead[body]++
		}
		r.last[body] = m
	}
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return results, nil
}

func (r *recorder) Failing(error) {}
func (r *recorder) Healthy()      {}

// waitWritten waits until every message of msgs has been written at least once.
func (r *recorder) waitWritten(t *testing.T, msgs []Outgoing, timeout time.Duration) {
	t.Helper()
	r.wait(t, msgs, timeout, func(body string) bool { return r.written[body] > 0 })
}

// waitSettled waits until every message has been written or dead-lettered.
func (r *recorder) waitSettled(t *testing.T, msgs []Outgoing, timeout time.Duration) {
	t.Helper()
	r.wait(t, msgs, timeout, func(body string) bool { return r.written[body]+r.dead[body] > 0 })
}

func (r *recorder) wait(t *testing.T, msgs []Outgoing, timeout time.Duration, done func(body string) bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		missing := 0
		for _, m := range msgs {
			if !done(string(m.Body)) {
				missing++
			}
		}
		r.mu.Unlock()
		if missing == 0 {
			return
		}
		select {
		case <-r.changed:
		case <-time.After(time.Second):
		case <-deadline:
			t.Fatalf("%d of %d messages never arrived", missing, len(msgs))
		}
	}
}
