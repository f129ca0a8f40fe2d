// Package sqs consumes an Amazon SQS queue for sluice, on aws-sdk-go-v2.
//
// A Consumer is one worker: one receive loop long-polling the queue (up to 10
// messages a receive, with every message and system attribute) and one
// settle loop that gathers receives into batches of up to Batch.Size, hands
// them to the Handler and deletes the settled messages with
// DeleteMessageBatch, ten per call, beside the next batches. The receive
// loop runs at most one batch ahead of the settle loop and fetches nothing
// while the Handler fails. The workers of a source compete for the queue's
// messages. (Gathering receives into batches of 100 measured faster than
// handing each receive of 10 over on its own: see BenchmarkConsume.)
//
// Acks: a message is deleted only after the Handler settled it as Written
// or DeadLettered. While the worker holds messages (gathering, in Handle, or
// retrying a failed batch) it extends their visibility with
// ChangeMessageVisibilityBatch, so they do not reappear while being written.
// A batch the Handler fails (Redis down) is retried in place after a backoff,
// its visibility still extended: releasing it would raise every message's
// receive count and, on a queue with a redrive policy, move messages to its
// dead-letter queue during an outage. Messages the worker gives up on (a stop
// while their batch fails, a receive that completed after the stop) are made
// visible again at once (visibility 0), not after the timeout; so that no
// long poll of ours can take them back, a receive in flight at a stop is
// given Config.StopGrace to complete before it is cut. A Rejected
// message is left undeleted: it reappears after its visibility timeout and the
// queue's redrive policy, if any, dead-letters it.
//
// Identity: broker.Message.ID is the SQS MessageId, stable across
// redeliveries. Headers are the message attributes under their names and
// the system attributes as "x-sqs-<kebab-case name>", among them
// HeaderReceiveCount.
//
// Credentials are static (Config.AccessKeyID and SecretKey) or, when both
// are empty, the SDK's default chain (see Config.AccessKeyID).
package sqs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sluice-io/sluice/broker"
)

// maxPerCall is SQS's limit on messages per receive and entries per batch call.
const maxPerCall = 10

// callTimeout bounds every SQS call but a receive, which may take WaitTime
// more, so that a dead connection cannot hang a worker.
const callTimeout = 30 * time.Second

// Settling deletes are retried this many times, with deleteBackoff between
// tries; messages still undeleted then are redelivered after their
// visibility timeout and deduplicated by the dispatch queue.
const deleteAttempts = 5

// acksInFlight bounds the settled batches being deleted at once.
const acksInFlight = 2

var deleteBackoff = broker.Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second}

// Consumer is one SQS worker. Create it with New; Run may be called again
// after it returns.
type Consumer struct {
	cfg       Config
	log       *slog.Logger
	client    *sqs.Client
	transport *http.Transport

	lag   atomic.Int64
	lagOK atomic.Bool
	stats stats
}

var (
	_ broker.Consumer = (*Consumer)(nil)
	_ broker.Lagger   = (*Consumer)(nil)
)

