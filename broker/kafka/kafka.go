// Package kafka consumes a Kafka topic into sluice with segmentio/kafka-go.
//
// One Consumer is one worker: one kafka-go Reader that joins the source's
// consumer group and reads the partitions the group assigns it. A source with
// N workers is N members of one group, so the topic's partitions are split
// between them; workers beyond the partition count get no partition and idle
// (Partitions reports an empty assignment, and the worker logs it).
//
// The worker fetches messages into a batch (Config.Batch), hands the batch to
// the Handler and commits offsets only after the Handler settled the batch;
// kafka-go prefetches the next messages meanwhile. Config.Inflight (default
// 1) lets several batches be handled at once. Commits follow a per-partition
// watermark: an offset is committed only when it and every lower offset of
// its partition were written or dead-lettered. A batch the Handler fails to
// settle is retried in place, after a backoff, and nothing past it is
// fetched meanwhile, so a transient failure can never let a commit pass an
// unwritten message. Commits run beside the fetch loop; a commit the group
// refuses after a rebalance is dropped, because the new owner of the
// partition resumes from the last committed offset and the dispatch queue's
// dedupe absorbs what is redelivered.
//
// Run checks the brokers, the credentials and the topic once before it
// joins the group, so a wrong password or a missing topic fails Run with an
// error that names the broker. Lag and Partitions come from a poll of the
// group (its members' assignments, committed and end offsets) every
// Config.LagInterval.
//
// Message identity (broker.Message.ID) is "topic/partition/offset". Kafka
// headers become message headers, and the record key is kept as the header
// x-kafka-key.
package kafka

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/sluice-io/sluice/broker"
)

// HeaderKey is the header holding the Kafka record key.
const HeaderKey = "x-kafka-key"

var (
	_ broker.Consumer    = (*Consumer)(nil)
	_ broker.Lagger      = (*Consumer)(nil)
	_ broker.Partitioned = (*Consumer)(nil)
)

// Consumer is one worker of a Kafka source. Run may be called again after it
// returns; each call joins the group anew.
type Consumer struct {
	cfg    Config
	logger *slog.Logger
	// clientID is unique per worker so the worker can find its own member in
	// the group description.
	clientID string
	dialer   *kafkago.Dialer

	lag atomic.Pointer[lagState]
}

// lagState is the last figure the lag poller saw.
type lagState struct {
	partitions map[int]int64 // assigned partition → lag
}

// New returns a worker for cfg. It does not connect; Run does.
func New(cfg Config, logger *slog.Logger) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("kafka config: %w", err)
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	clientID := cfg.ClientID + "-" + hex.EncodeToString(suffix[:])
	dialer, err := cfg.dialer(clientID)
	if err != nil {
		return nil, fmt.Errorf("kafka config: %w", err)
	}
	return &Consumer{
		cfg:      cfg,
		logger:   logger.With("topic", cfg.Topic, "group_id", cfg.GroupID, "client_id", clientID),
		clientID: clientID,
		dialer:   dialer,
	}, nil
}

// Lag returns how many messages of the worker's assigned partitions wait
// behind the group's committed offsets, as of the last poll (Config.
// LagInterval). A worker without partitions has a lag of 0.
func (c *Consumer) Lag() (int64, bool) {
	s := c.lag.Load()
	if s == nil {
		return 0, false
	}
	var n int64
	for _, l := range s.partitions {
		n += l
	}
	return n, true
}

// Partitions returns the worker's assigned partitions and the lag of each, as
// of the last poll. An empty map with ok true means the group gave this
// worker no partition: there are more workers than partitions and it idles.
func (c *Consumer) Partitions() (lag map[int]int64, ok bool) {
	s := c.lag.Load()
	if s == nil {
		return nil, false
	}
	out := make(map[int]int64, len(s.partitions))
	for p, l := range s.partitions {
		out[p] = l
	}
	return out, true
}

