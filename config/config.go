// Package config reads sluice's process configuration from environment
// variables (12-factor); cmd/sluice lets a few flags override them.
package config

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Config is the process configuration. Each field names its variable and
// default.
type Config struct {
	// Listen is the admin HTTP address. SLUICE_LISTEN, default ":8080".
	Listen string
	// RedisURL is any go-redis URL (redis:// or rediss://, with password and
	// db). SLUICE_REDIS_URL, default "redis://127.0.0.1:6379/0". For a
	// cluster or Sentinel, more nodes are given as addr query parameters
	// (see RedisMode).
	RedisURL string
	// RedisMode is single, cluster (Redis Cluster: the URL names seed nodes,
	// redis://:pw@node1:6379?addr=node2:6379) or sentinel (the URL names the
	// sentinels and the master: redis://:pw@s1:26379?addr=s2:26379&master_name=mymaster).
	// SLUICE_REDIS_MODE, default single.
	RedisMode string
	// Prefix namespaces every Redis key, so tenants and tests can share one
	// Redis. SLUICE_PREFIX, default "sluice".
	Prefix string
	// APIKeys are the admin API keys. SLUICE_API_KEYS, comma-separated: KEY
	// is a global key, PROJECT_ID=KEY a key bound to one project. No
	// default; serve refuses to start without one unless --dev.
	APIKeys []APIKey
	// PublicURL is the base of each source's url. SLUICE_PUBLIC_URL, default
	// "http://localhost" + the port of Listen.
	PublicURL string
	// MaxWorkers bounds a source's pub_sub.workers. SLUICE_MAX_WORKERS,
	// default 64.
	MaxWorkers int
	// ShutdownGrace is how long a SIGTERM waits for in-flight work.
	// SLUICE_SHUTDOWN_GRACE (Go duration), default 30s.
	ShutdownGrace time.Duration
	// ShutdownDelay is how long /readyz answers 503 after SIGTERM before
	// the workers stop fetching, so a load balancer or Kubernetes endpoints
	// stop routing to the admin API first. It comes on top of the grace.
	// SLUICE_SHUTDOWN_DELAY (Go duration), default 0s.
	ShutdownDelay time.Duration
	// LogLevel is debug, info, warn or error. SLUICE_LOG_LEVEL, default info.
	LogLevel string
	// LogFormat is json or text. SLUICE_LOG_FORMAT, default json.
	LogFormat string
	// MetricsListen, when set, serves /metrics on its own address instead
	// of the admin listener. SLUICE_METRICS_LISTEN, default "" (admin
	// listener).
	MetricsListen string

	// BatchSize is the most messages a worker hands to the dispatch queue at
	// once. SLUICE_BATCH_SIZE, default 100.
	BatchSize int
	// BatchWait is the longest a partial batch waits for more messages.
	// SLUICE_BATCH_WAIT, default 50ms.
	BatchWait time.Duration
	// MaxMessageBytes is the largest message body accepted; larger ones are
	// dead-lettered. SLUICE_MAX_MESSAGE_BYTES, default 1048576 (1 MiB).
	MaxMessageBytes int
	// DedupeWindow is how long a broker message identity is remembered to
	// skip redeliveries. SLUICE_DEDUPE_WINDOW, default 24h.
	DedupeWindow time.Duration
	// HighWater is the dispatch stream length above which workers stop
	// fetching. SLUICE_HIGH_WATER, default 1000000.
	HighWater int
	// LowWater is the length below which they resume. SLUICE_LOW_WATER,
	// default 900000.
	LowWater int
	// KafkaInflight is how many batches a Kafka worker writes at once. 1
	// keeps every partition's messages in order in the dispatch stream;
	// 2 overlaps a batch's decoding with the previous batch's write, for
	// more throughput, and lets a partition's messages reach the stream out
	// of order (commits stay in order either way). SLUICE_KAFKA_INFLIGHT,
	// 1..16, default 1.
	KafkaInflight int
	// ResyncInterval is the period of the supervisor's full resync of the
	// source definitions (change notices are the fast path).
	// SLUICE_RESYNC_INTERVAL, default 30s.
	ResyncInterval time.Duration
}

// MinKeyLength is the length below which serve warns that a key is weak.
const MinKeyLength = 16

// APIKey is one admin API key.
type APIKey struct {
	Key       string
	ProjectID string // empty: the key is global
}

// Defaults.
const (
	DefaultListen        = ":8080"
	DefaultRedisURL      = "redis://127.0.0.1:6379/0"
	DefaultRedisMode     = "single"
	DefaultPrefix        = "sluice"
	DefaultMaxWorkers    = 64
	DefaultShutdownGrace = 30 * time.Second
	DefaultLogLevel      = "info"
	DefaultLogFormat     = "json"

	DefaultBatchSize       = 100
	DefaultBatchWait       = 50 * time.Millisecond
	DefaultMaxMessageBytes = 1 << 20
	DefaultDedupeWindow    = 24 * time.Hour
	DefaultHighWater       = 1_000_000
	DefaultLowWater        = 900_000
	DefaultResyncInterval  = 30 * time.Second
	DefaultKafkaInflight   = 1
)

