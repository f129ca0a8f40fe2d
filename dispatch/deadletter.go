package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// DeadLetter is one entry of the dead-letter stream: a message that could not
// be decoded, kept with the reason so it can be inspected and replayed.
//
// Stream fields (all strings): v ("1"), project_id, source_id, broker,
// message_id, reason, body (the raw payload bytes), headers (JSON object of
// the broker headers as delivered), received_at and dead_lettered_at
// (RFC 3339 with nanoseconds, UTC).
type DeadLetter struct {
	// EntryID is the stream entry id, the handle for Replay.
	EntryID   string
	ProjectID string
	SourceID  string
	Broker    string
	MessageID string
	Reason    string
	// Body is the raw payload as the broker delivered it.
	Body           []byte
	Headers        map[string]string
	ReceivedAt     time.Time
	DeadLetteredAt time.Time
}

// MarshalJSON renders the dead letter for the admin API: body as a string
// when it is valid UTF-8, else as base64 in body_base64.
func (d DeadLetter) MarshalJSON() ([]byte, error) {
	type out struct {
		ID             string            `json:"id"`
		ProjectID      string            `json:"project_id"`
		SourceID       string            `json:"source_id"`
		Broker         string            `json:"broker"`
		MessageID      string            `json:"message_id"`
		Reason         string            `json:"reason"`
		Body           *string           `json:"body,omitempty"`
		BodyBase64     []byte            `json:"body_base64,omitempty"`
		Headers        map[string]string `json:"headers"`
		ReceivedAt     time.Time         `json:"received_at"`
		DeadLetteredAt time.Time         `json:"dead_lettered_at"`
	}
	o := out{ID: d.EntryID, ProjectID: d.ProjectID, SourceID: d.SourceID, Broker: d.Broker,
		MessageID: d.MessageID, Reason: d.Reason, Headers: d.Headers,
		ReceivedAt: d.ReceivedAt, DeadLetteredAt: d.DeadLetteredAt}
	if utf8.Valid(d.Body) {
		s := string(d.Body)
		o.Body = &s
	} else {
		o.BodyBase64 = d.Body
	}
	return json.Marshal(o)
}

// deadLetterScript appends one dead letter unless the same message was
// dead-lettered within the dedupe window.
//
// KEYS[1]  the dead-letter stream
// KEYS[2]  the message's dead-letter dedupe key; absent when the message has
//
//	no broker message id (it is then always appended)
//
// ARGV[1]  dedupe window in milliseconds
// ARGV[2..] the entry's field/value pairs
//
// Returns the new entry id, or "" for a duplicate. The dedupe key is removed
// again if the XADD fails, so a retry appends it.
var deadLetterScript = redis.NewScript(`
if KEYS[2] then
  if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return '' end
end
local id = redis.pcall('XADD', KEYS[1], '*', unpack(ARGV, 2))
if type(id) == 'table' and id.err then
  if KEYS[2] then redis.call('DEL', KEYS[2]) end
end
return id
`)

// DeadLetter records a permanently bad message in the dead-letter stream
// (<prefix>:deadletter) with the reason. It is idempotent on (source, broker
// message id) within the dedupe window: a redelivered bad message lands once.
// A message without a broker message id is recorded every time. An error is
// transient: nothing was recorded, retry.
func (q *Queue) DeadLetter(ctx context.Context, raw Raw, reason string) error {
	if raw.SourceID == "" {
		return errors.New("dead letter: raw message has no source id")
	}
	headers, err := json.Marshal(raw.Headers)
	if err != nil {
		return fmt.Errorf("dead letter: encode headers: %w", err)
	}
	if raw.Headers == nil {
		headers = []byte("{}")
	}
	received := raw.ReceivedAt
	if received.IsZero() {
		received = time.Now()
	}
	keys := []string{q.keys.deadLetter()}
	if raw.MessageID != "" {
		keys = append(keys, q.keys.deadLetterSeen(raw.SourceID, raw.MessageID))
	}
	args := []any{
		q.window.Milliseconds(),
		"v", strconv.Itoa(Version),
		"project_id", raw.ProjectID,
		"source_id", raw.SourceID,
		"broker", raw.Broker,
		"message_id", raw.MessageID,
		"reason", reason,
		"body", raw.Body,
		"headers", headers,
		"received_at", received.UTC().Format(time.RFC3339Nano),
		"dead_lettered_at", time.Now().UTC().Format(time.RFC3339Nano),
	}
	if err := deadLetterScript.Run(ctx, q.rdb, keys, args...).Err(); err != nil {
		return fmt.Errorf("dead letter message %q of source %s: %w", raw.MessageID, raw.SourceID, err)
	}
	return nil
}

// ErrInvalidCursor is returned by DeadLetters for a cursor it did not make.
var ErrInvalidCursor = errors.New("dispatch: invalid cursor")