// Run joins the consumer group and hands batches to h until ctx is done. It
// returns an error when it cannot start (no broker reachable, failed
// authentication or TLS, a missing topic; also reported through h.Failing)
// or when h breaks its contract (a result count that does not match the
// batch, Rejected: Kafka has no broker-side dead letter). Errors after the
// start (a broker restart, a rebalance, a failing Handle or commit) are
// retried in place with backoff and reported through h.Failing; h.Healthy
// follows once they clear.
func (c *Consumer) Run(ctx context.Context, h broker.Handler) error {
	if err := c.probe(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		h.Failing(err)
		return err
	}
	c.lag.Store(nil)
	hs := &health{h: h, errs: make(map[string]error)}
	hs.set(kindConnect, nil)

	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:               c.cfg.Brokers,
		GroupID:               c.cfg.GroupID,
		Topic:                 c.cfg.Topic,
		Dialer:                c.dialer,
		QueueCapacity:         max(2*c.cfg.Batch.Size, 500),
		MaxWait:               c.cfg.MaxWait,
		ReadLagInterval:       -1,
		HeartbeatInterval:     c.cfg.HeartbeatInterval,
		SessionTimeout:        c.cfg.SessionTimeout,
		RebalanceTimeout:      c.cfg.RebalanceTimeout,
		JoinGroupBackoff:      time.Second,
		WatchPartitionChanges: true,
		StartOffset:           kafkago.FirstOffset,
		Logger: kafkago.LoggerFunc(func(format string, args ...any) {
			c.logger.Debug("kafka reader", "detail", fmt.Sprintf(format, args...))
		}),
		ErrorLogger: kafkago.LoggerFunc(func(format string, args ...any) {
			err := fmt.Errorf("kafka reader: %s", fmt.Sprintf(format, args...))
			if ctx.Err() != nil {
				c.logger.Debug("kafka reader error while stopping", "err", err)
				return
			}
			c.logger.Warn("kafka reader error", "err", err)
			hs.set(kindClient, err)
		}),
	})

	cm := &committer{
		r:       r,
		timeout: c.cfg.CommitTimeout,
		backoff: c.cfg.Backoff,
		logger:  c.logger,
		health:  hs,
		pending: make(map[int]kafkago.Message),
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
	}
	transport := &kafkago.Transport{
		Dial:        c.dialer.DialFunc,
		DialTimeout: c.cfg.DialTimeout,
		ClientID:    c.clientID,
		TLS:         c.dialer.TLS,
		SASL:        c.dialer.SASLMechanism,
	}
	// The committer outlives ctx: it makes the last commit after the fetch
	// loop stopped. The lag poller stops with ctx.
	var commits, polls sync.WaitGroup
	commits.Go(func() { cm.run(context.WithoutCancel(ctx)) })
	pollCtx, stopPolling := context.WithCancel(ctx)
	if c.cfg.LagInterval > 0 {
		polls.Go(func() { c.pollLag(pollCtx, transport, hs) })
	}

	err := c.consume(ctx, r, hs, cm)

	// Stop: the committer makes its last commit of what was settled, then
	// the reader leaves the group.
	close(cm.stop)
	stopPolling()
	commits.Wait()
	polls.Wait()
	if cerr := r.Close(); cerr != nil && err == nil && ctx.Err() == nil {
		err = fmt.Errorf("close kafka reader: %w", cerr)
	}
	transport.CloseIdleConnections()
	return err
}

// probe dials the brokers once, TLS and SASL included, and checks that the
// topic exists, so that bad credentials or a wrong topic fail Run with a clear
// error instead of disappearing into the reader's internal retries.
func (c *Consumer) probe(ctx context.Context) error {
	var errs []error
	for _, addr := range c.cfg.Brokers {
		conn, err := c.dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("connect to kafka broker %s: %w", addr, err))
			continue
		}
		_ = conn.SetDeadline(time.Now().Add(c.cfg.DialTimeout))
		parts, err := conn.ReadPartitions(c.cfg.Topic)
		_ = conn.Close()
		if err != nil {
			return fmt.Errorf("read partitions of kafka topic %q from %s: %w", c.cfg.Topic, addr, err)
		}
		if len(parts) == 0 {
			return fmt.Errorf("kafka topic %q has no partitions", c.cfg.Topic)
		}
		c.logger.Debug("kafka connected", "broker", addr, "partitions", len(parts))
		return nil
	}
	return errors.Join(errs...)
}

