package amqp

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-io/sluice/broker"
)

func TestURLRoundTrips(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want amqp091.URI
	}{
		{
			name: "defaults",
			cfg:  Config{Host: "rabbit", Queue: "q"},
			want: amqp091.URI{Scheme: "amqp", Host: "rabbit", Port: 5672, Username: "guest", Password: "guest", Vhost: "/"},
		},
		{
			name: "special password",
			cfg:  Config{Host: "rabbit", User: "u@x:y", Password: `p@ss:w/rd 100% #?&=+\`, Queue: "q"},
			want: amqp091.URI{Scheme: "amqp", Host: "rabbit", Port: 5672, Username: "u@x:y", Password: `p@ss:w/rd 100% #?&=+\`, Vhost: "/"},
		},
		{
			name: "vhost with slash and space",
			cfg:  Config{Host: "10.0.0.1", Port: "5673", Vhost: "team/a b%", User: "u", Password: "s3cret", Queue: "q"},
			want: amqp091.URI{Scheme: "amqp", Host: "10.0.0.1", Port: 5673, Username: "u", Password: "s3cret", Vhost: "team/a b%"},
		},
		{
			name: "amqps default port",
			cfg:  Config{Schema: "AMQPS", Host: "mq.example.com", Vhost: "prod", Queue: "q"},
			want: amqp091.URI{Scheme: "amqps", Host: "mq.example.com", Port: 5671, Username: "guest", Password: "guest", Vhost: "prod"},
		},
		{
			name: "ipv6",
			cfg:  Config{Host: "::1", User: "u", Password: "s3cret", Queue: "q"},
			want: amqp091.URI{Scheme: "amqp", Host: "::1", Port: 5672, Username: "u", Password: "s3cret", Vhost: "/"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			u := tc.cfg.URL()
			got, err := amqp091.ParseURI(u.String())
			if err != nil {
				t.Fatalf("ParseURI(%s): %v", u.Redacted(), err)
			}
			got = amqp091.URI{Scheme: got.Scheme, Host: got.Host, Port: got.Port, Username: got.Username, Password: got.Password, Vhost: got.Vhost}
			if diff := cmp.Diff(tc.want, got, cmpopts.IgnoreFields(amqp091.URI{}, "Heartbeat")); diff != "" {
				t.Errorf("parsed URL (-want +got):\n%s", diff)
			}
			if tc.cfg.Password != "" && strings.Contains(u.Redacted(), tc.cfg.Password) {
				t.Errorf("Redacted %s shows the password", u.Redacted())
			}
		})
	}
}

func TestValidateNamesEveryProblem(t *testing.T) {
	err := Config{Schema: "http", Port: "99999", RoutingKey: "k", Prefetch: -1}.Validate()
	if err == nil {
		t.Fatal("Validate = nil")
	}
	for _, want := range []string{"schema", "host is required", "port", "queue is required", "routing key", "prefetch"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %q, want it to mention %q", err, want)
		}
	}
	if err := (Config{Host: "amqp://guest:guest@h", Queue: "q"}).Validate(); err == nil || !strings.Contains(err.Error(), "not a URL") {
		t.Errorf("Validate with a URL as host = %v", err)
	}
	if err := (Config{Host: "rabbit:5672", Queue: "q"}).Validate(); err == nil || !strings.Contains(err.Error(), "port in port") {
		t.Errorf("Validate with host:port as host = %v", err)
	}
}

func TestDefaults(t *testing.T) {
	got := Config{Host: "h", Queue: "q"}.withDefaults()
	if got.Prefetch != 200 || got.Batch.Size != 100 || got.Batch.Wait != 50*time.Millisecond ||
		got.Heartbeat != 10*time.Second || got.Vhost != "/" || got.Port != "5672" || got.ConnectionName != "sluice" {
		t.Errorf("defaults: %+v", got)
	}
	if got := (Config{Host: "h", Queue: "q", Batch: broker.Batch{Size: 25}}).withDefaults(); got.Prefetch != 50 {
		t.Errorf("prefetch with batch 25 = %d, want 50", got.Prefetch)
	}
}

func TestMessageFromDelivery(t *testing.T) {
	ts := time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC)
	d := amqp091.Delivery{
		MessageId:     "m-1",
		ContentType:   "application/json",
		CorrelationId: "corr",
		Exchange:      "ex",
		RoutingKey:    "rk",
		Timestamp:     ts,
		Body:          []byte(`{}`),
		Headers: amqp091.Table{
			"x-convoy-message-type": "fanout",
			"int":                   int32(-7),
			"long":                  int64(1 << 40),
			"bool":                  true,
			"bytes":                 []byte("raw"),
			"float":                 1.5,
			"time":                  ts,
			"decimal":               amqp091.Decimal{Scale: 2, Value: -5},
			"table":                 amqp091.Table{"a": []byte("b"), "n": int16(3)},
			"array":                 []any{"x", int32(1)},
			"void":                  nil,
			"x-amqp-routing-key":    "header wins",
		},
	}
	m := message(d)
	want := map[string]string{
		"x-convoy-message-type": "fanout",
		"int":                   "-7",
		"long":                  "1099511627776",
		"bool":                  "true",
		"bytes":                 "raw",
		"float":                 "1.5",
		"time":                  "2026-11-27T05:00:00Z",
		"decimal":               "-0.05",
		"table":                 `{"a":"b","n":3}`,
		"array":                 `["x",1]`,
		"void":                  "",
		"x-amqp-content-type":   "application/json",
		"x-amqp-correlation-id": "corr",
		"x-amqp-exchange":       "ex",
		"x-amqp-routing-key":    "header wins",
	}
	if diff := cmp.Diff(want, m.Headers); diff != "" {
		t.Errorf("headers (-want +got):\n%s", diff)
	}
	if m.ID != "m-1" || !m.PublishedAt.Equal(ts) || string(m.Body) != "{}" {
		t.Errorf("message = %+v", m)
	}
	if m := message(amqp091.Delivery{}); m.ID != "" || !m.PublishedAt.IsZero() || len(m.Headers) != 0 {
		t.Errorf("empty delivery = %+v", m)
	}
}