// New returns a worker for cfg. It builds the SDK client but does not call
// SQS; Run resolves the queue.
func New(cfg Config, logger *slog.Logger) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sqs config: %w", err)
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("sqs: load AWS config: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, errors.New("sqs: no region: set default_region (or AWS_REGION for the default chain)")
	}
	// The SDK's transport (with AWS_CA_BUNDLE and the like applied) in a
	// client of our own (see NewHTTPClient), so that Run can close its idle
	// connections.
	var transport *http.Transport
	if bc, ok := awsCfg.HTTPClient.(*awshttp.BuildableClient); ok {
		transport = bc.GetTransport()
		// Up to acksInFlight batches of deletes, ten calls each, a receive
		// and visibility changes share the pool: keep them all alive.
		transport.MaxIdleConnsPerHost = max(transport.MaxIdleConnsPerHost, 64)
		awsCfg.HTTPClient = NewHTTPClient(transport)
	}
	client := sqs.NewFromConfig(awsCfg, func(o *sqs.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	return &Consumer{
		cfg:       cfg,
		log:       logger.With("broker", "sqs", "queue", cfg.QueueName),
		client:    client,
		transport: transport,
	}, nil
}

// Lag returns the queue's ApproximateNumberOfMessages as last read (every
// Config.LagInterval while Run runs), and false before the first reading.
func (c *Consumer) Lag() (int64, bool) {
	return c.lag.Load(), c.lagOK.Load()
}

// Stats are a worker's running totals since New.
type Stats struct {
	// Receives is the number of ReceiveMessage calls that succeeded.
	Receives int64
	// Received is the number of messages they returned.
	Received int64
	// Deleted is the number of messages deleted after being settled.
	Deleted int64
	// Extended is the number of visibility extensions that succeeded.
	Extended int64
	// Released is the number of messages made visible again at once.
	Released int64
}

type stats struct {
	receives, received, deleted, extended, released atomic.Int64
}

// Stats returns the worker's totals.
func (c *Consumer) Stats() Stats {
	return Stats{
		Receives: c.stats.receives.Load(),
		Received: c.stats.received.Load(),
		Deleted:  c.stats.deleted.Load(),
		Extended: c.stats.extended.Load(),
		Released: c.stats.released.Load(),
	}
}

// Run resolves the queue's URL and consumes it until ctx is done (it then
// settles the batch in hand, releases the messages it did not hand over and
// returns nil) or the queue cannot be used: a queue that does not exist, or
// any error resolving it, is returned. Failed receives are retried with
// Config.Backoff and reported through h.Failing.
func (c *Consumer) Run(ctx context.Context, h broker.Handler) error {
	if c.transport != nil {
		defer c.transport.CloseIdleConnections()
	}
	if ctx.Err() != nil {
		return nil
	}
	queueURL, err := c.resolve(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	w := &worker{Consumer: c, h: h, url: queueURL, held: newInFlight(), recovered: make(chan struct{}, 1)}
	w.vis, w.sendVis = c.cfg.VisibilityTimeout, true
	if w.vis == 0 {
		w.vis, w.sendVis = c.queueVisibility(ctx, queueURL)
	}
	return w.run(ctx)
}

func (c *Consumer) resolve(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	out, err := c.client.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(c.cfg.QueueName)})
	if err != nil {
		var missing *types.QueueDoesNotExist
		if errors.As(err, &missing) {
			return "", fmt.Errorf("sqs queue %q does not exist in region %s: %w", c.cfg.QueueName, c.client.Options().Region, err)
		}
		return "", fmt.Errorf("resolve sqs queue %q: %w", c.cfg.QueueName, err)
	}
	return aws.ToString(out.QueueUrl), nil
}

// queueVisibility reads the queue's VisibilityTimeout attribute. send is
// true when it could not be read and fallbackVisibility is to be sent with
// every receive instead.
func (c *Consumer) queueVisibility(ctx context.Context, queueURL string) (vis time.Duration, send bool) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	name := types.QueueAttributeNameVisibilityTimeout
	out, err := c.client.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl:       aws.String(queueURL),
		AttributeNames: []types.QueueAttributeName{name},
	})
	if err != nil {
		c.log.Warn("reading the sqs queue's visibility timeout failed; using 30s", "err", err)
		return fallbackVisibility, true
	}
	secs, err := strconv.Atoi(out.Attributes[string(name)])
	if err != nil || secs < 1 {
		// A queue whose messages are visible again at once would hand them
		// to other workers while they are being written.
		return fallbackVisibility, true
	}
	return time.Duration(secs) * time.Second, false
}

// worker is one Run of a Consumer.
type worker struct {
	*Consumer
	h    broker.Handler
	url  string
	held *inFlight
	// vis is the visibility timeout of received messages; sendVis says
	// whether receives set it (else it is the queue's own).
	vis     time.Duration
	sendVis bool
	// handleFailing is set while the Handler fails a batch: the receive
	// loop does not fetch more meanwhile (nor report the worker healthy),
	// and recovered wakes it when the Handler succeeds again.
	handleFailing atomic.Bool
	recovered     chan struct{}
}