// consume is the fetch, handle, mark loop. Up to Inflight batches are
// handled at once (the next one is fetched meanwhile by kafka-go either way); a batch that fails is retried in place and nothing more is
// fetched until it is settled. It returns nil when ctx is done and an error
// only when the Handler breaks its contract.
func (c *Consumer) consume(ctx context.Context, r *kafkago.Reader, hs *health, cm *committer) error {
	// fetchCtx ends the fetching when ctx is done or a batch breaks the
	// contract; the batches in flight still settle under ctx.
	fetchCtx, stopFetching := context.WithCancel(ctx)
	defer stopFetching()
	var (
		wm       = newWatermark()
		slots    = make(chan struct{}, c.cfg.Inflight)
		batches  sync.WaitGroup
		failures = newFailures()
		fatalMu  sync.Mutex
		fatal    error
	)
	fetchAttempt := 0
	for fetchCtx.Err() == nil {
		// A free slot and no batch failing.
		select {
		case slots <- struct{}{}:
		case <-fetchCtx.Done():
			continue
		}
		select {
		case <-failures.none():
		case <-fetchCtx.Done():
			<-slots
			continue
		}
		fetched, err := c.fetch(fetchCtx, r, make([]kafkago.Message, 0, c.cfg.Batch.Size))
		if len(fetched) == 0 {
			<-slots
			if err != nil && fetchCtx.Err() == nil {
				hs.set(kindFetch, fmt.Errorf("fetch from kafka topic %q: %w", c.cfg.Topic, err))
				c.cfg.Backoff.Sleep(fetchCtx, fetchAttempt)
				fetchAttempt++
			}
			continue
		}
		fetchAttempt = 0
		hs.set(kindFetch, nil)
		hs.set(kindClient, nil)

		marks := wm.add(fetched)
		batch := make([]broker.Message, len(fetched))
		for i := range fetched {
			batch[i] = message(&fetched[i])
		}
		batches.Go(func() {
			defer func() { <-slots }()
			settled, err := c.settle(ctx, hs, failures, batch)
			if err != nil {
				fatalMu.Lock()
				fatal = cmp.Or(fatal, err)
				fatalMu.Unlock()
				stopFetching()
				return
			}
			if settled {
				cm.mark(wm.settle(marks))
			}
			// Not settled: stopped while the Handler was failing. Nothing of
			// the batch (or after it, per partition) is committed; the group
			// redelivers it.
		})
	}
	batches.Wait()
	fatalMu.Lock()
	defer fatalMu.Unlock()
	return fatal
}

// fetch appends to buf up to Batch.Size messages: it blocks for the first,
// then waits at most Batch.Wait for the rest. It returns what it has when ctx
// is done or the reader fails.
func (c *Consumer) fetch(ctx context.Context, r *kafkago.Reader, buf []kafkago.Message) ([]kafkago.Message, error) {
	m, err := r.FetchMessage(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return buf, nil
		}
		return buf, err
	}
	buf = append(buf, m)
	if len(buf) >= c.cfg.Batch.Size {
		return buf, nil
	}
	wctx, cancel := context.WithTimeout(ctx, c.cfg.Batch.Wait)
	defer cancel()
	for len(buf) < c.cfg.Batch.Size {
		m, err := r.FetchMessage(wctx)
		if err != nil {
			if wctx.Err() != nil {
				return buf, nil
			}
			return buf, err
		}
		buf = append(buf, m)
	}
	return buf, nil
}

