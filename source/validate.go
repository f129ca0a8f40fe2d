package source

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// DefaultMaxWorkers bounds pub_sub.workers when Validate is given 0.
const DefaultMaxWorkers = 64

var (
	sourceTypes   = []string{TypeHTTP, TypeRestAPI, TypePubSub, TypeDBChangeStream}
	providers     = []string{"github", "twitter", "shopify"}
	verifierTypes = []string{"noop", "hmac", "basic_auth", "api_key"}
	pubSubTypes   = []string{PubSubSQS, PubSubGoogle, PubSubKafka, PubSubAMQP}
	hashes        = []string{"SHA256", "SHA512"}
	encodings     = []string{"base64", "hex"}
	kafkaAuths    = []string{"plain", "scram"}
	amqpSchemas   = []string{"amqp", "amqps"}

	idempotencyKeyRE = regexp.MustCompile(`^request\.((header|query)\.[^.\s]+|body(\.[^.\s]+)+)$`)
)

// Normalize fills defaults that are part of the stored definition: a
// missing verifier is noop, an AMQP vhost is "/", absent lists are empty.
func (s *Source) Normalize() {
	if s.Verifier == nil || s.Verifier.Type == "" && s.Verifier.HMac == nil && s.Verifier.BasicAuth == nil && s.Verifier.APIKey == nil {
		s.Verifier = &Verifier{Type: "noop"}
	}
	if s.PubSub != nil && s.PubSub.AMQP != nil && s.PubSub.AMQP.Vhost == "" {
		s.PubSub.AMQP.Vhost = "/"
	}
	if s.ForwardHeaders == nil {
		s.ForwardHeaders = []string{}
	}
	if s.IdempotencyKeys == nil {
		s.IdempotencyKeys = []string{}
	}
	if s.Provider == "twitter" && s.ProviderConfig == nil {
		s.ProviderConfig = &ProviderConfig{Twitter: &TwitterProviderConfig{}}
	}
}

// Validate reports every problem of the definition at once (errors.Join of
// *FieldError, each naming its JSON path). maxWorkers bounds pub_sub.workers
// (DefaultMaxWorkers when 0).
func (s *Source) Validate(maxWorkers int) error {
	if maxWorkers <= 0 {
		maxWorkers = DefaultMaxWorkers
	}
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, fieldErr(path, format, args...)) }
	oneOf := func(path, v string, allowed []string) {
		if !slices.Contains(allowed, v) {
			if v == "" {
				add(path, "is required; one of %s", strings.Join(allowed, ", "))
			} else {
				add(path, "must be one of %s, got %q", strings.Join(allowed, ", "), v)
			}
		}
	}
	required := func(path, v string) {
		if strings.TrimSpace(v) == "" {
			add(path, "is required")
		}
	}

	required("name", s.Name)
	if len(s.Name) > 256 {
		add("name", "must be at most 256 characters")
	}
	oneOf("type", s.Type, sourceTypes)
	if s.Provider != "" {
		oneOf("provider", s.Provider, providers)
		if s.Verifier == nil || s.Verifier.HMac == nil || s.Verifier.HMac.Secret == "" {
			add("verifier.hmac.secret", "is required for provider %q", s.Provider)
		}
	}
	if v := s.Verifier; v != nil {
		oneOf("verifier.type", v.Type, verifierTypes)
		switch v.Type {
		case "hmac":
			if v.HMac == nil {
				add("verifier.hmac", "is required for verifier type hmac")
				break
			}
			required("verifier.hmac.header", v.HMac.Header)
			required("verifier.hmac.secret", v.HMac.Secret)
			oneOf("verifier.hmac.hash", v.HMac.Hash, hashes)
			oneOf("verifier.hmac.encoding", v.HMac.Encoding, encodings)
		case "basic_auth":
			if v.BasicAuth == nil {
				add("verifier.basic_auth", "is required for verifier type basic_auth")
				break
			}
			required("verifier.basic_auth.username", v.BasicAuth.Username)
			required("verifier.basic_auth.password", v.BasicAuth.Password)
		case "api_key":
			if v.APIKey == nil {
				add("verifier.api_key", "is required for verifier type api_key")
				break
			}
			required("verifier.api_key.header_name", v.APIKey.HeaderName)
			required("verifier.api_key.header_value", v.APIKey.HeaderValue)
		}
	}
	for i, k := range s.IdempotencyKeys {
		if !idempotencyKeyRE.MatchString(k) {
			add(fmt.Sprintf("idempotency_keys[%d]", i), "must look like request.header.X, request.body.a.b or request.query.x, got %q", k)
		}
	}
	for i, h := range s.ForwardHeaders {
		if strings.TrimSpace(h) == "" {
			add(fmt.Sprintf("forward_headers[%d]", i), "must not be empty")
		}
	}
	if s.Type == TypePubSub && s.PubSub == nil {
		add("pub_sub", "is required for type pub_sub")
	}
	if s.PubSub != nil {
		errs = append(errs, s.PubSub.validate(maxWorkers)...)
	}
	return errors.Join(errs...)
}

