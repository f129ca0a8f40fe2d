package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/amqp"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
	"github.com/sluice-io/sluice/source"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// amqpFactory builds real AMQP consumers, as cmd/sluice does.
func amqpFactory(src source.Source, worker int) (broker.Consumer, error) {
	a := src.PubSub.AMQP
	return amqp.New(amqp.Config{
		Schema: a.Schema, Host: a.Host, Port: a.Port, Queue: a.Queue,
		User: "guest", Password: "guest",
		DeadLetterExchange: a.DeadLetterExchange,
		Reconnect:          broker.Backoff{Min: 50 * time.Millisecond, Max: time.Second},
		ConnectionName:     fmt.Sprintf("sluice-test-%s-%d", src.UID, worker),
	}, slog.New(slog.DiscardHandler))
}

// bundle is a running supervisor on real Redis and RabbitMQ.
type bundle struct {
	sup   *Supervisor
	store *source.Store
	queue *dispatch.Queue
	rdb   redis.UniversalClient
}

func startSupervisor(t *testing.T, rdb redis.UniversalClient, prefix string) *bundle {
	t.Helper()
	store := source.New(rdb, prefix)
	queue := dispatch.New(rdb, dispatch.Options{Prefix: prefix})
	sup := New(store, queue, amqpFactory, Config{
		Resync:  time.Second,
		Backoff: broker.Backoff{Min: 50 * time.Millisecond, Max: 500 * time.Millisecond},
		Grace:   5 * time.Second,
	}, nil, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = queue.Run(ctx) })
	wg.Go(func() { require.NoError(t, sup.Run(ctx)) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &bundle{sup: sup, store: store, queue: queue, rdb: rdb}
}

// waitStatus polls the supervisor's status of id until cond holds.
func (b *bundle) waitStatus(t *testing.T, id, what string, cond func(SourceStatus, error) bool) SourceStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := b.sup.Status(id)
		if cond(st, err) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached; status %+v, err %v", what, st, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func running(workers int) func(SourceStatus, error) bool {
	return func(st SourceStatus, err error) bool {
		return err == nil && st.State == string(StateRunning) && len(st.Workers) == workers
	}
}

func stopped(st SourceStatus, err error) bool { return errors.Is(err, ErrNotRunning) }

// declareQueue creates a durable queue on the shared RabbitMQ, deleted when
// the test ends, and returns a publisher to it.
func declareQueue(t *testing.T, name string) func(n int) {
	t.Helper()
	conn, err := amqp091.Dial("amqp://guest:guest@127.0.0.1:5672/")
	require.NoError(t, err)
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDeclare(name, true, false, false, false, nil)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = ch.QueueDelete(name, false, false, false)
		_ = conn.Close()
	})
	next := 0
	return func(n int) {
		for range n {
			err := ch.PublishWithContext(context.Background(), "", name, false, false, amqp091.Publishing{
				MessageId: fmt.Sprintf("m-%d", next),
				Body:      fmt.Appendf(nil, `{"endpoint_id":"ep","event_type":"t","data":{"seq":%d}}`, next),
			})
			require.NoError(t, err)
			next++
		}
	}
}

func waitStream(t *testing.T, b *bundle, n int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := b.rdb.XLen(context.Background(), b.queue.StreamKey()).Result()
		if err == nil && got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream holds %d entries (err %v), want %d", got, err, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSupervisorFollowsTheStore(t *testing.T) {
	t.Parallel()
	prefix := dispatchtest.Prefix(t)
	rdb := dispatchtest.Redis(t, prefix)
	b := startSupervisor(t, rdb, prefix)
	ctx := context.Background()
	queueName := prefix + ".q"
	publish := declareQueue(t, queueName)

	src := amqpSource("", 4, "")
	src.PubSub.AMQP.Queue = queueName
	created := time.Now()
	src, err := b.store.Create(ctx, "p1", src)
	require.NoError(t, err)
	b.waitStatus(t, src.UID, "4 workers running", running(4))
	t.Logf("create → all workers running: %s", time.Since(created))

	publish(100)
	waitStream(t, b, 100)

	// A change of the pub_sub block restarts the source with the new figure.
	_, err = b.store.Update(ctx, "p1", src.UID, func(s *source.Source) error { s.PubSub.Workers = 2; return nil })
	require.NoError(t, err)
	b.waitStatus(t, src.UID, "2 workers running", running(2))
	publish(50)
	waitStream(t, b, 150)

	// A change of anything else leaves the workers alone.
	before, _ := b.sup.Status(src.UID)
	_, err = b.store.Update(ctx, "p1", src.UID, func(s *source.Source) error { s.Name = "renamed"; return nil })
	require.NoError(t, err)
	b.sup.Poke()
	time.Sleep(100 * time.Millisecond) // give a wrong restart the chance to happen
	after, _ := b.sup.Status(src.UID)
	require.Equal(t, before.Since, after.Since, "renaming a source must not restart it")

	_, err = b.store.Update(ctx, "p1", src.UID, func(s *source.Source) error { s.IsDisabled = true; return nil })
	require.NoError(t, err)
	b.waitStatus(t, src.UID, "disabled source stopped", stopped)
	publish(10) // waits in the queue while the source is disabled

	_, err = b.store.Update(ctx, "p1", src.UID, func(s *source.Source) error { s.IsDisabled = false; return nil })
	require.NoError(t, err)
	b.waitStatus(t, src.UID, "enabled source running", running(2))
	waitStream(t, b, 160)

	require.NoError(t, b.store.Delete(ctx, "p1", src.UID))
	b.waitStatus(t, src.UID, "deleted source stopped", stopped)
}

