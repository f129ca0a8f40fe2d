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
	ev, ok := decodeWellFormed(raw, b)
	if !ok {
		var err error
		if ev, err = decodeGeneral(raw, b); err != nil {
			return Event{}, err
		}
	}
	finish(&ev)
	return ev, nil
}

// decodeGeneral decodes body b (without a byte-order mark) of raw with
// encoding/json, naming every problem it finds. The event it returns has
// neither an id nor a default receive time yet.
func decodeGeneral(raw Raw, b []byte) (Event, error) {
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
	return ev, nil
}

// finish gives a decoded event its id, and its receive time when the broker
// had none.
func finish(ev *Event) {
	if ev.ReceivedAt.IsZero() {
		ev.ReceivedAt = time.Now().UTC()
	}
	ev.ID = ulid.Make().String()
}

// decodeWellFormed is Decode's fast path: one pass over the body that
// validates it (JSON syntax and UTF-8) and finds the fields, without
// reflection. It handles only a message Decode accepts and returns false for
// anything else or anything unusual (a problem, escaped or non-ASCII names, a
// null custom header, custom header names that collide once lower-cased,
// deep nesting), leaving it to the general path, which decides and explains.
// For the messages it accepts the result is decodeGeneral's.
func decodeWellFormed(raw Raw, b []byte) (Event, bool) {
	var f wellFormedBody
	s := scanner{b: b}
	s.space()
	if s.i == len(b) || b[s.i] != '{' || !s.object(f.member) {
		return Event{}, false
	}
	if s.space(); s.i != len(b) {
		return Event{}, false
	}
	if len(f.data) == 0 || string(f.data) == "null" {
		return Event{}, false
	}
	ev := Event{
		V:               Version,
		ProjectID:       raw.ProjectID,
		SourceID:        raw.SourceID,
		Broker:          raw.Broker,
		BrokerMessageID: raw.MessageID,
		ReceivedAt:      raw.ReceivedAt.UTC(),
	}
	// The strings of the event share one allocation.
	var a stringArena
	size := len(f.endpointID) + len(f.ownerID) + len(f.eventType) + len(f.idempotencyKey) + 2*len(f.customHeaders)
	for k := range raw.Headers {
		size += len(k)
	}
	a.sb.Grow(size)
	var ok [4]bool
	ev.EndpointID, ok[0] = a.stringField(f.endpointID)
	ev.OwnerID, ok[1] = a.stringField(f.ownerID)
	ev.EventType, ok[2] = a.stringField(f.eventType)
	ev.IdempotencyKey, ok[3] = a.stringField(f.idempotencyKey)
	if ok != [4]bool{true, true, true, true} || strings.TrimSpace(ev.EventType) == "" {
		return Event{}, false
	}

	mt := strings.ToLower(strings.TrimSpace(headerValue(raw.Headers, HeaderMessageType)))
	switch mt {
	case "", TypeSingle:
		ev.MessageType = TypeSingle
		if strings.TrimSpace(ev.EndpointID) == "" {
			return Event{}, false
		}
	case TypeFanout:
		ev.MessageType = TypeFanout
		if strings.TrimSpace(ev.OwnerID) == "" {
			return Event{}, false
		}
	case TypeBroadcast:
		ev.MessageType = TypeBroadcast
	default:
		return Event{}, false
	}

	var custom []headerPair
	if len(f.customHeaders) > 0 && string(f.customHeaders) != "null" {
		var buf [8]headerPair
		var ok bool
		if custom, ok = a.customHeaders(f.customHeaders, buf[:0]); !ok {
			return Event{}, false
		}
	}
	ev.Headers = make(map[string]string, len(custom)+len(raw.Headers)+1)
	lowered := false
	for _, p := range custom {
		lk := a.lower(p.name)
		lowered = lowered || lk != p.name
		if _, dup := ev.Headers[lk]; dup && lowered {
			// Which spelling wins depends on the general path's map order.
			return Event{}, false
		}
		ev.Headers[lk] = p.value
	}
	for k, v := range raw.Headers {
		// mergeLower's rule.
		lk := a.lower(k)
		if lk != k {
			if _, exact := raw.Headers[lk]; exact {
				continue
			}
		}
		ev.Headers[lk] = v
	}
	if raw.MessageID != "" {
		ev.Headers[HeaderBrokerMessageID] = raw.MessageID
	}
	ev.Data = append(json.RawMessage(nil), f.data...)
	return ev, true
}

// wellFormedBody holds the raw values of a body's known fields, as slices of
// the body; nil when absent.
type wellFormedBody struct {
	endpointID, ownerID, eventType, data, customHeaders, idempotencyKey []byte
}

// member records a top-level member. Like encoding/json (and so the general
// path), a later duplicate wins. encoding/json also matches names ignoring
// case and unescapes them: such names return false.
func (f *wellFormedBody) member(name, value []byte) bool {
	n := name[1 : len(name)-1]
	switch string(n) {
	case "endpoint_id":
		f.endpointID = value
	case "owner_id":
		f.ownerID = value
	case "event_type":
		f.eventType = value
	case "data":
		f.data = value
	case "custom_headers":
		f.customHeaders = value
	case "idempotency_key":
		f.idempotencyKey = value
	default:
		for _, c := range n {
			if c == '\\' || c >= utf8.RuneSelf {
				return false
			}
		}
		for _, known := range [...]string{"endpoint_id", "owner_id", "event_type", "data", "custom_headers", "idempotency_key"} {
			if len(n) == len(known) && strings.EqualFold(string(n), known) {
				return false
			}
		}
	}
	return true
}

