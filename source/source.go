// Package source holds sluice's source definitions: the model (JSON-compatible
// with Convoy's source API), its validation and the Redis Store that keeps it.
//
// A Source's JSON is the response shape of Convoy's API; that is also what the
// Store writes to Redis. Requests are decoded into an Input (DecodeInput) and
// applied to a Source, so create and partial update share one code path.
package source

import (
	"encoding/json"
	"time"
)

// Source types (Source.Type).
const (
	TypeHTTP           = "http"
	TypeRestAPI        = "rest_api"
	TypePubSub         = "pub_sub"
	TypeDBChangeStream = "db_change_stream"
)

// Pub/sub kinds (PubSub.Type).
const (
	PubSubSQS    = "sqs"
	PubSubGoogle = "google"
	PubSubKafka  = "kafka"
	PubSubAMQP   = "amqp"
)

// Source is one source definition as stored and as returned by the API.
type Source struct {
	UID               string          `json:"uid"`
	MaskID            string          `json:"mask_id"`
	ProjectID         string          `json:"project_id"`
	Name              string          `json:"name"`
	Type              string          `json:"type"`
	URL               string          `json:"url"`
	Provider          string          `json:"provider"`
	IsDisabled        bool            `json:"is_disabled"`
	Verifier          *Verifier       `json:"verifier"`
	CustomResponse    CustomResponse  `json:"custom_response"`
	ProviderConfig    *ProviderConfig `json:"provider_config"`
	ForwardHeaders    []string        `json:"forward_headers"`
	IdempotencyKeys   []string        `json:"idempotency_keys"`
	PubSub            *PubSub         `json:"pub_sub"`
	EventTypeLocation string          `json:"event_type_location,omitempty"`
	BodyFunction      *string         `json:"body_function,omitempty"`
	HeaderFunction    *string         `json:"header_function,omitempty"`
	// Revision is bumped by every write; the supervisor compares it.
	Revision  int64      `json:"revision"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
	DeletedAt *time.Time `json:"deleted_at"`
}

// Verifier verifies webhook events ingested by HTTP sources.
type Verifier struct {
	Type      string     `json:"type"` // noop | hmac | basic_auth | api_key
	HMac      *HMac      `json:"hmac"`
	BasicAuth *BasicAuth `json:"basic_auth"`
	APIKey    *APIKey    `json:"api_key"`
}

// HMac is the hmac verifier's configuration.
type HMac struct {
	Header   string `json:"header"`
	Hash     string `json:"hash"`     // SHA256 | SHA512
	Secret   string `json:"secret"`   //
	Encoding string `json:"encoding"` // base64 | hex
}

// BasicAuth is the basic_auth verifier's configuration.
type BasicAuth struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// APIKey is the api_key verifier's configuration.
type APIKey struct {
	HeaderName  string `json:"header_name"`
	HeaderValue string `json:"header_value"`
}

// CustomResponse is the response an HTTP source answers ingest requests with.
type CustomResponse struct {
	Body        string `json:"body"`
	ContentType string `json:"content_type"`
}

// ProviderConfig holds provider-specific state (only twitter has any).
type ProviderConfig struct {
	Twitter *TwitterProviderConfig `json:"twitter"`
}

// TwitterProviderConfig records when the twitter CRC check last passed.
type TwitterProviderConfig struct {
	CrcVerifiedAt *time.Time `json:"crc_verified_at"`
}

// PubSub is a source's message broker configuration.
type PubSub struct {
	Type    string  `json:"type"` // sqs | google | kafka | amqp
	Workers int     `json:"workers"`
	SQS     *SQS    `json:"sqs,omitempty"`
	Google  *Google `json:"google,omitempty"`
	Kafka   *Kafka  `json:"kafka,omitempty"`
	AMQP    *AMQP   `json:"amqp,omitempty"`
}

// SQS configures an AWS SQS consumer. Empty AccessKeyID and SecretKey mean
// the SDK's default credential chain.
type SQS struct {
	AccessKeyID   string `json:"access_key_id"`
	SecretKey     string `json:"secret_key"`
	DefaultRegion string `json:"default_region"`
	QueueName     string `json:"queue_name"`
	// Endpoint overrides the SQS endpoint (emulators, VPC endpoints).
	// Extension; empty means AWS's regional endpoint.
	Endpoint string `json:"endpoint,omitempty"`
}

// Google configures a Google Pub/Sub consumer.
type Google struct {
	ProjectID      string `json:"project_id"`
	SubscriptionID string `json:"subscription_id"`
	// ServiceAccount is the service account's JSON key.
	ServiceAccount []byte `json:"service_account"`
}

// Kafka configures a Kafka consumer.
type Kafka struct {
	Brokers         []string   `json:"brokers"`
	ConsumerGroupID string     `json:"consumer_group_id"`
	TopicName       string     `json:"topic_name"`
	Auth            *KafkaAuth `json:"auth,omitempty"`
}

// KafkaAuth configures SASL and TLS for Kafka. Type empty with TLS true means
// TLS without SASL.
type KafkaAuth struct {
	Type     string `json:"type"` // plain | scram | "" (no SASL)
	Hash     string `json:"hash"` // SHA256 | SHA512, scram only
	Username string `json:"username"`
	Password string `json:"password"`
	TLS      bool   `json:"tls"`
	// CACert is a PEM bundle of CAs to trust for TLS instead of the system
	// pool. Extension; optional.
	CACert string `json:"ca_cert,omitempty"`
}

// AMQP configures a RabbitMQ (AMQP 0.9.1) consumer. On the wire the request
// carries bindExchange{exchange,routingKey}; the response and the stored form
// carry bindedExchange and routingKey (Convoy's shapes).
type AMQP struct {
	Schema             string
	Host               string
	Port               string
	Queue              string
	Vhost              string // extension, default "/"
	DeadLetterExchange string
	Auth               *AMQPAuth
	BindExchange       *BindExchange
}

// AMQPAuth is the AMQP user and password.
type AMQPAuth struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// BindExchange binds the queue to an exchange with a routing key.
type BindExchange struct {
	Exchange   string `json:"exchange"`
	RoutingKey string `json:"routingKey"`
}

// amqpWire is AMQP's response and storage shape (BindExchange nil), and
// also accepts the request shape (bindExchange) when decoding.
type amqpWire struct {
	Schema             string    `json:"schema"`
	Host               string    `json:"host"`
	Port               string    `json:"port"`
	Queue              string    `json:"queue"`
	Vhost              string    `json:"vhost"`
	DeadLetterExchange string    `json:"deadLetterExchange"`
	Auth               *AMQPAuth `json:"auth"`
	BindedExchange     *string   `json:"bindedExchange"`
	RoutingKey         string    `json:"routingKey"`
	// BindExchange is the request shape; never written.
	BindExchange *BindExchange `json:"bindExchange,omitempty"`
}

// MarshalJSON writes the response shape (bindedExchange + routingKey).
func (a AMQP) MarshalJSON() ([]byte, error) {
	r := amqpWire{
		Schema: a.Schema, Host: a.Host, Port: a.Port, Queue: a.Queue, Vhost: a.Vhost,
		DeadLetterExchange: a.DeadLetterExchange, Auth: a.Auth,
	}
	if a.BindExchange != nil {
		r.BindedExchange = &a.BindExchange.Exchange
		r.RoutingKey = a.BindExchange.RoutingKey
	}
	return json.Marshal(r)
}

// UnmarshalJSON reads the request shape (bindExchange object) or the
// response shape (bindedExchange + routingKey), rejecting unknown fields and
// a mix of both.
func (a *AMQP) UnmarshalJSON(b []byte) error {
	var in amqpWire
	if err := strictUnmarshal(b, &in, "pub_sub.amqp"); err != nil {
		return err
	}
	*a = AMQP{
		Schema: in.Schema, Host: in.Host, Port: in.Port, Queue: in.Queue, Vhost: in.Vhost,
		DeadLetterExchange: in.DeadLetterExchange, Auth: in.Auth, BindExchange: in.BindExchange,
	}
	if in.BindExchange != nil && (in.BindedExchange != nil || in.RoutingKey != "") {
		return fieldErr("pub_sub.amqp.bindExchange", "give either bindExchange or bindedExchange/routingKey, not both")
	}
	if in.BindedExchange != nil {
		a.BindExchange = &BindExchange{Exchange: *in.BindedExchange, RoutingKey: in.RoutingKey}
	} else if in.RoutingKey != "" {
		return fieldErr("pub_sub.amqp.routingKey", "needs bindedExchange")
	}
	return nil
}

// MarshalJSON writes service_account as an array of byte values (the seed's
// shape; Go clients decode it into []byte as well).
func (g Google) MarshalJSON() ([]byte, error) {
	sa := make([]int, len(g.ServiceAccount))
	for i, c := range g.ServiceAccount {
		sa[i] = int(c)
	}
	return json.Marshal(struct {
		ProjectID      string `json:"project_id"`
		SubscriptionID string `json:"subscription_id"`
		ServiceAccount []int  `json:"service_account"`
	}{g.ProjectID, g.SubscriptionID, sa})
}

// UnmarshalJSON accepts service_account as a base64 string, a raw JSON
// object or an array of byte values.
func (g *Google) UnmarshalJSON(b []byte) error {
	var in struct {
		ProjectID      string          `json:"project_id"`
		SubscriptionID string          `json:"subscription_id"`
		ServiceAccount json.RawMessage `json:"service_account"`
	}
	if err := strictUnmarshal(b, &in, "pub_sub.google"); err != nil {
		return err
	}
	sa, err := decodeServiceAccount(in.ServiceAccount)
	if err != nil {
		return err
	}
	*g = Google{ProjectID: in.ProjectID, SubscriptionID: in.SubscriptionID, ServiceAccount: sa}
	return nil
}
