package kafka

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/sluice-io/sluice/broker"
)

// SASL mechanisms of Auth.Mechanism.
const (
	MechanismPlain = "plain"
	MechanismSCRAM = "scram"
)

// SCRAM hashes of Auth.Hash.
const (
	HashSHA256 = "SHA256"
	HashSHA512 = "SHA512"
)

// Config configures one Kafka worker: a member of a consumer group reading
// one topic.
type Config struct {
	// Brokers are the bootstrap brokers, host:port. Required.
	Brokers []string
	// Topic is the topic to consume. Required; it must exist.
	Topic string
	// GroupID is the consumer group. Required and not blank: workers of one
	// source share it and split the topic's partitions. Callers without one
	// use DefaultGroupID(sourceID).
	GroupID string
	// Auth configures SASL and TLS. Default: neither.
	Auth Auth
	// ClientID names the client to the brokers; every worker appends a random
	// suffix so it can find its own partitions in the group. Default "sluice".
	ClientID string

	// Batch bounds the batches handed to the Handler. Defaults 100 messages /
	// 50ms (broker.Batch).
	Batch broker.Batch
	// Inflight is how many batches the worker hands to the Handler at once.
	// 1 keeps every partition's messages in order in the dispatch stream.
	// Above 1 the handling of one batch overlaps the write of the previous,
	// and a partition's messages may reach the stream out of order (commits
	// stay in order either way). Default 1.
	Inflight int
	// Backoff spaces the retries of a failing Handle, fetch or commit.
	// Default 100ms doubling up to 5s.
	Backoff broker.Backoff

	// MaxWait is the longest a fetch request waits on the broker for data.
	// Keep it at or below 1s: closing a reader waits for the fetch in flight.
	// Default 500ms.
	MaxWait time.Duration
	// SessionTimeout is how long the group coordinator waits for a silent
	// member before handing its partitions to others. Brokers refuse values
	// below their group.min.session.timeout.ms (6s on Kafka). Default 10s.
	SessionTimeout time.Duration
	// HeartbeatInterval is how often the member heartbeats; it also bounds how
	// fast a member notices a rebalance. Default 3s.
	HeartbeatInterval time.Duration
	// RebalanceTimeout is how long the coordinator waits for members to rejoin
	// during a rebalance. Default 30s.
	RebalanceTimeout time.Duration
	// DialTimeout bounds each connection attempt, TLS and SASL included.
	// Default 10s.
	DialTimeout time.Duration
	// CommitTimeout bounds each offset commit, including the last one when the
	// worker stops. Default 10s.
	CommitTimeout time.Duration
	// LagInterval is how often the worker asks the group for its partitions,
	// their committed offsets and their end offsets (Lag, Partitions).
	// Negative disables it. Default 5s.
	LagInterval time.Duration
}

// Auth configures SASL and TLS.
type Auth struct {
	// Mechanism is the SASL mechanism: "" (no SASL), "plain" or "scram".
	// Default "".
	Mechanism string
	// Hash is the SCRAM hash: "SHA256" or "SHA512". Default "SHA256".
	Hash string
	// Username and Password are the SASL credentials. Required with a
	// Mechanism.
	Username string
	Password string
	// TLS enables TLS, with or without SASL. Default false.
	TLS bool
	// CACert is a PEM bundle of CAs to trust instead of the system pool; only
	// used with TLS. Default "" (system pool).
	CACert string
}

// DefaultGroupID is the consumer group of a source that names none: stable
// across restarts and replicas, so every worker of the source joins one group.
func DefaultGroupID(sourceID string) string {
	return "sluice-" + sourceID
}