// Load reads the configuration through getenv (os.Getenv in production),
// applies defaults and validates it. Every error names its variable.
func Load(getenv func(string) string) (Config, error) {
	var errs []error
	c := Config{
		Listen:    getenv("SLUICE_LISTEN"),
		RedisURL:  getenv("SLUICE_REDIS_URL"),
		RedisMode: getenv("SLUICE_REDIS_MODE"),
		Prefix:    getenv("SLUICE_PREFIX"),
		PublicURL: getenv("SLUICE_PUBLIC_URL"),
		LogLevel:  getenv("SLUICE_LOG_LEVEL"),
		LogFormat: getenv("SLUICE_LOG_FORMAT"),
	}
	keys, err := ParseAPIKeys(getenv("SLUICE_API_KEYS"))
	if err != nil {
		errs = append(errs, err)
	}
	c.APIKeys = keys
	c.MetricsListen = getenv("SLUICE_METRICS_LISTEN")
	for _, f := range []struct {
		name string
		dst  *int
	}{
		{"SLUICE_MAX_WORKERS", &c.MaxWorkers},
		{"SLUICE_BATCH_SIZE", &c.BatchSize},
		{"SLUICE_MAX_MESSAGE_BYTES", &c.MaxMessageBytes},
		{"SLUICE_HIGH_WATER", &c.HighWater},
		{"SLUICE_LOW_WATER", &c.LowWater},
		{"SLUICE_KAFKA_INFLIGHT", &c.KafkaInflight},
	} {
		name, dst := f.name, f.dst
		if v := getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: not a number: %q", name, v))
			}
			*dst = n
		}
	}
	for _, f := range []struct {
		name string
		dst  *time.Duration
	}{
		{"SLUICE_SHUTDOWN_GRACE", &c.ShutdownGrace},
		{"SLUICE_SHUTDOWN_DELAY", &c.ShutdownDelay},
		{"SLUICE_BATCH_WAIT", &c.BatchWait},
		{"SLUICE_DEDUPE_WINDOW", &c.DedupeWindow},
		{"SLUICE_RESYNC_INTERVAL", &c.ResyncInterval},
	} {
		name, dst := f.name, f.dst
		if v := getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: not a duration like 30s: %q", name, v))
			}
			*dst = d
		}
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// ApplyDefaults fills every unset field with its default.
func (c *Config) ApplyDefaults() {
	c.Listen = cmp.Or(c.Listen, DefaultListen)
	c.RedisURL = cmp.Or(c.RedisURL, DefaultRedisURL)
	c.RedisMode = cmp.Or(c.RedisMode, DefaultRedisMode)
	c.Prefix = cmp.Or(c.Prefix, DefaultPrefix)
	c.MaxWorkers = cmp.Or(c.MaxWorkers, DefaultMaxWorkers)
	c.ShutdownGrace = cmp.Or(c.ShutdownGrace, DefaultShutdownGrace)
	c.LogLevel = cmp.Or(c.LogLevel, DefaultLogLevel)
	c.LogFormat = cmp.Or(c.LogFormat, DefaultLogFormat)
	c.BatchSize = cmp.Or(c.BatchSize, DefaultBatchSize)
	c.BatchWait = cmp.Or(c.BatchWait, DefaultBatchWait)
	c.MaxMessageBytes = cmp.Or(c.MaxMessageBytes, DefaultMaxMessageBytes)
	c.DedupeWindow = cmp.Or(c.DedupeWindow, DefaultDedupeWindow)
	c.HighWater = cmp.Or(c.HighWater, DefaultHighWater)
	c.LowWater = cmp.Or(c.LowWater, min(DefaultLowWater, c.HighWater-c.HighWater/10))
	c.ResyncInterval = cmp.Or(c.ResyncInterval, DefaultResyncInterval)
	c.KafkaInflight = cmp.Or(c.KafkaInflight, DefaultKafkaInflight)
	if c.PublicURL == "" {
		port := "8080"
		if _, p, err := net.SplitHostPort(c.Listen); err == nil && p != "" && p != "0" {
			port = p
		}
		c.PublicURL = "http://localhost:" + port
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
}

// Validate reports every invalid setting, each naming its variable. It does
// not require API keys (serve decides, --dev brings its own).
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("SLUICE_LISTEN: want host:port or :port, got %q", c.Listen))
	}
	switch c.RedisMode {
	case "single", "cluster", "sentinel":
		if rdb, err := c.Redis(); err != nil {
			errs = append(errs, err)
		} else {
			_ = rdb.Close()
		}
	default:
		errs = append(errs, fmt.Errorf("SLUICE_REDIS_MODE: want single, cluster or sentinel, got %q", c.RedisMode))
	}
	if strings.ContainsAny(c.Prefix, "{} \t\n") {
		errs = append(errs, fmt.Errorf("SLUICE_PREFIX: must not contain braces or spaces, got %q", c.Prefix))
	}
	if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("SLUICE_PUBLIC_URL: want an http(s) URL, got %q", c.PublicURL))
	}
	if c.MaxWorkers < 1 || c.MaxWorkers > 10000 {
		errs = append(errs, fmt.Errorf("SLUICE_MAX_WORKERS: want 1..10000, got %d", c.MaxWorkers))
	}
	if c.ShutdownGrace <= 0 {
		errs = append(errs, fmt.Errorf("SLUICE_SHUTDOWN_GRACE: must be positive, got %s", c.ShutdownGrace))
	}
	if c.ShutdownDelay < 0 || c.ShutdownDelay > 5*time.Minute {
		errs = append(errs, fmt.Errorf("SLUICE_SHUTDOWN_DELAY: want 0..5m, got %s", c.ShutdownDelay))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("SLUICE_LOG_LEVEL: want debug, info, warn or error, got %q", c.LogLevel))
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		errs = append(errs, fmt.Errorf("SLUICE_LOG_FORMAT: want json or text, got %q", c.LogFormat))
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			errs = append(errs, fmt.Errorf("SLUICE_METRICS_LISTEN: want host:port or :port, got %q", c.MetricsListen))
		}
	}
	if c.BatchSize < 1 || c.BatchSize > 10000 {
		errs = append(errs, fmt.Errorf("SLUICE_BATCH_SIZE: want 1..10000, got %d", c.BatchSize))
	}
	if c.BatchWait < 0 || c.BatchWait > time.Minute {
		errs = append(errs, fmt.Errorf("SLUICE_BATCH_WAIT: want 0..1m, got %s", c.BatchWait))
	}
	if c.MaxMessageBytes < 1 {
		errs = append(errs, fmt.Errorf("SLUICE_MAX_MESSAGE_BYTES: must be positive, got %d", c.MaxMessageBytes))
	}
	if c.DedupeWindow < time.Second {
		errs = append(errs, fmt.Errorf("SLUICE_DEDUPE_WINDOW: want at least 1s, got %s", c.DedupeWindow))
	}
	if c.HighWater < 1 {
		errs = append(errs, fmt.Errorf("SLUICE_HIGH_WATER: must be positive, got %d", c.HighWater))
	}
	if c.LowWater < 0 || c.LowWater > c.HighWater {
		errs = append(errs, fmt.Errorf("SLUICE_LOW_WATER: want 0..SLUICE_HIGH_WATER (%d), got %d", c.HighWater, c.LowWater))
	}
	if c.KafkaInflight < 1 || c.KafkaInflight > 16 {
		errs = append(errs, fmt.Errorf("SLUICE_KAFKA_INFLIGHT: want 1..16, got %d", c.KafkaInflight))
	}
	if c.ResyncInterval < time.Second {
		errs = append(errs, fmt.Errorf("SLUICE_RESYNC_INTERVAL: want at least 1s, got %s", c.ResyncInterval))
	}
	return errors.Join(errs...)
}