// settle hands batch to h until it is settled, retrying the same batch after
// a backoff when Handle fails; failures counts it as failing meanwhile. It
// reports false when ctx ended while Handle was failing (one last attempt is
// made after ctx is done).
func (c *Consumer) settle(ctx context.Context, hs *health, failures *failures, batch []broker.Message) (bool, error) {
	hctx := context.WithoutCancel(ctx)
	failed := false
	defer func() {
		if failed {
			failures.add(-1)
		}
	}()
	for attempt := 0; ; attempt++ {
		last := ctx.Err() != nil
		results, err := hs.h.Handle(hctx, batch)
		if err == nil {
			if failed {
				failed = false
				failures.add(-1)
			}
			if len(results) != len(batch) {
				return false, fmt.Errorf("handler returned %d results for a batch of %d", len(results), len(batch))
			}
			for i, res := range results {
				if res != broker.Written && res != broker.DeadLettered {
					return false, fmt.Errorf("handler returned %s for %s: kafka has no broker-side dead letter", res, batch[i].ID)
				}
			}
			if failures.count() == 0 {
				hs.set(kindHandle, nil) // no other batch is failing either
			}
			return true, nil
		}
		if !failed {
			failed = true
			failures.add(1)
		}
		hs.set(kindHandle, fmt.Errorf("handle batch of %d kafka messages: %w", len(batch), err))
		if last {
			return false, nil
		}
		c.logger.Warn("handle failed, retrying the same batch", "batch", len(batch), "attempt", attempt+1, "err", err)
		c.cfg.Backoff.Sleep(ctx, attempt)
	}
}

// failures counts the batches whose Handle is failing; none is closed while
// the count is zero.
type failures struct {
	mu    sync.Mutex
	n     int
	clear chan struct{}
}

func newFailures() *failures {
	f := &failures{clear: make(chan struct{})}
	close(f.clear)
	return f
}

func (f *failures) add(d int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	was := f.n
	f.n += d
	switch {
	case was == 0 && f.n > 0:
		f.clear = make(chan struct{})
	case was > 0 && f.n == 0:
		close(f.clear)
	}
}

func (f *failures) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

func (f *failures) none() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.clear
}

// watermark orders the settlement of in-flight batches per partition: a
// batch's messages of a partition become committable only when every earlier
// batch holding that partition is settled too. kafka-go hands a partition's
// messages over in offset order, so what it releases is always a settled
// prefix of the partition.
type watermark struct {
	mu    sync.Mutex
	parts map[int][]*mark // partition → its marks in fetch order
}

// mark is the last message of one partition in one batch.
type mark struct {
	last    kafkago.Message
	settled bool
}

func newWatermark() *watermark { return &watermark{parts: make(map[int][]*mark)} }

// add registers a fetched batch, in fetch order, and returns its marks.
func (w *watermark) add(msgs []kafkago.Message) []*mark {
	byPart := make(map[int]*mark)
	var marks []*mark
	for _, m := range msgs {
		if mk, ok := byPart[m.Partition]; ok {
			if m.Offset > mk.last.Offset {
				mk.last = m
			}
			continue
		}
		mk := &mark{last: m}
		byPart[m.Partition] = mk
		marks = append(marks, mk)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, mk := range marks {
		w.parts[mk.last.Partition] = append(w.parts[mk.last.Partition], mk)
	}
	return marks
}

// settle marks a batch settled and returns, per partition, the highest
// message that is now committable.
func (w *watermark) settle(marks []*mark) []kafkago.Message {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []kafkago.Message
	for _, mk := range marks {
		mk.settled = true
		p := mk.last.Partition
		q := w.parts[p]
		i := 0
		for i < len(q) && q[i].settled {
			i++
		}
		if i == 0 {
			continue
		}
		out = append(out, q[i-1].last)
		if i == len(q) {
			delete(w.parts, p)
		} else {
			w.parts[p] = q[i:]
		}
	}
	return out
}

// message converts a kafka-go message. The body and header values are not
// copied: kafka-go allocates them per message.
func message(m *kafkago.Message) broker.Message {
	headers := make(map[string]string, len(m.Headers)+1)
	for _, hd := range m.Headers {
		headers[hd.Key] = string(hd.Value)
	}
	if m.Key != nil {
		headers[HeaderKey] = string(m.Key)
	}
	return broker.Message{
		ID:          m.Topic + "/" + strconv.Itoa(m.Partition) + "/" + strconv.FormatInt(m.Offset, 10),
		Body:        m.Value,
		Headers:     headers,
		PublishedAt: m.Time,
	}
}

// committer commits the watermark of every partition: the offset after the
// highest settled message. The fetch loop only marks messages of settled
// batches, in order, so everything below a watermark is settled.
type committer struct {
	r       *kafkago.Reader
	timeout time.Duration
	backoff broker.Backoff
	logger  *slog.Logger
	health  *health

	mu      sync.Mutex
	pending map[int]kafkago.Message // partition → highest settled message not yet committed
	wake    chan struct{}           // capacity 1: merged pokes
	stop    chan struct{}           // closed when the fetch loop is done
}

// mark records msgs (one settled batch) for the next commit.
func (c *committer) mark(msgs []kafkago.Message) {
	c.mu.Lock()
	for _, m := range msgs {
		if cur, ok := c.pending[m.Partition]; !ok || m.Offset > cur.Offset {
			c.pending[m.Partition] = m
		}
	}
	c.mu.Unlock()
	c.poke()
}

func (c *committer) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// take returns and clears the pending watermarks.
func (c *committer) take() []kafkago.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]kafkago.Message, 0, len(c.pending))
	for p, m := range c.pending {
		out = append(out, m)
		delete(c.pending, p)
	}
	return out
}

