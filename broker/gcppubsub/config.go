package gcppubsub

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/api/option"

	"github.com/sluice-io/sluice/broker"
)

// Config configures one Consumer (one worker of a source).
type Config struct {
	// ProjectID is the Google Cloud project of the subscription. Required.
	ProjectID string
	// SubscriptionID is the subscription to consume: its ID within ProjectID
	// or its full name "projects/<p>/subscriptions/<s>". Required.
	SubscriptionID string
	// ServiceAccount is a service account's JSON key. Default empty: the
	// Application Default Credentials of the host (GOOGLE_APPLICATION_CREDENTIALS,
	// the metadata server, ...). Ignored when an emulator is used (Endpoint
	// or PUBSUB_EMULATOR_HOST): emulators take no credentials.
	ServiceAccount []byte
	// Endpoint is the host:port of a Pub/Sub emulator (such as pstest),
	// dialled over plain gRPC without credentials. Default empty: the
	// PUBSUB_EMULATOR_HOST environment variable when it is set (the client
	// library then does the same), else Google's Pub/Sub endpoint over TLS.
	Endpoint string
	// Streams is how many StreamingPull streams the consumer keeps open
	// (the subscriber's NumGoroutines). Default 1.
	Streams int
	// MaxOutstandingMessages bounds the messages received but not yet acked
	// or nacked, across the consumer's streams (flow control). Default 1000.
	MaxOutstandingMessages int
	// MaxOutstandingBytes bounds their payload bytes. Default 64 MiB.
	MaxOutstandingBytes int
	// AckExtension is the longest a received message is leased at a time
	// (the subscriber's MaxDurationPerAckExtension, 10s to 600s): messages
	// held through a Handler pause are extended by this much again and
	// again, and messages of a consumer that died are redelivered after at
	// most this long. Default 10s.
	AckExtension time.Duration
	// Batch bounds the batches handed to the Handler. Default 100 messages
	// or 50ms (broker.Batch defaults).
	Batch broker.Batch
	// Backoff paces the pause after a batch the Handler failed (the batch is
	// nacked at once). Default 100ms doubling to 30s (broker.Backoff defaults).
	Backoff broker.Backoff
	// ConnectTimeout bounds the subscription check Run makes before it
	// starts receiving. Default 30s.
	ConnectTimeout time.Duration

	// clientOptions are appended to the client options Run builds (tests:
	// a TLS endpoint with a private CA).
	clientOptions []option.ClientOption
}

const (
	defaultStreams                = 1
	defaultMaxOutstandingMessages = 1000
	defaultMaxOutstandingBytes    = 64 << 20
	defaultConnectTimeout         = 30 * time.Second
	defaultAckExtension           = 10 * time.Second
)

// withDefaults returns c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	c.Streams = cmp.Or(c.Streams, defaultStreams)
	c.MaxOutstandingMessages = cmp.Or(c.MaxOutstandingMessages, defaultMaxOutstandingMessages)
	c.MaxOutstandingBytes = cmp.Or(c.MaxOutstandingBytes, defaultMaxOutstandingBytes)
	c.ConnectTimeout = cmp.Or(c.ConnectTimeout, defaultConnectTimeout)
	c.AckExtension = cmp.Or(c.AckExtension, defaultAckExtension)
	c.Batch = c.Batch.WithDefaults()
	return c
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if strings.TrimSpace(c.ProjectID) == "" {
		errs = append(errs, errors.New("project_id is required"))
	}
	if strings.TrimSpace(c.SubscriptionID) == "" {
		errs = append(errs, errors.New("subscription_id is required"))
	}
	if c.Streams < 0 {
		errs = append(errs, fmt.Errorf("streams must not be negative, got %d", c.Streams))
	}
	if c.MaxOutstandingMessages < 0 {
		errs = append(errs, fmt.Errorf("max outstanding messages must not be negative (flow control stays bounded), got %d", c.MaxOutstandingMessages))
	}
	if c.MaxOutstandingBytes < 0 {
		errs = append(errs, fmt.Errorf("max outstanding bytes must not be negative (flow control stays bounded), got %d", c.MaxOutstandingBytes))
	}
	if c.AckExtension != 0 && (c.AckExtension < 10*time.Second || c.AckExtension > 600*time.Second) {
		errs = append(errs, fmt.Errorf("ack extension must be between 10s and 600s, got %s", c.AckExtension))
	}
	if c.ConnectTimeout < 0 {
		errs = append(errs, fmt.Errorf("connect timeout must not be negative, got %s", c.ConnectTimeout))
	}
	if len(c.ServiceAccount) > 0 {
		if err := checkServiceAccount(c.ServiceAccount); err != nil {
			errs = append(errs, fmt.Errorf("service_account: %w", err))
		}
	}
	return errors.Join(errs...)
}

// checkServiceAccount checks that key looks like a service account's JSON
// key. The auth library parses it fully when the client is made; this only
// turns the common mistakes into a message naming the field, and never
// echoes the key.
func checkServiceAccount(key []byte) error {
	var k struct {
		Type        string `json:"type"`
		ClientEmail string `json:"client_email"`
		PrivateKey  string `json:"private_key"`
	}
	if err := json.Unmarshal(key, &k); err != nil {
		return errors.New("not a JSON object")
	}
	var errs []error
	if k.Type != "service_account" {
		errs = append(errs, fmt.Errorf("type is %q, want \"service_account\"", k.Type))
	}
	if k.ClientEmail == "" {
		errs = append(errs, errors.New("client_email is missing"))
	}
	if k.PrivateKey == "" {
		errs = append(errs, errors.New("private_key is missing"))
	}
	return errors.Join(errs...)
}

// subscriptionName is the subscription's full resource name.
func (c Config) subscriptionName() string {
	if strings.HasPrefix(c.SubscriptionID, "projects/") {
		return c.SubscriptionID
	}
	return "projects/" + c.ProjectID + "/subscriptions/" + c.SubscriptionID
}