// ParseAPIKeys parses SLUICE_API_KEYS: comma-separated KEY (global) or
// PROJECT_ID=KEY (bound to a project) entries; blanks are skipped.
func ParseAPIKeys(s string) ([]APIKey, error) {
	var keys []APIKey
	for i, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k := APIKey{Key: part}
		if project, key, ok := strings.Cut(part, "="); ok {
			k = APIKey{Key: strings.TrimSpace(key), ProjectID: strings.TrimSpace(project)}
			if k.ProjectID == "" || k.Key == "" {
				return nil, fmt.Errorf("SLUICE_API_KEYS: entry %d: want KEY or PROJECT_ID=KEY", i+1)
			}
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// Redis returns a client for RedisURL in RedisMode. Creating it does not
// connect.
func (c Config) Redis() (redis.UniversalClient, error) {
	switch c.RedisMode {
	case "cluster":
		o, err := redis.ParseClusterURL(c.RedisURL)
		if err != nil {
			return nil, fmt.Errorf("SLUICE_REDIS_URL: cluster URL: %w", err)
		}
		return redis.NewClusterClient(o), nil
	case "sentinel":
		o, err := redis.ParseFailoverURL(c.RedisURL)
		if err != nil {
			return nil, fmt.Errorf("SLUICE_REDIS_URL: sentinel URL: %w", err)
		}
		if o.MasterName == "" {
			return nil, errors.New("SLUICE_REDIS_URL: a sentinel URL needs master_name=<name>")
		}
		return redis.NewFailoverClient(o), nil
	default:
		o, err := redis.ParseURL(c.RedisURL)
		if err != nil {
			return nil, fmt.Errorf("SLUICE_REDIS_URL: %w", err)
		}
		return redis.NewClient(o), nil
	}
}
