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
	// db). SLUICE_REDIS_URL, default "redis://127.0.0.1:6379/0".
	RedisURL string
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
	// LogLevel is debug, info, warn or error. SLUICE_LOG_LEVEL, default info.
	LogLevel string
	// LogFormat is json or text. SLUICE_LOG_FORMAT, default json.
	LogFormat string
}

// APIKey is one admin API key.
type APIKey struct {
	Key       string
	ProjectID string // empty: the key is global
}

// Defaults.
const (
	DefaultListen        = ":8080"
	DefaultRedisURL      = "redis://127.0.0.1:6379/0"
	DefaultPrefix        = "sluice"
	DefaultMaxWorkers    = 64
	DefaultShutdownGrace = 30 * time.Second
	DefaultLogLevel      = "info"
	DefaultLogFormat     = "json"
)

// Load reads the configuration through getenv (os.Getenv in production),
// applies defaults and validates it. Every error names its variable.
func Load(getenv func(string) string) (Config, error) {
	var errs []error
	c := Config{
		Listen:    getenv("SLUICE_LISTEN"),
		RedisURL:  getenv("SLUICE_REDIS_URL"),
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
	if v := getenv("SLUICE_MAX_WORKERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("SLUICE_MAX_WORKERS: not a number: %q", v))
		}
		c.MaxWorkers = n
	}
	if v := getenv("SLUICE_SHUTDOWN_GRACE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("SLUICE_SHUTDOWN_GRACE: not a duration like 30s: %q", v))
		}
		c.ShutdownGrace = d
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
	c.Prefix = cmp.Or(c.Prefix, DefaultPrefix)
	c.MaxWorkers = cmp.Or(c.MaxWorkers, DefaultMaxWorkers)
	c.ShutdownGrace = cmp.Or(c.ShutdownGrace, DefaultShutdownGrace)
	c.LogLevel = cmp.Or(c.LogLevel, DefaultLogLevel)
	c.LogFormat = cmp.Or(c.LogFormat, DefaultLogFormat)
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
	if _, err := redis.ParseURL(c.RedisURL); err != nil {
		errs = append(errs, fmt.Errorf("SLUICE_REDIS_URL: %w", err))
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
		if len(k.Key) < 16 {
			return nil, fmt.Errorf("SLUICE_API_KEYS: entry %d: a key needs at least 16 characters", i+1)
		}
		keys = append(keys, k)
	}
	return keys, nil
}