// withDefaults returns c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	c.ClientID = cmp.Or(c.ClientID, "sluice")
	c.Batch = c.Batch.WithDefaults()
	c.Inflight = cmp.Or(c.Inflight, 1)
	c.Backoff.Min = cmp.Or(c.Backoff.Min, 100*time.Millisecond)
	c.Backoff.Max = cmp.Or(c.Backoff.Max, 5*time.Second)
	c.MaxWait = cmp.Or(c.MaxWait, 500*time.Millisecond)
	c.SessionTimeout = cmp.Or(c.SessionTimeout, 10*time.Second)
	c.HeartbeatInterval = cmp.Or(c.HeartbeatInterval, 3*time.Second)
	c.RebalanceTimeout = cmp.Or(c.RebalanceTimeout, 30*time.Second)
	c.DialTimeout = cmp.Or(c.DialTimeout, 10*time.Second)
	c.CommitTimeout = cmp.Or(c.CommitTimeout, 10*time.Second)
	c.LagInterval = cmp.Or(c.LagInterval, 5*time.Second)
	if c.Auth.Mechanism == MechanismSCRAM {
		c.Auth.Hash = cmp.Or(strings.ToUpper(c.Auth.Hash), HashSHA256)
	}
	return c
}

// Validate reports every problem of c, each naming its field.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("brokers: at least one broker is required"))
	}
	for i, b := range c.Brokers {
		if _, port, err := net.SplitHostPort(b); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("brokers[%d]: %q is not host:port", i, b))
		}
	}
	if strings.TrimSpace(c.Topic) == "" {
		errs = append(errs, errors.New("topic: required"))
	}
	if strings.TrimSpace(c.GroupID) == "" {
		errs = append(errs, errors.New("group_id: required and not blank"))
	}
	switch c.Auth.Mechanism {
	case "":
	case MechanismPlain, MechanismSCRAM:
		if c.Auth.Username == "" {
			errs = append(errs, errors.New("auth.username: required with SASL"))
		}
		if c.Auth.Password == "" {
			errs = append(errs, errors.New("auth.password: required with SASL"))
		}
	default:
		errs = append(errs, fmt.Errorf("auth.type: %q is not plain or scram", c.Auth.Mechanism))
	}
	if c.Auth.Mechanism == MechanismSCRAM {
		switch strings.ToUpper(c.Auth.Hash) {
		case "", HashSHA256, HashSHA512:
		default:
			errs = append(errs, fmt.Errorf("auth.hash: %q is not SHA256 or SHA512", c.Auth.Hash))
		}
	}
	if c.Auth.CACert != "" {
		if !c.Auth.TLS {
			errs = append(errs, errors.New("auth.ca_cert: only used with auth.tls"))
		} else if _, err := certPool(c.Auth.CACert); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Inflight < 0 {
		errs = append(errs, errors.New("inflight: must not be negative"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"max_wait", c.MaxWait}, {"session_timeout", c.SessionTimeout},
		{"heartbeat_interval", c.HeartbeatInterval}, {"rebalance_timeout", c.RebalanceTimeout},
		{"dial_timeout", c.DialTimeout}, {"commit_timeout", c.CommitTimeout},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative", d.name))
		}
	}
	return errors.Join(errs...)
}

// mechanism returns the SASL mechanism of a, nil for none.
func (a Auth) mechanism() (sasl.Mechanism, error) {
	switch a.Mechanism {
	case MechanismPlain:
		return plain.Mechanism{Username: a.Username, Password: a.Password}, nil
	case MechanismSCRAM:
		algo := scram.SHA256
		if strings.ToUpper(a.Hash) == HashSHA512 {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, a.Username, a.Password)
		if err != nil {
			return nil, fmt.Errorf("auth: scram: %w", err)
		}
		return m, nil
	default:
		return nil, nil
	}
}

// tlsConfig returns the TLS configuration of a, nil without TLS.
func (a Auth) tlsConfig() (*tls.Config, error) {
	if !a.TLS {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.CACert != "" {
		pool, err := certPool(a.CACert)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

func certPool(pem string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(pem)) {
		return nil, errors.New("auth.ca_cert: no PEM certificate found")
	}
	return pool, nil
}

// dialer returns the kafka-go dialer every connection of a worker uses.
func (c Config) dialer(clientID string) (*kafkago.Dialer, error) {
	mech, err := c.Auth.mechanism()
	if err != nil {
		return nil, err
	}
	tlsCfg, err := c.Auth.tlsConfig()
	if err != nil {
		return nil, err
	}
	return &kafkago.Dialer{
		ClientID:      clientID,
		Timeout:       c.DialTimeout,
		DualStack:     true,
		KeepAlive:     30 * time.Second,
		TLS:           tlsCfg,
		SASLMechanism: mech,
	}, nil
}