// stringArena hands out strings that share one allocation, made with
// sb.Grow, as long as they fit.
type stringArena struct{ sb strings.Builder }

// str is b as a string.
func (a *stringArena) str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	off := a.sb.Len()
	a.sb.Write(b)
	return a.sb.String()[off:]
}

// lower is strings.ToLower(s), taking ASCII from the arena.
func (a *stringArena) lower(s string) string {
	upper := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= utf8.RuneSelf {
			return strings.ToLower(s)
		}
		upper = upper || 'A' <= c && c <= 'Z'
	}
	if !upper {
		return s
	}
	off := a.sb.Len()
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		a.sb.WriteByte(c)
	}
	return a.sb.String()[off:]
}

// stringField is the value of a validated JSON string or null; false for
// any other JSON type.
func (a *stringArena) stringField(v []byte) (string, bool) {
	if len(v) == 0 || string(v) == "null" {
		return "", true
	}
	if v[0] != '"' {
		return "", false
	}
	if bytes.IndexByte(v, '\\') < 0 {
		// Valid UTF-8 without escapes unquotes to itself.
		return a.str(v[1 : len(v)-1]), true
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		return "", false
	}
	return s, true
}

type headerPair struct{ name, value string }

// customHeaders appends the members of a validated custom_headers object to
// pairs, in order; false when a value is not a string.
func (a *stringArena) customHeaders(obj []byte, pairs []headerPair) ([]headerPair, bool) {
	s := scanner{b: obj}
	ok := s.object(func(name, value []byte) bool {
		if value[0] != '"' {
			return false
		}
		n, nok := a.stringField(name)
		v, vok := a.stringField(value)
		pairs = append(pairs, headerPair{n, v})
		return nok && vok
	})
	return pairs, ok
}

// maxWellFormedDepth is the deepest nesting the fast path takes; deeper
// bodies go to the general path (encoding/json allows 10,000).
const maxWellFormedDepth = 512

// scanner validates JSON (RFC 8259, as encoding/json does) and UTF-8 in one
// pass.
type scanner struct {
	b     []byte
	i     int
	depth int
}

// space skips JSON whitespace.
func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// value scans one value.
func (s *scanner) value() bool {
	if s.i == len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '{':
		return s.object(nil)
	case c == '[':
		return s.array()
	case c == '"':
		return s.str()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		return s.number()
	}
	return false
}

// object scans an object starting at s.i (a '{'), handing each member's name
// (quoted) and value to member unless it is nil; it stops when member returns
// false.
func (s *scanner) object(member func(name, value []byte) bool) bool {
	if s.depth++; s.depth > maxWellFormedDepth {
		return false
	}
	s.i++
	s.space()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		s.depth--
		return true
	}
	for {
		start := s.i
		if !s.str() {
			return false
		}
		name := s.b[start:s.i]
		s.space()
		if s.i == len(s.b) || s.b[s.i] != ':' {
			return false
		}
		s.i++
		s.space()
		start = s.i
		if !s.value() {
			return false
		}
		if member != nil && !member(name, s.b[start:s.i]) {
			return false
		}
		s.space()
		if s.i == len(s.b) {
			return false
		}
		switch s.b[s.i] {
		case ',':
			s.i++
			s.space()
		case '}':
			s.i++
			s.depth--
			return true
		default:
			return false
		}
	}
}

// array scans an array starting at s.i (a '[').
func (s *scanner) array() bool {
	if s.depth++; s.depth > maxWellFormedDepth {
		return false
	}
	s.i++
	s.space()
	if s.i < len(s.b) && s.b[s.i] == ']' {
		s.i++
		s.depth--
		return true
	}
	for {
		if !s.value() {
			return false
		}
		s.space()
		if s.i == len(s.b) {
			return false
		}
		switch s.b[s.i] {
		case ',':
			s.i++
			s.space()
		case ']':
			s.i++
			s.depth--
			return true
		default:
			return false
		}
	}
}

// plainStringByte are the bytes a JSON string holds as they are: printable
// ASCII but the quote and the backslash.
var plainStringByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// str scans a string starting at s.i (a '"'), checking its escapes and that
// it is valid UTF-8.
func (s *scanner) str() bool {
	b := s.b
	if s.i == len(b) || b[s.i] != '"' {
		return false
	}
	i := s.i + 1
	for i < len(b) {
		c := b[i]
		switch {
		case plainStringByte[c]:
			i++
		case c == '"':
			s.i = i + 1
			return true
		case c == '\\':
			if i+1 == len(b) {
				return false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return false
				}
				i += 6
			default:
				return false
			}
		case c < 0x20:
			return false
		default:
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n == 1 {
				return false
			}
			i += n
		}
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// literal scans true, false or null.
func (s *scanner) literal(lit string) bool {
	if !bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
		return false
	}
	s.i += len(lit)
	return true
}

// number scans a number: -? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?
func (s *scanner) number() bool {
	b, i := s.b, s.i
	if b[i] == '-' {
		i++
	}
	switch {
	case i == len(b):
		return false
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i == len(b) || !isDigit(b[i]) {
			return false
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i == len(b) || !isDigit(b[i]) {
			return false
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	s.i = i
	return true
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
