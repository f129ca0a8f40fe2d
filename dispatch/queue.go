package dispatch

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// Options configure a Queue.
type Options struct {
	// Prefix starts every key of the queue; it must not contain braces.
	// Default "sluice" (stream "sluice:dispatch").
	Prefix string
	// DedupeWindow is how long the (source, broker message id) of a written
	// event is remembered. Default 24h.
	DedupeWindow time.Duration
	// HighWater is the dispatch stream length above which workers stop
	// fetching. Default 1,000,000.
	HighWater int64
	// LowWater is the stream length below which they resume. Default 900,000
	// (90% of HighWater when only HighWater is set).
	LowWater int64
	// PollInterval is how often Run reads the stream length. Default 100ms.
	PollInterval time.Duration
	// Decode are the options Replay decodes dead letters with; use the ones
	// the workers decode with. Default: DecodeOptions defaults.
	Decode DecodeOptions
	// Logger receives the queue's logs. Default: discarded.
	Logger *slog.Logger
}

// Outcome is how Enqueue settled one event.
type Outcome int

const (
	// Written: the event was appended to the dispatch stream.
	Written Outcome = iota + 1
	// Duplicate: an event with the same source and broker message id was
	// written within the dedupe window; nothing was appended.
	Duplicate
)

func (o Outcome) String() string {
	switch o {
	case Written:
		return "written"
	case Duplicate:
		return "duplicate"
	default:
		return "unknown"
	}
}

// ErrNotFound is returned for a dead letter that does not exist (or belongs
// to another source).
var ErrNotFound = errors.New("dispatch: not found")

// Queue writes events to the dispatch stream and dead letters to the
// dead-letter stream, and tracks the dispatch stream's length for
// backpressure. It is safe for concurrent use. Backpressure needs Run.
type Queue struct {
	rdb    redis.UniversalClient
	keys   keys
	window time.Duration
	high   int64
	low    int64
	poll   time.Duration
	decode DecodeOptions
	log    *slog.Logger

	length    atomic.Int64
	pressured atomic.Bool
	mu        sync.Mutex    // guards release
	release   chan struct{} // closed when backpressure releases; nil when not engaged
}

// Validate reports options New would have to correct: a prefix with braces
// (its keys would not share a Redis Cluster slot) and a low-water mark above
// the high-water mark.
func (o Options) Validate() error {
	var errs []error
	if strings.ContainsAny(o.Prefix, "{}") {
		errs = append(errs, fmt.Errorf("prefix %q must not contain { or }", o.Prefix))
	}
	if o.HighWater < 0 || o.LowWater < 0 {
		errs = append(errs, errors.New("high and low water marks must not be negative"))
	}
	if o.HighWater > 0 && o.LowWater > o.HighWater {
		errs = append(errs, fmt.Errorf("low water %d is above high water %d", o.LowWater, o.HighWater))
	}
	return errors.Join(errs...)
}

// New returns a Queue on rdb. Invalid options (see Validate) are corrected:
// a low-water mark above the high-water mark is lowered to it; a prefix with
// braces is used as is and works, except on Redis Cluster.
func New(rdb redis.UniversalClient, opts Options) *Queue {
	high := cmp.Or(opts.HighWater, 1_000_000)
	low := min(cmp.Or(opts.LowWater, high-high/10), high)
	return &Queue{
		rdb:    rdb,
		keys:   keys{prefix: cmp.Or(opts.Prefix, "sluice")},
		window: cmp.Or(opts.DedupeWindow, 24*time.Hour),
		high:   high,
		low:    low,
		poll:   cmp.Or(opts.PollInterval, 100*time.Millisecond),
		decode: opts.Decode,
		log:    cmp.Or(opts.Logger, slog.New(slog.DiscardHandler)),
	}
}

// StreamKey is the dispatch stream's key.
func (q *Queue) StreamKey() string { return q.keys.stream() }

// DeadLetterKey is the dead-letter stream's key.
func (q *Queue) DeadLetterKey() string { return q.keys.deadLetter() }

// streamFields are the envelope's stream field names, in the order
// entryValues writes their values.
var streamFields = []string{
	"v", "id", "project_id", "source_id", "message_type", "endpoint_id", "owner_id",
	"event_type", "data", "headers", "idempotency_key", "broker", "broker_message_id", "received_at",
}

