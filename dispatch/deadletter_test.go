package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestDeadLetterAndReplay(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	rdb := sharedRedis(t, prefix)
	q := New(rdb, Options{Prefix: prefix, Decode: DecodeOptions{MaxBodyBytes: 4096}})

	bad := Raw{
		ProjectID: "p1", SourceID: "s1", Broker: "amqp", MessageID: "m-1",
		Body:       []byte(`{"endpoint_id":"ep1","data":{"x":1}}`),
		Headers:    map[string]string{"X-Trace": "t1"},
		ReceivedAt: time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC),
	}
	_, derr := Decode(bad, DecodeOptions{})
	if !IsPermanent(derr) {
		t.Fatalf("decode: %v, want permanent", derr)
	}
	// Recorded once, however often the broker redelivers it.
	for range 3 {
		if err := q.DeadLetter(ctx, bad, derr.Error()); err != nil {
			t.Fatal(err)
		}
	}
	other := Raw{ProjectID: "p1", SourceID: "s2", Broker: "amqp", MessageID: "m-1", Body: []byte("\xff\xfe")}
	if err := q.DeadLetter(ctx, other, "body is not valid UTF-8"); err != nil {
		t.Fatal(err)
	}

	list, next, err := q.DeadLetters(ctx, "s1", "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || next != "" {
		t.Fatalf("dead letters of s1 = %d (next %q), want 1 and no next page", len(list), next)
	}
	d := list[0]
	if d.SourceID != "s1" || d.ProjectID != "p1" || d.Broker != "amqp" || d.MessageID != "m-1" ||
		string(d.Body) != string(bad.Body) || d.Headers["X-Trace"] != "t1" ||
		d.Reason != "malformed message: event_type is required" || !d.ReceivedAt.Equal(bad.ReceivedAt) || d.DeadLetteredAt.IsZero() {
		t.Fatalf("dead letter = %+v", d)
	}
	js, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var asMap map[string]any
	_ = json.Unmarshal(js, &asMap)
	if asMap["body"] != string(bad.Body) || asMap["id"] != d.EntryID {
		t.Fatalf("JSON = %s", js)
	}

	// Still malformed: the permanent error, and the entry stays.
	if _, err := q.Replay(ctx, "s1", d.EntryID); !IsPermanent(err) {
		t.Fatalf("replay of a malformed payload = %v, want the permanent error", err)
	}
	// Another source's entry, or none at all, is not found.
	if _, err := q.Replay(ctx, "s2", d.EntryID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("replay from another source = %v, want ErrNotFound", err)
	}
	for _, id := range []string{"1-1", "nonsense", "", "-", "+"} {
		if _, err := q.Replay(ctx, "s1", id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("replay of %q = %v, want ErrNotFound", id, err)
		}
	}

	// A valid message dead-lettered under a smaller body limit than the
	// queue's replays once the limit was raised.
	good := bad
	good.Body = []byte(`{"endpoint_id":"ep1","event_type":"fixed","data":{"x":1}}`)
	good.MessageID = "m-2"
	_, derr = Decode(good, DecodeOptions{MaxBodyBytes: 40})
	if !IsPermanent(derr) {
		t.Fatalf("decode under a 40-byte limit: %v", derr)
	}
	if err := q.DeadLetter(ctx, good, derr.Error()); err != nil {
		t.Fatal(err)
	}
	list, _, err = q.DeadLetters(ctx, "s1", "", 10)
	if err != nil || len(list) != 2 {
		t.Fatalf("dead letters = %d, %v; want 2", len(list), err)
	}
	ev, err := q.Replay(ctx, "s1", list[1].EntryID)
	if err != nil {
		t.Fatal(err)
	}
	if ev.EventType != "fixed" || ev.BrokerMessageID != "m-2" || ev.ProjectID != "p1" || ev.Headers["x-trace"] != "t1" {
		t.Fatalf("replayed event = %+v", ev)
	}
	stream := streamEvents(t, rdb, q)
	if len(stream) != 1 || stream[0].ID != ev.ID || string(stream[0].Data) != `{"x":1}` {
		t.Fatalf("dispatch stream = %+v", stream)
	}
	if _, err := q.Replay(ctx, "s1", list[1].EntryID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second replay = %v, want ErrNotFound (removed on success)", err)
	}
	list, _, _ = q.DeadLetters(ctx, "s1", "", 10)
	if len(list) != 1 || list[0].MessageID != "m-1" {
		t.Fatalf("after replay: %+v", list)
	}

	// Other source's non-UTF-8 body survives byte for byte.
	list, _, _ = q.DeadLetters(ctx, "s2", "", 10)
	if len(list) != 1 || string(list[0].Body) != "\xff\xfe" {
		t.Fatalf("s2 dead letters = %+v", list)
	}
}

func TestDeadLettersPaginate(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	rdb := sharedRedis(t, prefix)
	q := New(rdb, Options{Prefix: prefix})
	for i := range 25 {
		for _, src := range []string{"a", "b"} {
			raw := Raw{SourceID: src, MessageID: fmt.Sprint(i), Body: []byte("x")}
			if err := q.DeadLetter(ctx, raw, "body is not valid JSON"); err != nil {
				t.Fatal(err)
			}
		}
	}
	var seen []string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
		list, next, err := q.DeadLetters(ctx, "a", cursor, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range list {
			if d.SourceID != "a" {
				t.Fatalf("listed %s's dead letter", d.SourceID)
			}
			seen = append(seen, d.MessageID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if len(seen) != 25 || seen[0] != "0" || seen[24] != "24" {
		t.Fatalf("listed %v", seen)
	}
	if _, _, err := q.DeadLetters(ctx, "a", "bogus", 10); !errors.Is(err, ErrInvalidCursor) {
		t.Fatalf("bad cursor: %v", err)
	}
}
