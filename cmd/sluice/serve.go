package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/go-chi/chi/v5"
	"github.com/oklog/run"

	"github.com/sluice-io/sluice/broker/supervisor"
	"github.com/sluice-io/sluice/config"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/source"
	"github.com/sluice-io/sluice/source/api"
)

// serveEnv is what serve reads from the process; tests fill it themselves.
type serveEnv struct {
	args           []string
	getenv         func(string) string
	stdout, stderr io.Writer
	// listening, when set, is told the admin API's address once it accepts
	// connections.
	listening func(addr string)
}

// serve is `sluice serve`: it runs until ctx is done (SIGINT/SIGTERM in
// main), then shuts down gracefully and returns nil.
func serve(ctx context.Context, e serveEnv) error {
	cfg, err := config.Load(e.getenv)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "admin HTTP address (SLUICE_LISTEN)")
	fs.StringVar(&cfg.RedisURL, "redis-url", cfg.RedisURL, "Redis URL (SLUICE_REDIS_URL)")
	fs.StringVar(&cfg.Prefix, "prefix", cfg.Prefix, "Redis key prefix (SLUICE_PREFIX)")
	publicURL := fs.String("public-url", "", "base URL of each source's url (SLUICE_PUBLIC_URL; default http://localhost:<listen port>)")
	fs.IntVar(&cfg.MaxWorkers, "max-workers", cfg.MaxWorkers, "upper bound on pub_sub.workers (SLUICE_MAX_WORKERS)")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error (SLUICE_LOG_LEVEL)")
	dev := fs.Bool("dev", false, "development mode: embedded in-memory Redis and a printed API key; NOTHING PERSISTS")
	if err := fs.Parse(e.args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch {
	case *publicURL != "":
		cfg.PublicURL = *publicURL
	case e.getenv("SLUICE_PUBLIC_URL") == "":
		cfg.PublicURL = "" // follow a --listen port
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := newLogger(cfg, e.stderr)

	if *dev {
		mr, err := miniredis.Run()
		if err != nil {
			return fmt.Errorf("dev: start in-memory redis: %w", err)
		}
		defer mr.Close()
		cfg.RedisURL = "redis://" + mr.Addr() + "/0"
		if len(cfg.APIKeys) == 0 {
			var b [16]byte
			rand.Read(b[:])
			cfg.APIKeys = []config.APIKey{{Key: "dev-" + hex.EncodeToString(b[:])}}
		}
		fmt.Fprintf(e.stdout, `
  ******************************************************************
  *  sluice --dev: embedded in-memory Redis. NOTHING PERSISTS:     *
  *  every source is gone when this process exits. Not for         *
  *  production.                                                   *
  ******************************************************************
  API key: %s

`, cfg.APIKeys[0].Key)
		log.Warn("development mode: in-memory redis, nothing persists", "redis_addr", mr.Addr())
	} else if len(cfg.APIKeys) == 0 {
		return errors.New("SLUICE_API_KEYS: at least one API key is required (or run with --dev)")
	}
	for i, k := range cfg.APIKeys {
		if len(k.Key) < config.MinKeyLength {
			log.Warn("weak admin api key: shorter than recommended", "entry", i+1, "min_length", config.MinKeyLength, "project_id", k.ProjectID)
		}
	}

	rdb, err := cfg.Redis()
	if err != nil {
		return err
	}
	defer rdb.Close()
	m := newMetrics()
	rdb.AddHook(m.redisHook())
	store := source.New(rdb, cfg.Prefix)
	queue := dispatch.New(rdb, dispatch.Options{
		Prefix:       cfg.Prefix,
		DedupeWindow: cfg.DedupeWindow,
		HighWater:    int64(cfg.HighWater),
		LowWater:     int64(cfg.LowWater),
		Decode:       dispatch.DecodeOptions{MaxBodyBytes: cfg.MaxMessageBytes},
		Logger:       log,
	})
	m.watchQueue(queue)
	sup := supervisor.New(store, queue,
		consumerFactory(cfg, log),
		supervisor.Config{
			Resync: cfg.ResyncInterval,
			Grace:  cfg.ShutdownGrace,
			Decode: dispatch.DecodeOptions{MaxBodyBytes: cfg.MaxMessageBytes},
		}, supervisor.NewMetrics(m.reg), log)

	// draining turns /readyz to 503 as soon as shutdown starts, so load
	// balancers stop sending before the listener closes.
	var draining atomic.Bool
	ready := func(ctx context.Context) error {
		switch {
		case draining.Load():
			return errors.New("shutting down")
		case !sup.Ready():
			return errors.New("sources not reconciled yet")
		}
		return nil
	}

	keys := make([]api.Key, len(cfg.APIKeys))
	for i, k := range cfg.APIKeys {
		keys[i] = api.Key{Secret: k.Key, ProjectID: k.ProjectID}
	}
	apiOpts := api.Options{
		Store:      store,
		Keys:       keys,
		PublicURL:  cfg.PublicURL,
		MaxWorkers: cfg.MaxWorkers,
		Logger:     log,
		Ready:      ready,
		SourceRoutes: func(r chi.Router) {
			api.StatusRoutes(func(id string) any { st, _ := sup.Status(id); return st })(r)
			api.DeadLetterRoutes(queue)(r)
		},
	}
	if cfg.MetricsListen == "" {
		apiOpts.Routes = func(r chi.Router) { r.Handle("/metrics", m.handler()) }
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("SLUICE_LISTEN: %w", err)
	}
	srv := &http.Server{
		Handler:           api.New(apiOpts),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	// The daemon is a group of actors: the first to return stops the others,
	// and Run returns when all have.
	var g run.Group
	supDone := make(chan struct{}) // closed when every worker has stopped
	{                              // until ctx is done (SIGINT/SIGTERM)
		interrupted := make(chan struct{})
		g.Add(func() error {
			select {
			case <-ctx.Done():
			case <-interrupted:
				return nil
			}
			// /readyz fails first; the workers keep going for the delay.
			draining.Store(true)
			log.Info("shutting down", "delay", cfg.ShutdownDelay.String(), "grace", cfg.ShutdownGrace.String())
			select {
			case <-time.After(cfg.ShutdownDelay):
			case <-interrupted:
			}
			return ctx.Err()
		}, func(error) { close(interrupted) })
	}
	{ // the admin API
		// run.Group calls interrupts one after another, so this one only
		// signals; the drain wait happens in execute.
		stopping := make(chan struct{})
		var stopOnce sync.Once
		g.Add(func() error {
			log.Info("admin api listening", "addr", ln.Addr().String(), "public_url", cfg.PublicURL, "prefix", cfg.Prefix, "version", version)
			if e.listening != nil {
				e.listening(ln.Addr().String())
			}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(ln) }()
			select {
			case err := <-served:
				return fmt.Errorf("admin api: %w", err)
			case <-stopping:
			}
			// Keep answering (readyz says 503: the interrupt set draining)
			// until the workers have drained, then stop the listener.
			select {
			case <-supDone:
			case <-time.After(cfg.ShutdownGrace):
			}
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				log.Warn("admin api shutdown", "err", err)
			}
			if err := <-served; !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("admin api: %w", err)
			}
			return nil
		}, func(error) {
			draining.Store(true)
			stopOnce.Do(func() { close(stopping) })
		})
	}
	{ // the dispatch stream's length, for backpressure
		qctx, cancel := context.WithCancel(context.Background())
		g.Add(func() error { return queue.Run(qctx) }, func(error) { cancel() })
	}
	{ // the workers of every pub_sub source; a stop lets them write and ack
		// what they hold, within the shutdown grace
		sctx, cancel := context.WithCancel(context.Background())
		g.Add(func() error { defer close(supDone); return sup.Run(sctx) }, func(error) { cancel() })
	}
	if cfg.MetricsListen != "" { // /metrics on a listener of its own
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("SLUICE_METRICS_LISTEN: %w", err)
		}
		msrv := &http.Server{Handler: m.handler(), ReadHeaderTimeout: 10 * time.Second}
		g.Add(func() error {
			log.Info("metrics listening", "addr", mln.Addr().String())
			if err := msrv.Serve(mln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics listener: %w", err)
			}
			return nil
		}, func(error) { _ = msrv.Close() })
	}

	err = g.Run()
	if errors.Is(err, context.Canceled) {
		log.Info("shut down")
		return nil
	}
	return err
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated by config
	o := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, o))
	}
	return slog.New(slog.NewJSONHandler(w, o))
}