// enqueueScript appends a batch of events, skipping those already seen.
//
// KEYS[1]       the dispatch stream
// KEYS[2..]     the dedupe keys of the events that have a broker message id,
//
//	in batch order
//
// ARGV[1]       dedupe window in milliseconds
// ARGV[2]       n, the number of events
// ARGV[3]       f, the number of stream fields per event
// ARGV[4..3+f]  the stream field names
// then for each event: "1" when it has a dedupe key (the next unused KEYS
// entry), else "0"; then its f field values.
//
// Returns n stream entry ids ("" for a duplicate) followed by the stream
// length. A dedupe key is set only together with its entry: if an XADD fails,
// the key is removed again and the error returned, so retrying the batch
// writes exactly the events not yet written.
var enqueueScript = redis.NewScript(`
local window = ARGV[1]
local n = tonumber(ARGV[2])
local f = tonumber(ARGV[3])
local xargs = {KEYS[1], '*'}
for i = 1, f do xargs[1 + 2*i] = ARGV[3 + i] end
local out = {}
local ki = 2
local a = 4 + f
for e = 1, n do
  local key = nil
  local fresh = true
  if ARGV[a] == '1' then
    key = KEYS[ki]
    ki = ki + 1
    fresh = redis.call('SET', key, '1', 'NX', 'PX', window)
  end
  if fresh then
    for i = 1, f do xargs[2 + 2*i] = ARGV[a + i] end
    local id = redis.pcall('XADD', unpack(xargs))
    if type(id) == 'table' and id.err then
      if key then redis.call('DEL', key) end
      return id
    end
    out[e] = id
  else
    out[e] = ''
  end
  a = a + 1 + f
end
out[n + 1] = redis.call('XLEN', KEYS[1])
return out
`)

// Enqueue appends events to the dispatch stream in one round trip (one Lua
// script) and returns how each was settled (outcomes[i] for events[i]).
//
// It is idempotent: an event whose (SourceID, BrokerMessageID) was written
// within the dedupe window, by this call, an earlier one or another replica,
// is a Duplicate; the check and the write are atomic. An event with an empty
// BrokerMessageID cannot be deduplicated and is always written.
//
// Any error is transient (Redis unreachable, a timeout, a failed write):
// retrying the same batch is safe and never writes an event twice, even when
// the failed call wrote some or all of them.
func (q *Queue) Enqueue(ctx context.Context, events []Event) ([]Outcome, error) {
	if len(events) == 0 {
		return nil, nil
	}
	keys, args, err := q.enqueueArgs(events)
	if err != nil {
		return nil, err
	}
	res, err := enqueueScript.Run(ctx, q.rdb, keys, args...).Slice()
	if err != nil {
		return nil, fmt.Errorf("enqueue %d events: %w", len(events), err)
	}
	if len(res) != len(events)+1 {
		return nil, fmt.Errorf("enqueue %d events: script returned %d values", len(events), len(res))
	}
	out := make([]Outcome, len(events))
	for i := range events {
		if id, _ := res[i].(string); id != "" {
			out[i] = Written
		} else {
			out[i] = Duplicate
		}
	}
	if n, ok := res[len(events)].(int64); ok {
		q.observe(n)
	}
	return out, nil
}

// enqueueArgs are enqueueScript's keys and arguments for events.
func (q *Queue) enqueueArgs(events []Event) (keys []string, args []any, err error) {
	nf := len(streamFields)
	keys = make([]string, 1, 1+len(events))
	keys[0] = q.keys.stream()
	args = make([]any, 0, 3+nf+len(events)*(1+nf))
	args = append(args, q.window.Milliseconds(), len(events), nf)
	for _, f := range streamFields {
		args = append(args, f)
	}
	for i := range events {
		ev := &events[i]
		if ev.SourceID == "" {
			return nil, nil, fmt.Errorf("enqueue: event %d (%s) has no source id", i, ev.ID)
		}
		if ev.BrokerMessageID != "" {
			keys = append(keys, q.keys.seen(ev.SourceID, ev.BrokerMessageID))
			args = append(args, "1")
		} else {
			args = append(args, "0")
		}
		var prev []any
		if i > 0 {
			prev = args[len(args)-1-nf : len(args)-1]
		}
		args = appendEntry(args, ev, prev)
	}
	return keys, args, nil
}

// appendEntryValues appends ev's stream field values in streamFields order.
func appendEntryValues(args []any, ev *Event) ([]any, error) {
	return appendEntry(args, ev, nil), nil
}

// appendEntry appends ev's stream field values in streamFields order. A
// string value equal to the one in prev (the values of the event before,
// when not nil) reuses prev's: events of a batch mostly share their project,
// source, type and target, and an interface holding a string costs an
// allocation.
func appendEntry(args []any, ev *Event, prev []any) []any {
	str := func(field int, s string) any {
		if prev != nil {
			if p, ok := prev[field].(string); ok && p == s {
				return prev[field]
			}
		}
		return s
	}
	// headers and received_at share one allocation.
	n := len("{}") + len(time.RFC3339Nano)
	for k, v := range ev.Headers {
		n += len(k) + len(v) + len(`"":"",`)
	}
	buf := appendHeaders(make([]byte, 0, n), ev.Headers)
	headers := buf[:len(buf):len(buf)]
	receivedAt := ev.ReceivedAt.UTC().AppendFormat(buf[len(buf):], time.RFC3339Nano)
	return append(args,
		str(0, strconv.Itoa(cmp.Or(ev.V, Version))),
		ev.ID,
		str(2, ev.ProjectID),
		str(3, ev.SourceID),
		str(4, ev.MessageType),
		str(5, ev.EndpointID),
		str(6, ev.OwnerID),
		str(7, ev.EventType),
		[]byte(ev.Data),
		headers,
		str(10, ev.IdempotencyKey),
		str(11, ev.Broker),
		ev.BrokerMessageID,
		receivedAt,
	)
}