// Dead-letter listing bounds.
const (
	defaultDeadLetterPage = 50
	maxDeadLetterPage     = 500
	// deadLetterScanLimit bounds the entries one DeadLetters call reads while
	// skipping other sources' dead letters.
	deadLetterScanLimit = 10_000
)

// DeadLetters lists the dead letters of a source, oldest first. cursor is ""
// for the first page, else the nextCursor of the previous page; limit is the
// page size (default 50, at most 500). nextCursor is "" when there is nothing
// more. The dead-letter stream is shared by all sources, so a call reads at
// most 10,000 entries: a page can be shorter than limit and still have a
// nextCursor, and the last page may be empty.
func (q *Queue) DeadLetters(ctx context.Context, sourceID, cursor string, limit int) ([]DeadLetter, string, error) {
	if limit <= 0 {
		limit = defaultDeadLetterPage
	}
	limit = min(limit, maxDeadLetterPage)
	start := "-"
	if cursor != "" {
		if !validEntryID(cursor) {
			return nil, "", fmt.Errorf("%w: %q", ErrInvalidCursor, cursor)
		}
		start = "(" + cursor
	}
	chunk := int64(max(limit, 200))
	var out []DeadLetter
	scanned := 0
	for {
		msgs, err := q.rdb.XRangeN(ctx, q.keys.deadLetter(), start, "+", chunk).Result()
		if err != nil {
			return nil, "", fmt.Errorf("list dead letters of source %s: %w", sourceID, err)
		}
		for _, m := range msgs {
			scanned++
			if v, _ := m.Values["source_id"].(string); v == sourceID {
				out = append(out, parseDeadLetter(m))
				if len(out) == limit {
					return out, m.ID, nil
				}
			}
			if scanned >= deadLetterScanLimit {
				return out, m.ID, nil
			}
		}
		if int64(len(msgs)) < chunk {
			return out, "", nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

func parseDeadLetter(m redis.XMessage) DeadLetter {
	s := func(name string) string { v, _ := m.Values[name].(string); return v }
	d := DeadLetter{
		EntryID:   m.ID,
		ProjectID: s("project_id"),
		SourceID:  s("source_id"),
		Broker:    s("broker"),
		MessageID: s("message_id"),
		Reason:    s("reason"),
		Body:      []byte(s("body")),
	}
	_ = json.Unmarshal([]byte(s("headers")), &d.Headers) // written by DeadLetter; a bad value reads as no headers
	d.ReceivedAt, _ = time.Parse(time.RFC3339Nano, s("received_at"))
	d.DeadLetteredAt, _ = time.Parse(time.RFC3339Nano, s("dead_lettered_at"))
	return d
}

// Replay decodes a source's dead letter again (with Options.Decode),
// enqueues it and, once it is written, removes it from the dead-letter
// stream. It returns ErrNotFound when the entry does not exist or belongs to
// another source, and the *PermanentError when the payload is still
// malformed (the entry stays). Any other error is transient. Replaying twice
// writes the event once when it has a broker message id.
func (q *Queue) Replay(ctx context.Context, sourceID, entryID string) (Event, error) {
	if !validEntryID(entryID) {
		return Event{}, ErrNotFound
	}
	msgs, err := q.rdb.XRangeN(ctx, q.keys.deadLetter(), entryID, entryID, 1).Result()
	if err != nil {
		return Event{}, fmt.Errorf("replay dead letter %s: %w", entryID, err)
	}
	if len(msgs) == 0 {
		return Event{}, ErrNotFound
	}
	d := parseDeadLetter(msgs[0])
	if d.SourceID != sourceID {
		return Event{}, ErrNotFound
	}
	ev, err := Decode(Raw{
		ProjectID: d.ProjectID, SourceID: d.SourceID, Broker: d.Broker, MessageID: d.MessageID,
		Body: d.Body, Headers: d.Headers, ReceivedAt: d.ReceivedAt,
	}, q.decode)
	if err != nil {
		return Event{}, fmt.Errorf("replay dead letter %s: %w", entryID, err)
	}
	if _, err := q.Enqueue(ctx, []Event{ev}); err != nil {
		return Event{}, fmt.Errorf("replay dead letter %s: %w", entryID, err)
	}
	if err := q.rdb.XDel(ctx, q.keys.deadLetter(), entryID).Err(); err != nil {
		return Event{}, fmt.Errorf("replay dead letter %s: enqueued, but remove it: %w", entryID, err)
	}
	return ev, nil
}

// validEntryID reports whether s is a complete stream entry id ("ms-seq").
func validEntryID(s string) bool {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return false
	}
	_, err1 := strconv.ParseUint(ms, 10, 64)
	_, err2 := strconv.ParseUint(seq, 10, 64)
	return err1 == nil && err2 == nil
}
