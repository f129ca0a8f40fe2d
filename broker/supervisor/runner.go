package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/source"
)

// runner runs the workers of one source.
type runner struct {
	src         source.Source
	fingerprint string
	started     time.Time
	workers     []*worker

	cancel     context.CancelFunc // stops fetching
	cancelHard context.CancelFunc // aborts writes in flight, Grace after cancel
	grace      time.Duration
	wg         sync.WaitGroup
}

func (s *Supervisor) start(src source.Source) *runner {
	ctx, cancel := context.WithCancel(context.Background())
	hard, cancelHard := context.WithCancel(context.Background())
	r := &runner{
		src:         src,
		fingerprint: fingerprint(src),
		started:     time.Now(),
		cancel:      cancel,
		cancelHard:  cancelHard,
		grace:       s.cfg.Grace,
	}
	labels := s.metrics.sourceLabels(src)
	log := s.log.With("source_id", src.UID, "project_id", src.ProjectID, "broker", src.PubSub.Type)
	for i := range max(src.PubSub.Workers, 1) {
		w := &worker{
			n:       i,
			src:     src,
			log:     log.With("worker", i),
			status:  WorkerStatus{Worker: i, State: StateStarting},
			metrics: labels,
		}
		w.handler = &handler{
			w:          w,
			queue:      s.queue,
			decode:     s.cfg.Decode,
			hard:       hard,
			nativeDead: src.PubSub.Type == "amqp" && src.PubSub.AMQP != nil && src.PubSub.AMQP.DeadLetterExchange != "",
		}
		labels.setState("", StateStarting)
		r.workers = append(r.workers, w)
		r.wg.Go(func() { s.runWorker(ctx, w) })
	}
	return r
}

// stop tells the workers to stop fetching and gives them the grace period
// to settle what they hold.
func (r *runner) stop() {
	r.cancel()
	time.AfterFunc(r.grace, r.cancelHard)
}

// wait returns once every worker has exited.
func (r *runner) wait() {
	r.wg.Wait()
	r.cancelHard()
}

// runWorker runs one worker until ctx is done, restarting it after failures.
func (s *Supervisor) runWorker(ctx context.Context, w *worker) {
	defer w.setState(StateStopped)
	for attempt := 0; ; {
		w.setState(StateStarting)
		start := time.Now()
		err := s.runOnce(ctx, w)
		if ctx.Err() != nil {
			if err != nil && !errors.Is(err, context.Canceled) {
				w.log.Warn("worker stopped with an error", "error", err)
			}
			return
		}
		if err == nil {
			err = errors.New("consumer stopped without being asked to")
		}
		if time.Since(start) > s.cfg.HealthyAfter {
			attempt = 0
		}
		w.fail(err)
		w.setState(StateBackingOff)
		delay := s.cfg.Backoff.Delay(attempt)
		w.log.Warn("worker failed, backing off", "error", err, "attempt", attempt, "delay", delay.Round(time.Millisecond).String())
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		attempt++
	}
}

// runOnce builds and runs the consumer, turning a panic into an error.
func (s *Supervisor) runOnce(ctx context.Context, w *worker) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("consumer panicked: %v", p)
		}
	}()
	c, err := s.factory(w.src, w.n)
	if err != nil {
		return fmt.Errorf("configure consumer: %w", err)
	}
	w.setConsumer(c)
	defer w.setConsumer(nil)
	return c.Run(ctx, w.handler)
}

// worker is one worker of a source and its live status.
type worker struct {
	n       int
	src     source.Source
	log     *slog.Logger
	handler *handler
	metrics *sourceMetrics

	mu       sync.Mutex
	status   WorkerStatus
	consumer broker.Consumer
}

func (w *worker) setConsumer(c broker.Consumer) {
	w.mu.Lock()
	w.consumer = c
	w.mu.Unlock()
}

func (w *worker) setState(st State) {
	w.mu.Lock()
	old := w.status.State
	w.status.State = st
	w.mu.Unlock()
	if old != st {
		w.metrics.setState(old, st)
	}
}

func (w *worker) fail(err error) {
	now := time.Now().UTC()
	w.mu.Lock()
	w.status.LastError = err.Error()
	w.status.LastErrorAt = &now
	w.status.Failures++
	w.mu.Unlock()
}

func (w *worker) snapshot() WorkerStatus {
	w.mu.Lock()
	st := w.status
	c := w.consumer
	w.mu.Unlock()
	if l, ok := c.(broker.Lagger); ok {
		if n, ok := l.Lag(); ok {
			st.Lag = &n
		}
	}
	if p, ok := c.(broker.Partitioned); ok {
		if parts, ok := p.Partitions(); ok {
			st.Partitions = parts
			if len(parts) == 0 && st.State == StateRunning {
				st.Note = "idle: no partition assigned (more workers than partitions)"
			}
		}
	}
	return st
}