// tcpProxy forwards connections to target once Open is called; until then
// its port refuses them, as a broker that is down does.
type tcpProxy struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	wg           sync.WaitGroup
	conns        []net.Conn
}

func newProxy(t *testing.T, target string) *tcpProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &tcpProxy{addr: ln.Addr().String(), target: target}
	require.NoError(t, ln.Close())
	t.Cleanup(p.close)
	return p
}

func (p *tcpProxy) open(t *testing.T) {
	ln, err := net.Listen("tcp", p.addr)
	require.NoError(t, err)
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			p.wg.Go(func() { _, _ = io.Copy(u, c); _ = u.Close() })
			p.wg.Go(func() { _, _ = io.Copy(c, u); _ = c.Close() })
		}
	})
}

func (p *tcpProxy) close() {
	p.mu.Lock()
	if p.ln != nil {
		_ = p.ln.Close()
	}
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func TestSupervisorBacksOffWhileTheBrokerIsDown(t *testing.T) {
	t.Parallel()
	prefix := dispatchtest.Prefix(t)
	rdb := dispatchtest.Redis(t, prefix)
	b := startSupervisor(t, rdb, prefix)
	ctx := context.Background()
	queueName := prefix + ".q"
	publish := declareQueue(t, queueName)
	proxy := newProxy(t, "127.0.0.1:5672")

	src := amqpSource("", 2, "")
	src.PubSub.AMQP.Queue = queueName
	_, port, _ := net.SplitHostPort(proxy.addr)
	src.PubSub.AMQP.Port = port
	src, err := b.store.Create(ctx, "p1", src)
	require.NoError(t, err)

	st := b.waitStatus(t, src.UID, "backing off", func(st SourceStatus, err error) bool {
		return err == nil && len(st.Workers) == 2 && st.Workers[0].LastError != "" && st.Workers[0].Failures >= 2
	})
	require.Contains(t, st.Workers[0].LastError, "connection refused")
	require.NotNil(t, st.Workers[0].LastErrorAt)

	proxy.open(t) // the broker comes back
	b.waitStatus(t, src.UID, "recovered", running(2))
	publish(20)
	waitStream(t, b, 20)
}

func TestSupervisorKeepsWorkersWhenRedisIsUnreachable(t *testing.T) {
	t.Parallel()
	srv := dispatchtest.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	prefix := "test:supervisor:private"
	b := startSupervisor(t, rdb, prefix)
	ctx := context.Background()
	queueName := "test.supervisor.redis-down." + srv.Addr()
	publish := declareQueue(t, queueName)

	src := amqpSource("", 1, "")
	src.PubSub.AMQP.Queue = queueName
	src, err := b.store.Create(ctx, "p1", src)
	require.NoError(t, err)
	b.waitStatus(t, src.UID, "running", running(1))
	publish(10)
	waitStream(t, b, 10)

	srv.Stop()
	b.sup.Poke() // a reconcile that cannot read the store
	publish(10)  // cannot be written now: the worker fails the batch and retries
	b.waitStatus(t, src.UID, "write failures seen", func(st SourceStatus, err error) bool {
		return err == nil && st.Workers[0].Failures > 0
	})
	st, err := b.sup.Status(src.UID)
	require.NoError(t, err, "the worker must keep running while the store cannot be read")
	require.Len(t, st.Workers, 1)

	srv.Start()
	waitStream(t, b, 20)
	b.waitStatus(t, src.UID, "running again", running(1))
}