func (w *worker) run(parent context.Context) error {
	// stop is parent, also cancelled when run returns (a panicking Handler),
	// so the receive loop never blocks on a send nobody takes.
	stop, cancelStop := context.WithCancel(parent)
	// detached outlives stop: visibility extensions, deletes and releases
	// of the batch in hand continue while it is being settled.
	detached, cancelDetached := context.WithCancel(context.WithoutCancel(parent))
	// recv is cut StopGrace after stop, so a receive in flight at a stop
	// usually completes and its messages are released rather than lost to
	// the visibility timeout.
	recv, cancelRecv := context.WithCancel(detached)
	var wg sync.WaitGroup
	defer func() {
		cancelStop()
		cancelRecv()
		// Whatever is still held (a panic in Handle) is released.
		w.release(detached, w.held.all())
		cancelDetached()
		wg.Wait()
	}()

	// The receive loop may run a batch ahead of the settle loop: it takes
	// a slot before each receive, and the settle loop frees it when it takes
	// the receive's messages. With no slot free no receive is in flight, so
	// a stop cuts none (a cut long poll may still take messages on the
	// broker's side, which then stay invisible for the visibility timeout).
	slots := max(1, w.cfg.Batch.Size/maxPerCall)
	chunks := make(chan []received, slots)
	room := make(chan struct{}, slots)
	for range slots {
		room <- struct{}{}
	}
	recvErr := make(chan error, 1)
	wg.Go(func() {
		defer cancelRecv()
		recvErr <- w.receiveLoop(stop, recv, room, chunks)
	})
	wg.Go(func() {
		select {
		case <-stop.Done():
		case <-recv.Done():
			return
		}
		t := time.NewTimer(w.cfg.StopGrace)
		defer t.Stop()
		select {
		case <-t.C:
			cancelRecv()
		case <-recv.Done():
		}
	})
	wg.Go(func() { w.extendLoop(detached) })
	wg.Go(func() { w.lagLoop(stop) })

	// Deletes run beside the next batches, a few at a time; run waits for
	// them before it returns.
	acks := make(chan ackJob, acksInFlight)
	acksDone := make(chan struct{})
	wg.Go(func() {
		defer close(acksDone)
		w.ackLoop(detached, acks)
	})
	func() {
		defer close(acks)
		w.settleLoop(stop, detached, chunks, room, acks)
	}()
	<-acksDone
	return <-recvErr
}

// receiveLoop receives until stop is done or the queue is gone, taking a
// slot of room before each receive and sending each non-empty receive to
// out, which it closes when it returns.
func (w *worker) receiveLoop(stop, recv context.Context, room chan struct{}, out chan<- []received) error {
	defer close(out)
	for attempt := 0; stop.Err() == nil; {
		for w.handleFailing.Load() {
			select {
			case <-w.recovered:
			case <-stop.Done():
				return nil
			}
		}
		select {
		case <-room:
		case <-stop.Done():
			return nil
		}
		got, err := w.receive(recv)
		if err != nil || len(got) == 0 {
			room <- struct{}{}
		}
		if err != nil {
			if recv.Err() != nil {
				return nil
			}
			var missing *types.QueueDoesNotExist
			if errors.As(err, &missing) {
				return fmt.Errorf("sqs queue %q no longer exists: %w", w.cfg.QueueName, err)
			}
			w.h.Failing(err)
			w.log.Warn("sqs receive failed; retrying", "attempt", attempt+1, "err", err)
			if !w.cfg.Backoff.Sleep(stop, attempt) {
				return nil
			}
			attempt++
			continue
		}
		attempt = 0
		if !w.handleFailing.Load() {
			w.h.Healthy()
		}
		if len(got) > 0 {
			// Never blocks: the slot is reserved. After a stop the settle
			// loop releases what it did not take.
			out <- got
		}
	}
	return nil
}

