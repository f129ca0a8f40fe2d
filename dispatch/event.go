// Package dispatch is where sluice's delivery guarantees live: it decodes a
// broker message into a dispatch event (Convoy's pub/sub message contract),
// appends events to the Redis Stream a webhook delivery system reads, once per
// (source, broker message identity) within a dedupe window, records malformed
// messages in a dead-letter stream, tells workers when to stop fetching
// (backpressure) and offers a consumer-group reader for downstream systems.
//
// It imports nothing of sluice: the supervisor adapts a broker message into a
// Raw and hands the decoded Event to a Queue.
//
// # Envelope (version 1)
//
// Every dispatch stream entry holds one event as flat stream fields, all
// strings; empty fields are written as empty strings:
//
//	v                  "1", the envelope version; readers reject versions they do not know
//	id                 ULID of the event, made when sluice decoded the message
//	project_id         project of the source
//	source_id          source that consumed the message
//	message_type       "single" | "fanout" | "broadcast"
//	endpoint_id        target endpoint (single)
//	owner_id           target owner (fanout)
//	event_type         event type, never empty
//	data               the message's "data" value: the raw JSON bytes exactly as published, never re-encoded
//	headers            JSON object of string to string: broker headers and custom_headers, keys lower-cased,
//	                   broker headers win, plus x-broker-message-id
//	idempotency_key    the message's idempotency_key, if any
//	broker             kafka | amqp | sqs | google
//	broker_message_id  the broker's identity of the message (Kafka topic/partition/offset, SQS MessageId,
//	                   Pub/Sub message ID, AMQP message-id); empty when the broker offers none
//	received_at        when sluice received the message, RFC 3339 with nanoseconds, UTC
//
// Event's JSON form (what `sluice tail` prints) has the same names, with data
// inlined as JSON, headers as an object and v as a number.
package dispatch

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"
)

// Version is the envelope version this package writes and reads.
const Version = 1

// Message types of Convoy's pub/sub contract (header x-convoy-message-type).
const (
	TypeSingle    = "single"
	TypeFanout    = "fanout"
	TypeBroadcast = "broadcast"
)

// Header names the decoder reads or sets.
const (
	HeaderMessageType     = "x-convoy-message-type"
	HeaderBrokerMessageID = "x-broker-message-id"
)

// DefaultMaxBodyBytes is the default body size limit of Decode.
const DefaultMaxBodyBytes = 1 << 20

// Raw is one broker message as the supervisor hands it to Decode or to
// Queue.DeadLetter.
type Raw struct {
	ProjectID string
	SourceID  string
	// Broker is the source's broker kind: kafka, amqp, sqs or google.
	Broker string
	// MessageID is the broker's identity of the message, stable across
	// redeliveries; empty when the broker offers none (no dedupe then).
	MessageID string
	Body      []byte
	// Headers are the broker's headers or attributes as delivered.
	Headers map[string]string
	// ReceivedAt is when sluice received the message; Decode uses the current
	// time when it is zero.
	ReceivedAt time.Time
}

// Event is one decoded message: the dispatch envelope. See the package
// documentation for its stream form.
type Event struct {
	V               int               `json:"v"`
	ID              string            `json:"id"`
	ProjectID       string            `json:"project_id"`
	SourceID        string            `json:"source_id"`
	MessageType     string            `json:"message_type"`
	EndpointID      string            `json:"endpoint_id"`
	OwnerID         string            `json:"owner_id"`
	EventType       string            `json:"event_type"`
	Data            json.RawMessage   `json:"data"`
	Headers         map[string]string `json:"headers"`
	IdempotencyKey  string            `json:"idempotency_key"`
	Broker          string            `json:"broker"`
	BrokerMessageID string            `json:"broker_message_id"`
	ReceivedAt      time.Time         `json:"received_at"`
}

// DecodeOptions tune Decode.
type DecodeOptions struct {
	// MaxBodyBytes is the largest body accepted; a larger one is a permanent
	// error. Default 1 MiB (DefaultMaxBodyBytes).
	MaxBodyBytes int
}

// PermanentError reports a message that can never be dispatched as it is: it
// belongs in the dead letter, and retrying it is pointless.
type PermanentError struct {
	// Reason says what is wrong, naming the field, e.g. "event_type is required".
	Reason string
}

func (e *PermanentError) Error() string { return "malformed message: " + e.Reason }

// IsPermanent reports whether err (or an error it wraps) is a
// *PermanentError. Every other error from this package is transient.
func IsPermanent(err error) bool {
	var pe *PermanentError
	return errors.As(err, &pe)
}

// body is Convoy's pub/sub message body. Fields are raw so that a wrong JSON
// type is reported by field name and data keeps its exact bytes.
type body struct {
	EndpointID     json.RawMessage `json:"endpoint_id"`
	OwnerID        json.RawMessage `json:"owner_id"`
	EventType      json.RawMessage `json:"event_type"`
	Data           json.RawMessage `json:"data"`
	CustomHeaders  json.RawMessage `json:"custom_headers"`
	IdempotencyKey json.RawMessage `json:"idempotency_key"`
}

