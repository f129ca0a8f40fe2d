package config_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"

	"github.com/sluice-io/sluice/config"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadDefaults(t *testing.T) {
	c, err := config.Load(env(nil))
	require.NoError(t, err)
	want := config.Config{
		Listen: ":8080", RedisURL: "redis://127.0.0.1:6379/0", RedisMode: "single", Prefix: "sluice",
		PublicURL: "http://localhost:8080", MaxWorkers: 64, ShutdownGrace: 30 * time.Second,
		LogLevel: "info", LogFormat: "json",
		BatchSize: 100, BatchWait: 50 * time.Millisecond, MaxMessageBytes: 1 << 20,
		DedupeWindow: 24 * time.Hour, HighWater: 1_000_000, LowWater: 900_000, ResyncInterval: 30 * time.Second,
		KafkaInflight: 1,
	}
	if d := cmp.Diff(want, c); d != "" {
		t.Fatalf("(-want +got)\n%s", d)
	}
}

func TestLoadEverything(t *testing.T) {
	c, err := config.Load(env(map[string]string{
		"SLUICE_LISTEN":            "127.0.0.1:9000",
		"SLUICE_REDIS_URL":         "rediss://:pw@redis.internal:6380/2",
		"SLUICE_PREFIX":            "tenant-a",
		"SLUICE_API_KEYS":          " global-key-0123456789 , proj-1=project-key-0123456789,",
		"SLUICE_PUBLIC_URL":        "https://hooks.example.com/",
		"SLUICE_MAX_WORKERS":       "8",
		"SLUICE_SHUTDOWN_GRACE":    "5s",
		"SLUICE_SHUTDOWN_DELAY":    "3s",
		"SLUICE_LOG_LEVEL":         "debug",
		"SLUICE_LOG_FORMAT":        "text",
		"SLUICE_METRICS_LISTEN":    "127.0.0.1:9100",
		"SLUICE_BATCH_SIZE":        "500",
		"SLUICE_BATCH_WAIT":        "10ms",
		"SLUICE_MAX_MESSAGE_BYTES": "65536",
		"SLUICE_DEDUPE_WINDOW":     "1h",
		"SLUICE_HIGH_WATER":        "5000",
		"SLUICE_LOW_WATER":         "1000",
		"SLUICE_RESYNC_INTERVAL":   "10s",
		"SLUICE_KAFKA_INFLIGHT":    "2",
	}))
	require.NoError(t, err)
	want := config.Config{
		Listen: "127.0.0.1:9000", RedisURL: "rediss://:pw@redis.internal:6380/2", RedisMode: "single", Prefix: "tenant-a",
		APIKeys:   []config.APIKey{{Key: "global-key-0123456789"}, {Key: "project-key-0123456789", ProjectID: "proj-1"}},
		PublicURL: "https://hooks.example.com", MaxWorkers: 8, ShutdownGrace: 5 * time.Second, ShutdownDelay: 3 * time.Second,
		LogLevel: "debug", LogFormat: "text", MetricsListen: "127.0.0.1:9100",
		BatchSize: 500, BatchWait: 10 * time.Millisecond, MaxMessageBytes: 65536,
		DedupeWindow: time.Hour, HighWater: 5000, LowWater: 1000, ResyncInterval: 10 * time.Second,
		KafkaInflight: 2,
	}
	if d := cmp.Diff(want, c); d != "" {
		t.Fatalf("(-want +got)\n%s", d)
	}
}

func TestPublicURLFollowsListenPort(t *testing.T) {
	c, err := config.Load(env(map[string]string{"SLUICE_LISTEN": ":9090"}))
	require.NoError(t, err)
	require.Equal(t, "http://localhost:9090", c.PublicURL)
}

func TestLoadErrorsNameTheVariable(t *testing.T) {
	for _, c := range []struct{ name, val string }{
		{"SLUICE_LISTEN", "8080"},
		{"SLUICE_REDIS_URL", "http://redis"},
		{"SLUICE_PREFIX", "a{b}"},
		{"SLUICE_API_KEYS", "=abcdefghijklmnopq"},
		{"SLUICE_API_KEYS", "p1="},
		{"SLUICE_PUBLIC_URL", "hooks.example.com"},
		{"SLUICE_MAX_WORKERS", "many"},
		{"SLUICE_MAX_WORKERS", "-1"},
		{"SLUICE_SHUTDOWN_GRACE", "30"},
		{"SLUICE_SHUTDOWN_DELAY", "-1s"},
		{"SLUICE_SHUTDOWN_DELAY", "10m"},
		{"SLUICE_SHUTDOWN_GRACE", "-1s"},
		{"SLUICE_LOG_LEVEL", "verbose"},
		{"SLUICE_LOG_FORMAT", "xml"},
		{"SLUICE_METRICS_LISTEN", "9100"},
		{"SLUICE_BATCH_SIZE", "0x"},
		{"SLUICE_BATCH_SIZE", "-5"},
		{"SLUICE_BATCH_WAIT", "2h"},
		{"SLUICE_MAX_MESSAGE_BYTES", "-1"},
		{"SLUICE_DEDUPE_WINDOW", "1ms"},
		{"SLUICE_HIGH_WATER", "-1"},
		{"SLUICE_LOW_WATER", "2000000"},
		{"SLUICE_RESYNC_INTERVAL", "soon"},
		{"SLUICE_KAFKA_INFLIGHT", "-1"},
		{"SLUICE_KAFKA_INFLIGHT", "17"},
		{"SLUICE_REDIS_MODE", "replica"},
	} {
		t.Run(c.name+"="+c.val, func(t *testing.T) {
			_, err := config.Load(env(map[string]string{c.name: c.val}))
			require.Error(t, err)
			require.Contains(t, err.Error(), c.name)
			if c.name == "SLUICE_API_KEYS" {
				require.NotContains(t, err.Error(), "abcdefghijklmnopq", "never echo a key")
			}
		})
	}
}

func TestRedisModes(t *testing.T) {
	for _, c := range []struct {
		mode, url string
		ok        bool
	}{
		{"single", "redis://:pw@127.0.0.1:6379/2", true},
		{"cluster", "redis://:pw@node1:6379?addr=node2:6379&addr=node3:6379", true},
		{"sentinel", "redis://:pw@s1:26379?addr=s2:26379&master_name=mymaster", true},
		{"sentinel", "redis://:pw@s1:26379", false},
		{"cluster", "redis://node1:6379?bogus=1", false},
	} {
		t.Run(c.mode+" "+c.url, func(t *testing.T) {
			cfg, err := config.Load(env(map[string]string{"SLUICE_REDIS_MODE": c.mode, "SLUICE_REDIS_URL": c.url}))
			if !c.ok {
				require.ErrorContains(t, err, "SLUICE_REDIS_URL")
				return
			}
			require.NoError(t, err)
			rdb, err := cfg.Redis()
			require.NoError(t, err)
			require.NoError(t, rdb.Close())
		})
	}
}