// receive long-polls once and tracks what it got.
func (w *worker) receive(ctx context.Context) ([]received, error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.WaitTime+callTimeout)
	defer cancel()
	in := &sqs.ReceiveMessageInput{
		QueueUrl:                    aws.String(w.url),
		MaxNumberOfMessages:         maxPerCall,
		WaitTimeSeconds:             int32(w.cfg.WaitTime / time.Second),
		MessageAttributeNames:       []string{"All"},
		MessageSystemAttributeNames: []types.MessageSystemAttributeName{types.MessageSystemAttributeNameAll},
	}
	if w.sendVis {
		in.VisibilityTimeout = int32(w.vis / time.Second)
	}
	sent := time.Now()
	out, err := w.client.ReceiveMessage(ctx, in)
	if err != nil {
		return nil, fmt.Errorf("receive from sqs queue %q: %w", w.cfg.QueueName, err)
	}
	msgs := make([]received, len(out.Messages))
	for i, m := range out.Messages {
		msgs[i] = convert(m)
	}
	w.held.add(msgs, sent.Add(w.vis))
	w.stats.receives.Add(1)
	w.stats.received.Add(int64(len(msgs)))
	return msgs, nil
}

// settleLoop gathers receives into batches and settles them until in is
// closed. Once stop is done it settles the batch in hand and releases the
// rest.
func (w *worker) settleLoop(stop, detached context.Context, in <-chan []received, room chan<- struct{}, acks chan<- ackJob) {
	var carry []received
	for {
		batch, open := w.gather(stop, in, room, &carry)
		if len(batch) > 0 && !w.settle(stop, batch, acks) {
			carry = append(carry, batch...)
		}
		if !open || stop.Err() != nil {
			break
		}
	}
	// Release only once the receive loop is done, so that no receive of
	// ours is in flight to take the released messages back.
	for chunk := range in {
		carry = append(carry, chunk...)
	}
	w.release(detached, carry)
}

// gather returns the next batch: up to Batch.Size messages, handed over
// when full, Batch.Wait after its first message, when a receive returns
// fewer than 10 (the queue is drained for now) or when stop is done. open
// is false once in is closed. Messages beyond Batch.Size wait in carry.
func (w *worker) gather(stop context.Context, in <-chan []received, room chan<- struct{}, carry *[]received) (batch []received, open bool) {
	size := w.cfg.Batch.Size
	add := func(msgs []received) {
		n := min(len(msgs), size-len(batch))
		batch = append(batch, msgs[:n]...)
		*carry = append(*carry, msgs[n:]...)
	}
	// take adds a receive's messages, frees its slot and reports whether it
	// was short (the queue is drained for now).
	take := func(chunk []received) (short bool) {
		room <- struct{}{}
		add(chunk)
		return len(chunk) < maxPerCall
	}
	if len(*carry) > 0 {
		pending := *carry
		*carry = nil
		add(pending)
	}
	if len(batch) == 0 {
		select {
		case chunk, ok := <-in:
			if !ok {
				return nil, false
			}
			if take(chunk) {
				return batch, true
			}
		case <-stop.Done():
			return nil, true
		}
	}
	timer := time.NewTimer(w.cfg.Batch.Wait)
	defer timer.Stop()
	for len(batch) < size {
		select {
		case chunk, ok := <-in:
			if !ok {
				return batch, false
			}
			if take(chunk) {
				return batch, true
			}
		case <-timer.C:
			return batch, true
		case <-stop.Done():
			return batch, true
		}
	}
	return batch, true
}

// settle hands batch to the Handler until it succeeds, retrying a failure
// after a backoff, then queues the deletes of what was settled. Once stop is
// done it tries the batch once more and, if that fails too, returns false:
// the batch is unsettled and must be released.
func (w *worker) settle(stop context.Context, batch []received, acks chan<- ackJob) bool {
	msgs := make([]broker.Message, len(batch))
	for i, r := range batch {
		msgs[i] = r.msg
	}
	hctx := context.WithoutCancel(stop)
	for attempt := 0; ; attempt++ {
		results, err := w.handle(hctx, msgs)
		if err == nil {
			w.recover()
			acks <- ackJob{batch: batch, results: results}
			return true
		}
		w.handleFailing.Store(true)
		w.h.Failing(err)
		if stop.Err() != nil {
			return false
		}
		w.log.Warn("handing over a batch failed; retrying it", "messages", len(batch), "attempt", attempt+1, "err", err)
		if !w.cfg.Backoff.Sleep(stop, attempt) {
			results, err := w.handle(hctx, msgs)
			if err != nil {
				return false
			}
			w.recover()
			acks <- ackJob{batch: batch, results: results}
			return true
		}
	}
}