// putBack returns msgs to pending unless a higher watermark arrived meanwhile.
func (c *committer) putBack(msgs []kafkago.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range msgs {
		if cur, ok := c.pending[m.Partition]; !ok || m.Offset > cur.Offset {
			c.pending[m.Partition] = m
		}
	}
}

// run commits whenever there is something to commit until stop is closed,
// then makes one last commit bounded by the commit timeout.
func (c *committer) run(ctx context.Context) {
	attempt := 0
	for {
		select {
		case <-c.wake:
		case <-c.stop:
		}
		select {
		case <-c.stop:
			if msgs := c.take(); len(msgs) > 0 {
				if err := c.commit(ctx, msgs); err != nil {
					c.logger.Warn("last kafka commit failed; the group redelivers what it covered", "err", err)
				}
			}
			return
		default:
		}
		msgs := c.take()
		if len(msgs) == 0 {
			continue
		}
		err := c.commit(ctx, msgs)
		switch {
		case err == nil:
			attempt = 0
			c.health.set(kindCommit, nil)
		case groupMoved(err):
			// The partitions may belong to another member now: committing
			// them could rewind its progress. The new owner starts from the
			// last committed offset; dedupe absorbs the redelivery.
			c.logger.Info("kafka commit refused after a rebalance; dropped", "err", err)
		default:
			c.putBack(msgs)
			c.health.set(kindCommit, fmt.Errorf("commit kafka offsets: %w", err))
			c.sleep(attempt)
			attempt++
			c.poke()
		}
	}
}

// sleep waits for a backoff delay unless stop is closed first.
func (c *committer) sleep(attempt int) {
	t := time.NewTimer(c.backoff.Delay(attempt))
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.stop:
	}
}

func (c *committer) commit(ctx context.Context, msgs []kafkago.Message) error {
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.r.CommitMessages(cctx, msgs...)
}

// groupMoved reports a commit refused because the group moved on: a new
// generation, or this member is no longer in it.
func groupMoved(err error) bool {
	return errors.Is(err, kafkago.RebalanceInProgress) ||
		errors.Is(err, kafkago.IllegalGeneration) ||
		errors.Is(err, kafkago.UnknownMemberId) ||
		errors.Is(err, kafkago.FencedInstanceID) ||
		errors.Is(err, io.ErrClosedPipe)
}

// Kinds of trouble the health tracker keeps apart: each clears only itself.
const (
	kindConnect = "connect"
	kindClient  = "client"
	kindFetch   = "fetch"
	kindHandle  = "handle"
	kindCommit  = "commit"
)