func (p *PubSub) validate(maxWorkers int) []error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, fieldErr(path, format, args...)) }
	required := func(path, v string) {
		if strings.TrimSpace(v) == "" {
			add(path, "is required")
		}
	}
	if p.Workers < 1 || p.Workers > maxWorkers {
		add("pub_sub.workers", "must be between 1 and %d, got %d", maxWorkers, p.Workers)
	}
	missing := func(block string) { add("pub_sub."+block, "is required for pub_sub.type %s", block) }
	switch p.Type {
	case PubSubSQS:
		q := p.SQS
		if q == nil {
			missing("sqs")
			break
		}
		if (q.AccessKeyID == "") != (q.SecretKey == "") {
			add("pub_sub.sqs.secret_key", "access_key_id and secret_key must both be set or both be empty (default credential chain)")
		}
		required("pub_sub.sqs.default_region", q.DefaultRegion)
		required("pub_sub.sqs.queue_name", q.QueueName)
		if q.Endpoint != "" {
			if u, err := url.Parse(q.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				add("pub_sub.sqs.endpoint", "must be an http(s) URL, got %q", q.Endpoint)
			}
		}
	case PubSubGoogle:
		g := p.Google
		if g == nil {
			missing("google")
			break
		}
		required("pub_sub.google.project_id", g.ProjectID)
		required("pub_sub.google.subscription_id", g.SubscriptionID)
		if len(g.ServiceAccount) == 0 {
			add("pub_sub.google.service_account", "is required")
		} else if b := bytes.TrimSpace(g.ServiceAccount); len(b) == 0 || b[0] != '{' || !json.Valid(b) {
			add("pub_sub.google.service_account", "must decode to a JSON object")
		}
	case PubSubKafka:
		k := p.Kafka
		if k == nil {
			missing("kafka")
			break
		}
		if len(k.Brokers) == 0 {
			add("pub_sub.kafka.brokers", "at least one broker is required")
		}
		for i, b := range k.Brokers {
			if err := hostPort(b); err != nil {
				add(fmt.Sprintf("pub_sub.kafka.brokers[%d]", i), "must be host:port: %v", err)
			}
		}
		required("pub_sub.kafka.topic_name", k.TopicName)
		if a := k.Auth; a != nil {
			if a.Type != "" {
				oneOf := slices.Contains(kafkaAuths, a.Type)
				if !oneOf {
					add("pub_sub.kafka.auth.type", "must be one of plain, scram (or empty for TLS only), got %q", a.Type)
				}
				if a.Type == "scram" && !slices.Contains(hashes, a.Hash) {
					add("pub_sub.kafka.auth.hash", "must be one of SHA256, SHA512 for scram, got %q", a.Hash)
				}
				required("pub_sub.kafka.auth.username", a.Username)
				required("pub_sub.kafka.auth.password", a.Password)
			} else if !a.TLS {
				add("pub_sub.kafka.auth.type", "is required unless tls is true")
			}
			if a.CACert != "" {
				if !a.TLS {
					add("pub_sub.kafka.auth.ca_cert", "needs tls: true")
				}
				if !x509.NewCertPool().AppendCertsFromPEM([]byte(a.CACert)) {
					add("pub_sub.kafka.auth.ca_cert", "must hold at least one PEM certificate")
				}
			}
		}
	case PubSubAMQP:
		a := p.AMQP
		if a == nil {
			missing("amqp")
			break
		}
		if !slices.Contains(amqpSchemas, a.Schema) {
			add("pub_sub.amqp.schema", "must be one of amqp, amqps, got %q", a.Schema)
		}
		required("pub_sub.amqp.host", a.Host)
		if n, err := strconv.Atoi(a.Port); err != nil || n < 1 || n > 65535 {
			add("pub_sub.amqp.port", "must be a port number 1..65535, got %q", a.Port)
		}
		required("pub_sub.amqp.queue", a.Queue)
		if a.Auth != nil {
			required("pub_sub.amqp.auth.user", a.Auth.User)
		}
		if a.BindExchange != nil {
			required("pub_sub.amqp.bindExchange.exchange", a.BindExchange.Exchange)
		}
	case "":
		add("pub_sub.type", "is required; one of %s", strings.Join(pubSubTypes, ", "))
	default:
		add("pub_sub.type", "must be one of %s, got %q", strings.Join(pubSubTypes, ", "), p.Type)
	}
	return errs
}

func hostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("empty host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q out of range 1..65535", port)
	}
	return nil
}