// appendHeaders appends h as a JSON object, exactly as encoding/json with
// SetEscapeHTML(false) encodes it: keys sorted, only quotes, backslashes and
// control characters escaped (\b \f \n \r \t short), invalid UTF-8 as
// \ufffd, U+2028 and U+2029 escaped.
func appendHeaders(dst []byte, h map[string]string) []byte {
	var arr [16]string
	names := arr[:0]
	for k := range h {
		names = append(names, k)
	}
	slices.Sort(names)
	dst = append(dst, '{')
	for i, k := range names {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, k)
		dst = append(dst, ':')
		dst = appendJSONString(dst, h[k])
	}
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s quoted as encoding/json does without HTML
// escaping.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// ParseEntry turns a dispatch stream entry's fields back into an Event. It
// fails for an envelope version it does not know or a malformed field.
func ParseEntry(values map[string]any) (Event, error) {
	s := func(name string) string { v, _ := values[name].(string); return v }
	if v := s("v"); v != strconv.Itoa(Version) {
		return Event{}, fmt.Errorf("unknown envelope version %q", v)
	}
	ev := Event{
		V:               Version,
		ID:              s("id"),
		ProjectID:       s("project_id"),
		SourceID:        s("source_id"),
		MessageType:     s("message_type"),
		EndpointID:      s("endpoint_id"),
		OwnerID:         s("owner_id"),
		EventType:       s("event_type"),
		IdempotencyKey:  s("idempotency_key"),
		Broker:          s("broker"),
		BrokerMessageID: s("broker_message_id"),
	}
	if d := s("data"); d != "" {
		ev.Data = json.RawMessage(d)
	}
	if h := s("headers"); h != "" {
		if err := json.Unmarshal([]byte(h), &ev.Headers); err != nil {
			return Event{}, fmt.Errorf("entry %s: headers: %w", ev.ID, err)
		}
	}
	if t := s("received_at"); t != "" {
		at, err := time.Parse(time.RFC3339Nano, t)
		if err != nil {
			return Event{}, fmt.Errorf("entry %s: received_at: %w", ev.ID, err)
		}
		ev.ReceivedAt = at
	}
	return ev, nil
}

// Run keeps the dispatch stream length current for backpressure, reading it
// every PollInterval, until ctx is done; it then returns nil. Read errors are
// logged and leave the last state in place.
func (q *Queue) Run(ctx context.Context) error {
	t := time.NewTicker(q.poll)
	defer t.Stop()
	failing := false
	for {
		n, err := q.rdb.XLen(ctx, q.keys.stream()).Result()
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			if !failing {
				q.log.Warn("read dispatch stream length", "stream", q.keys.stream(), "error", err)
			}
			failing = true
		default:
			failing = false
			q.observe(n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// observe records a stream length and engages or releases backpressure.
func (q *Queue) observe(n int64) {
	q.length.Store(n)
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.release == nil && n > q.high:
		q.release = make(chan struct{})
		q.pressured.Store(true)
		q.log.Warn("backpressure engaged", "stream", q.keys.stream(), "length", n, "high_water", q.high)
	case q.release != nil && n < q.low:
		q.pressured.Store(false)
		close(q.release)
		q.release = nil
		q.log.Info("backpressure released", "stream", q.keys.stream(), "length", n, "low_water", q.low)
	}
}

// WaitBelowHighWater returns nil at once unless backpressure is engaged (the
// stream grew above the high-water mark); then it blocks until the stream has
// drained below the low-water mark or ctx is done (returning ctx's error).
// Workers call it before every fetch; it costs an atomic load when the queue
// is not backpressured. The length is read by Run, once for all callers.
func (q *Queue) WaitBelowHighWater(ctx context.Context) error {
	if !q.pressured.Load() {
		return nil
	}
	q.mu.Lock()
	ch := q.release
	q.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Backpressured reports whether workers are being held back.
func (q *Queue) Backpressured() bool { return q.pressured.Load() }

// Len is the dispatch stream length last read (by Run or Enqueue).
func (q *Queue) Len() int64 { return q.length.Load() }
