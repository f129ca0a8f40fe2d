package main

import (
	"context"
	"errors"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-io/sluice/dispatch"
)

// metrics is the process's Prometheus registry with the process-wide
// metrics; the supervisor registers the per-source ones on reg.
type metrics struct {
	reg         *prometheus.Registry
	redisErrors prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		redisErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_redis_errors_total",
			Help: "Redis commands that failed (connection errors, timeouts, server errors).",
		}),
	}
	m.reg.MustRegister(m.redisErrors,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// watchQueue exposes the dispatch stream's length and backpressure, as last
// read by the queue (no Redis call at scrape time).
func (m *metrics) watchQueue(q *dispatch.Queue) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sluice_dispatch_stream_length",
			Help: "Entries in the dispatch stream.",
		}, func() float64 { return float64(q.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sluice_backpressure_engaged",
			Help: "1 while workers are held back because the dispatch stream is above its high-water mark.",
		}, func() float64 {
			if q.Backpressured() {
				return 1
			}
			return 0
		}),
	)
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// redisHook counts failed Redis commands; a missing key (redis.Nil) is an
// answer, not a failure.
func (m *metrics) redisHook() redis.Hook { return redisErrorHook{m.redisErrors} }

type redisErrorHook struct{ errors prometheus.Counter }

func (h redisErrorHook) failed(err error) bool {
	return err != nil && !errors.Is(err, redis.Nil) && !errors.Is(err, context.Canceled)
}

func (h redisErrorHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if h.failed(err) {
			h.errors.Inc()
		}
		return c, err
	}
}

func (h redisErrorHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if h.failed(err) {
			h.errors.Inc()
		}
		return err
	}
}

func (h redisErrorHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if h.failed(err) {
			h.errors.Inc()
		}
		return err
	}
}