var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// Decode turns a raw broker message into an event per Convoy's pub/sub
// format. A malformed message yields a *PermanentError whose reason names
// every problem found; a Raw without a source id is a caller bug and yields a
// plain error.
//
// Rules: the body is a UTF-8 JSON object (a leading byte-order mark is
// ignored) of at most MaxBodyBytes; event_type (a non-blank string) and data
// (any JSON value but null) are required; endpoint_id, owner_id and
// idempotency_key are strings or null; custom_headers is an object of strings
// or null; unknown fields are ignored. The broker header x-convoy-message-type
// (any case) is single (the default; needs endpoint_id), fanout (needs
// owner_id) or broadcast. Headers are the custom headers and the broker's,
// keys lower-cased, the broker's winning, and x-broker-message-id set to the
// broker message identity when there is one.
func Decode(raw Raw, opts DecodeOptions) (Event, error) {
	if raw.SourceID == "" {
		return Event{}, errors.New("decode: raw message has no source id")
	}
	limit := cmp.Or(opts.MaxBodyBytes, DefaultMaxBodyBytes)
	if len(raw.Body) > limit {
		return Event{}, &PermanentError{Reason: fmt.Sprintf("body is %d bytes, over the limit of %d bytes", len(raw.Body), limit)}
	}
	b := bytes.TrimPrefix(raw.Body, utf8BOM)
	trimmed := bytes.TrimSpace(b)
	if len(trimmed) == 0 {
		return Event{}, &PermanentError{Reason: "body is empty"}
	}
	if !utf8.Valid(b) {
		return Event{}, &PermanentError{Reason: "body is not valid UTF-8"}
	}
	if trimmed[0] != '{' {
		if !json.Valid(trimmed) {
			return Event{}, &PermanentError{Reason: "body is not valid JSON"}
		}
		return Event{}, &PermanentError{Reason: "body must be a JSON object"}
	}
	var m body
	if err := json.Unmarshal(b, &m); err != nil {
		return Event{}, &PermanentError{Reason: "body is not valid JSON: " + jsonProblem(err)}
	}

	var problems []string
	str := func(field string, v json.RawMessage) string {
		if len(v) == 0 || string(v) == "null" {
			return ""
		}
		var s string
		if v[0] != '"' || json.Unmarshal(v, &s) != nil {
			problems = append(problems, field+" must be a string")
			return ""
		}
		return s
	}
	ev := Event{
		V:               Version,
		ProjectID:       raw.ProjectID,
		SourceID:        raw.SourceID,
		EndpointID:      str("endpoint_id", m.EndpointID),
		OwnerID:         str("owner_id", m.OwnerID),
		EventType:       str("event_type", m.EventType),
		IdempotencyKey:  str("idempotency_key", m.IdempotencyKey),
		Broker:          raw.Broker,
		BrokerMessageID: raw.MessageID,
		ReceivedAt:      raw.ReceivedAt.UTC(),
	}
	if strings.TrimSpace(ev.EventType) == "" && !hasProblem(problems, "event_type") {
		problems = append(problems, "event_type is required")
	}
	if len(m.Data) == 0 || string(m.Data) == "null" {
		problems = append(problems, "data is required")
	} else {
		ev.Data = m.Data
	}

	var custom map[string]string
	if len(m.CustomHeaders) > 0 && string(m.CustomHeaders) != "null" {
		if m.CustomHeaders[0] != '{' {
			problems = append(problems, "custom_headers must be an object of strings")
		} else if err := json.Unmarshal(m.CustomHeaders, &custom); err != nil {
			problems = append(problems, "custom_headers must be an object of strings: "+jsonProblem(err))
		}
	}

	ev.Headers = make(map[string]string, len(custom)+len(raw.Headers)+1)
	for k, v := range custom {
		ev.Headers[strings.ToLower(k)] = v
	}
	mergeLower(ev.Headers, raw.Headers)
	if raw.MessageID != "" {
		ev.Headers[HeaderBrokerMessageID] = raw.MessageID
	}

	mt := strings.ToLower(strings.TrimSpace(headerValue(raw.Headers, HeaderMessageType)))
	switch mt {
	case "", TypeSingle:
		ev.MessageType = TypeSingle
		if strings.TrimSpace(ev.EndpointID) == "" && !hasProblem(problems, "endpoint_id") {
			problems = append(problems, "endpoint_id is required for message type single")
		}
	case TypeFanout:
		ev.MessageType = TypeFanout
		if strings.TrimSpace(ev.OwnerID) == "" && !hasProblem(problems, "owner_id") {
			problems = append(problems, "owner_id is required for message type fanout")
		}
	case TypeBroadcast:
		ev.MessageType = TypeBroadcast
	default:
		problems = append(problems, fmt.Sprintf("%s must be single, fanout or broadcast, got %q", HeaderMessageType, mt))
	}

	if len(problems) > 0 {
		return Event{}, &PermanentError{Reason: strings.Join(problems, "; ")}
	}
	if ev.ReceivedAt.IsZero() {
		ev.ReceivedAt = time.Now().UTC()
	}
	ev.ID = ulid.Make().String()
	return ev, nil
}

// mergeLower copies src into dst with lower-cased keys. When src holds the
// same name in several cases, the already lower-case spelling wins, so the
// result does not depend on map order.
func mergeLower(dst, src map[string]string) {
	for k, v := range src {
		lk := strings.ToLower(k)
		if lk != k {
			if _, exact := src[lk]; exact {
				continue
			}
		}
		dst[lk] = v
	}
}

// headerValue looks name (lower case) up in h ignoring case, preferring an
// exact match.
func headerValue(h map[string]string, name string) string {
	if v, ok := h[name]; ok {
		return v
	}
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

func hasProblem(problems []string, field string) bool {
	for _, p := range problems {
		if strings.HasPrefix(p, field+" ") {
			return true
		}
	}
	return false
}

// jsonProblem renders a JSON error without the Go type names encoding/json
// puts in them.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%s at offset %d", se.Error(), se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			return fmt.Sprintf("%s has a JSON %s", te.Field, te.Value)
		}
		return "found a JSON " + te.Value
	}
	return err.Error()
}
