package amqp

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-io/sluice/broker"
)

// Config configures one worker's consumer of an AMQP queue.
type Config struct {
	// Schema is "amqp" or "amqps" (TLS verified against the system roots).
	// Default "amqp".
	Schema string
	// Host is the broker's host name or address. Required.
	Host string
	// Port is the broker's port. Default "5672" for amqp, "5671" for amqps.
	Port string
	// Vhost is the virtual host. Default "/".
	Vhost string
	// User and Password authenticate (SASL PLAIN). Any characters are
	// allowed; they are escaped into the URL's userinfo. Default: none in the
	// URL, which the client library turns into guest/guest.
	User     string
	Password string

	// Queue is the queue to consume. It is declared durable (and created when
	// missing); a queue that exists with other arguments is an error. Required.
	Queue string
	// DeadLetterExchange, when set, is declared on the queue as its
	// x-dead-letter-exchange; a Rejected message is nacked without requeue and
	// RabbitMQ routes it there. The exchange must exist. Default: none.
	DeadLetterExchange string
	// BindExchange, when set, is an existing exchange the queue is bound to
	// with RoutingKey. Default: none (no binding is made).
	BindExchange string
	// RoutingKey is the binding key used with BindExchange. Default "".
	RoutingKey string

	// Batch is how deliveries are gathered before Handle. Default Size 100,
	// Wait 50ms (broker.Batch).
	Batch broker.Batch
	// Prefetch is the channel's QoS prefetch count: how many unacked
	// deliveries RabbitMQ sends ahead. Default 2 × Batch.Size, so the next
	// batch arrives while one is being handled.
	Prefetch int
	// Heartbeat is the AMQP heartbeat interval; a dead peer is noticed after
	// about two missed beats. Default 10s.
	Heartbeat time.Duration
	// DialTimeout bounds the TCP connect and the TLS and AMQP handshakes.
	// Default 30s.
	DialTimeout time.Duration
	// ConnectionName is advertised as the connection_name client property
	// (shown by rabbitmqctl list_connections and the management UI).
	// Default "sluice".
	ConnectionName string
	// LagInterval is how often the queue depth for Lag is refreshed with a
	// passive queue declare. Default 5s; negative disables Lag.
	LagInterval time.Duration
	// Reconnect spaces the reconnects after a lost connection and the
	// retries of a batch whose Handle failed. Zero value: broker.Backoff's
	// defaults (100ms doubling to 30s, jittered).
	Reconnect broker.Backoff
}

// withDefaults returns c with its zero fields set to their defaults.
func (c Config) withDefaults() Config {
	c.Schema = cmp.Or(strings.ToLower(c.Schema), "amqp")
	if c.Port == "" {
		c.Port = "5672"
		if c.Schema == "amqps" {
			c.Port = "5671"
		}
	}
	c.Vhost = cmp.Or(c.Vhost, "/")
	c.Batch = c.Batch.WithDefaults()
	c.Prefetch = cmp.Or(c.Prefetch, 2*c.Batch.Size)
	c.Heartbeat = cmp.Or(c.Heartbeat, 10*time.Second)
	c.DialTimeout = cmp.Or(c.DialTimeout, 30*time.Second)
	c.ConnectionName = cmp.Or(c.ConnectionName, "sluice")
	c.LagInterval = cmp.Or(c.LagInterval, 5*time.Second)
	return c
}

// Validate reports every problem of c at once, each naming its field.
func (c Config) Validate() error {
	var errs []error
	switch strings.ToLower(c.Schema) {
	case "", "amqp", "amqps":
	default:
		errs = append(errs, fmt.Errorf("schema %q: must be amqp or amqps", c.Schema))
	}
	if strings.TrimSpace(c.Host) == "" {
		errs = append(errs, errors.New("host is required"))
	} else if strings.ContainsAny(c.Host, "/@?# ") {
		errs = append(errs, fmt.Errorf("host %q: must be a host name or address, not a URL", c.Host))
	} else if strings.Contains(c.Host, ":") && net.ParseIP(c.Host) == nil {
		errs = append(errs, fmt.Errorf("host %q: must be a host name or address; give the port in port", c.Host))
	}
	if c.Port != "" {
		if p, err := strconv.Atoi(c.Port); err != nil || p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("port %q: must be a number from 1 to 65535", c.Port))
		}
	}
	if c.Queue == "" {
		errs = append(errs, errors.New("queue is required"))
	}
	if c.RoutingKey != "" && c.BindExchange == "" {
		errs = append(errs, errors.New("routing key is set but bind exchange is not"))
	}
	if c.Prefetch < 0 {
		errs = append(errs, fmt.Errorf("prefetch %d: must not be negative", c.Prefetch))
	}
	if c.Prefetch > 65535 {
		errs = append(errs, fmt.Errorf("prefetch %d: must be at most 65535", c.Prefetch))
	}
	return errors.Join(errs...)
}

// URL returns the AMQP URL of c: user and password escaped as userinfo, the
// vhost path-escaped (so "/" becomes "%2F"). It holds the password: log only
// its Redacted form.
func (c Config) URL() *url.URL {
	c = c.withDefaults()
	u := &url.URL{
		Scheme:  c.Schema,
		Host:    net.JoinHostPort(c.Host, c.Port),
		Path:    "/" + c.Vhost,
		RawPath: "/" + url.PathEscape(c.Vhost),
	}
	if c.User != "" || c.Password != "" {
		u.User = url.UserPassword(c.User, c.Password)
	}
	return u
}