// recover records that the Handler succeeded again and wakes a receive
// loop paused by its failures.
func (w *worker) recover() {
	if w.handleFailing.Swap(false) {
		w.h.Healthy()
		select {
		case w.recovered <- struct{}{}:
		default:
		}
	}
}

func (w *worker) handle(ctx context.Context, msgs []broker.Message) ([]broker.Result, error) {
	results, err := w.h.Handle(ctx, msgs)
	if err != nil {
		return nil, fmt.Errorf("hand over %d sqs messages: %w", len(msgs), err)
	}
	if len(results) != len(msgs) {
		return nil, fmt.Errorf("hand over %d sqs messages: handler returned %d results", len(msgs), len(results))
	}
	return results, nil
}

// ackJob is a settled batch to delete.
type ackJob struct {
	batch   []received
	results []broker.Result
}

// ackLoop acks the jobs of jobs, up to acksInFlight at a time, until jobs
// is closed and they are all done.
func (w *worker) ackLoop(ctx context.Context, jobs <-chan ackJob) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, acksInFlight)
	for job := range jobs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			w.ack(ctx, job.batch, job.results)
		})
	}
	wg.Wait()
}

// ack deletes the messages settled as Written or DeadLettered; Rejected
// ones are left to reappear (see the package documentation).
func (w *worker) ack(ctx context.Context, batch []received, results []broker.Result) {
	del := make([]received, 0, len(batch))
	var rejected []received
	for i, r := range results {
		switch r {
		case broker.Written, broker.DeadLettered:
			del = append(del, batch[i])
		default:
			rejected = append(rejected, batch[i])
		}
	}
	if len(rejected) > 0 {
		w.held.remove(rejected)
		w.log.Warn("messages rejected; left on the queue for its redrive policy", "messages", len(rejected))
	}
	w.delete(ctx, del)
}

// delete deletes msgs with DeleteMessageBatch, ten at a time in parallel,
// retrying failed entries that SQS does not blame on the request.
func (w *worker) delete(ctx context.Context, msgs []received) {
	defer w.held.remove(msgs)
	pending := msgs
	for attempt := 0; len(pending) > 0; attempt++ {
		var err error
		pending, err = w.deleteOnce(ctx, pending)
		if len(pending) == 0 {
			return
		}
		if attempt+1 == deleteAttempts || ctx.Err() != nil {
			w.h.Failing(err)
			w.log.Warn("sqs delete failed; the messages will be redelivered and deduplicated", "messages", len(pending), "err", err)
			return
		}
		deleteBackoff.Sleep(ctx, attempt)
	}
}

// deleteOnce tries each message once and returns those worth retrying.
func (w *worker) deleteOnce(ctx context.Context, msgs []received) (retry []received, err error) {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for chunk := range slices.Chunk(msgs, maxPerCall) {
		wg.Go(func() {
			entries := make([]types.DeleteMessageBatchRequestEntry, len(chunk))
			for i, m := range chunk {
				entries[i] = types.DeleteMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: aws.String(m.receipt)}
			}
			cctx, cancel := context.WithTimeout(ctx, callTimeout)
			defer cancel()
			out, err := w.client.DeleteMessageBatch(cctx, &sqs.DeleteMessageBatchInput{QueueUrl: aws.String(w.url), Entries: entries})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("delete %d sqs messages: %w", len(chunk), err))
				retry = append(retry, chunk...)
				return
			}
			w.stats.deleted.Add(int64(len(out.Successful)))
			for _, f := range out.Failed {
				i, _ := strconv.Atoi(aws.ToString(f.Id))
				if i < 0 || i >= len(chunk) {
					continue
				}
				ferr := fmt.Errorf("delete sqs message %s: %s: %s", chunk[i].msg.ID, aws.ToString(f.Code), aws.ToString(f.Message))
				if f.SenderFault {
					// A receipt handle SQS no longer accepts: the message
					// reappeared (and will be deduplicated) or is gone.
					w.log.Warn("sqs refused a delete", "message_id", chunk[i].msg.ID, "code", aws.ToString(f.Code))
					continue
				}
				errs = append(errs, ferr)
				retry = append(retry, chunk[i])
			}
		})
	}
	wg.Wait()
	return retry, errors.Join(errs...)
}