// health merges the worker's troubles into the Handler's Failing/Healthy.
type health struct {
	h broker.Handler

	mu   sync.Mutex
	errs map[string]error
}

func (s *health) set(kind string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.errs[kind] = err
		s.h.Failing(err)
		return
	}
	_, had := s.errs[kind]
	delete(s.errs, kind)
	if !had && kind != kindConnect {
		return
	}
	for _, k := range []string{kindConnect, kindClient, kindFetch, kindHandle, kindCommit} {
		if e, ok := s.errs[k]; ok {
			s.h.Failing(e)
			return
		}
	}
	s.h.Healthy()
}

// pollLag refreshes the worker's assignment and lag every LagInterval.
func (c *Consumer) pollLag(ctx context.Context, transport *kafkago.Transport, hs *health) {
	client := &kafkago.Client{Addr: kafkago.TCP(c.cfg.Brokers...), Transport: transport, Timeout: c.cfg.DialTimeout}
	t := time.NewTicker(c.cfg.LagInterval)
	defer t.Stop()
	idleLogged := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s, err := c.readLag(ctx, client)
		if err != nil {
			if ctx.Err() == nil {
				c.logger.Debug("read kafka lag", "err", err)
			}
			continue
		}
		if s == nil {
			continue
		}
		// The group is stable and lists this worker: whatever the reader
		// logged before has healed.
		hs.set(kindClient, nil)
		c.lag.Store(s)
		if len(s.partitions) == 0 && !idleLogged {
			c.logger.Info("kafka worker has no partition: the source has more workers than the topic has partitions, this one idles")
		}
		idleLogged = len(s.partitions) == 0
	}
}

// readLag returns the worker's partitions and their lag, or nil when the
// group is rebalancing or does not list this worker yet.
func (c *Consumer) readLag(ctx context.Context, client *kafkago.Client) (*lagState, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	groups, err := client.DescribeGroups(ctx, &kafkago.DescribeGroupsRequest{GroupIDs: []string{c.cfg.GroupID}})
	if err != nil {
		return nil, fmt.Errorf("describe group: %w", err)
	}
	var assigned []int
	found := false
	for _, g := range groups.Groups {
		if g.Error != nil {
			return nil, fmt.Errorf("describe group: %w", g.Error)
		}
		if g.GroupState != "Stable" {
			return nil, nil
		}
		for _, m := range g.Members {
			if m.ClientID != c.clientID {
				continue
			}
			found = true
			for _, t := range m.MemberAssignments.Topics {
				if t.Topic == c.cfg.Topic {
					assigned = append(assigned, t.Partitions...)
				}
			}
		}
	}
	if !found {
		return nil, nil
	}
	s := &lagState{partitions: make(map[int]int64, len(assigned))}
	if len(assigned) == 0 {
		return s, nil
	}
	fetched, err := client.OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: c.cfg.GroupID, Topics: map[string][]int{c.cfg.Topic: assigned}})
	if err != nil {
		return nil, fmt.Errorf("fetch committed offsets: %w", err)
	}
	if fetched.Error != nil {
		return nil, fmt.Errorf("fetch committed offsets: %w", fetched.Error)
	}
	committed := make(map[int]int64, len(assigned))
	for _, p := range fetched.Topics[c.cfg.Topic] {
		if p.Error == nil {
			committed[p.Partition] = p.CommittedOffset
		}
	}
	reqs := make([]kafkago.OffsetRequest, 0, 2*len(assigned))
	for _, p := range assigned {
		reqs = append(reqs, kafkago.FirstOffsetOf(p), kafkago.LastOffsetOf(p))
	}
	offs, err := client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{c.cfg.Topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("list offsets: %w", err)
	}
	for _, po := range offs.Topics[c.cfg.Topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("list offsets of partition %d: %w", po.Partition, po.Error)
		}
		from := po.FirstOffset
		if off, ok := committed[po.Partition]; ok && off >= 0 {
			from = max(off, po.FirstOffset)
		}
		s.partitions[po.Partition] = max(po.LastOffset-from, 0)
	}
	return s, nil
}