// release makes msgs visible again at once (visibility 0) and stops
// tracking them. Failures are logged: the messages then reappear after
// their visibility timeout instead.
func (w *worker) release(ctx context.Context, msgs []received) {
	if len(msgs) == 0 {
		return
	}
	defer w.held.remove(msgs)
	handles := make([]string, len(msgs))
	for i, m := range msgs {
		handles[i] = m.receipt
	}
	ok, err := w.changeVisibility(ctx, handles, 0)
	w.stats.released.Add(int64(len(ok)))
	if err != nil && ctx.Err() == nil {
		w.log.Warn("releasing sqs messages failed; they reappear after their visibility timeout", "messages", len(msgs)-len(ok), "err", err)
	}
}

// extendLoop extends the visibility of held messages whose deadline is
// less than half a VisibilityTimeout away.
func (w *worker) extendLoop(ctx context.Context) {
	vis := w.vis
	t := time.NewTicker(vis / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		due := w.held.due(time.Now().Add(vis / 2))
		if len(due) == 0 {
			continue
		}
		sent := time.Now()
		ok, err := w.changeVisibility(ctx, due, vis)
		w.held.extend(ok, sent.Add(vis))
		w.stats.extended.Add(int64(len(ok)))
		if err != nil && ctx.Err() == nil {
			w.h.Failing(err)
			w.log.Warn("extending sqs visibility failed", "messages", len(due)-len(ok), "err", err)
		}
	}
}

// changeVisibility sets the visibility timeout of the messages with the
// given receipt handles, ten at a time in parallel, and returns the handles
// it succeeded for. Handles SQS refuses (the message is gone or reappeared)
// are no longer tracked.
func (w *worker) changeVisibility(ctx context.Context, handles []string, timeout time.Duration) (ok []string, err error) {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for chunk := range slices.Chunk(handles, maxPerCall) {
		wg.Go(func() {
			entries := make([]types.ChangeMessageVisibilityBatchRequestEntry, len(chunk))
			for i, h := range chunk {
				entries[i] = types.ChangeMessageVisibilityBatchRequestEntry{
					Id:                aws.String(strconv.Itoa(i)),
					ReceiptHandle:     aws.String(h),
					VisibilityTimeout: int32(timeout / time.Second),
				}
			}
			cctx, cancel := context.WithTimeout(ctx, callTimeout)
			defer cancel()
			out, err := w.client.ChangeMessageVisibilityBatch(cctx, &sqs.ChangeMessageVisibilityBatchInput{QueueUrl: aws.String(w.url), Entries: entries})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("change visibility of %d sqs messages: %w", len(chunk), err))
				return
			}
			for _, s := range out.Successful {
				if i, _ := strconv.Atoi(aws.ToString(s.Id)); i >= 0 && i < len(chunk) {
					ok = append(ok, chunk[i])
				}
			}
			for _, f := range out.Failed {
				i, _ := strconv.Atoi(aws.ToString(f.Id))
				if i < 0 || i >= len(chunk) {
					continue
				}
				if f.SenderFault {
					w.held.forget(chunk[i])
				}
				errs = append(errs, fmt.Errorf("change visibility of an sqs message: %s: %s", aws.ToString(f.Code), aws.ToString(f.Message)))
			}
		})
	}
	wg.Wait()
	return ok, errors.Join(errs...)
}

// lagLoop reads the queue's ApproximateNumberOfMessages every LagInterval.
func (w *worker) lagLoop(ctx context.Context) {
	t := time.NewTicker(w.cfg.LagInterval)
	defer t.Stop()
	for {
		w.readLag(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (w *worker) readLag(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	name := types.QueueAttributeNameApproximateNumberOfMessages
	out, err := w.client.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl:       aws.String(w.url),
		AttributeNames: []types.QueueAttributeName{name},
	})
	if err != nil {
		if ctx.Err() == nil {
			w.log.Debug("reading the sqs queue's length failed", "err", err)
		}
		return
	}
	if n, err := strconv.ParseInt(out.Attributes[string(name)], 10, 64); err == nil {
		w.lag.Store(n)
		w.lagOK.Store(true)
	}
}
