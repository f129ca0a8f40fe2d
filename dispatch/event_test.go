package dispatch

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/oklog/ulid/v2"
)

func TestDecode(t *testing.T) {
	received := time.Date(2026, 11, 27, 5, 0, 0, 123456789, time.FixedZone("CET", 3600))
	base := func(body string, headers map[string]string) Raw {
		return Raw{
			ProjectID: "p1", SourceID: "s1", Broker: "kafka", MessageID: "orders/0/42",
			Body: []byte(body), Headers: headers, ReceivedAt: received,
		}
	}
	want := func(mod func(*Event)) Event {
		ev := Event{
			V: Version, ProjectID: "p1", SourceID: "s1", MessageType: TypeSingle,
			EndpointID: "ep1", EventType: "user.created", Data: json.RawMessage(`{"a":1}`),
			Headers: map[string]string{HeaderBrokerMessageID: "orders/0/42"},
			Broker:  "kafka", BrokerMessageID: "orders/0/42", ReceivedAt: received.UTC(),
		}
		if mod != nil {
			mod(&ev)
		}
		return ev
	}
	const ok = `{"endpoint_id":"ep1","event_type":"user.created","data":{"a":1}}`

	tests := []struct {
		name    string
		raw     Raw
		opts    DecodeOptions
		want    Event  // when wantErr is empty
		wantErr string // substring of the permanent reason
	}{
		{name: "minimal single", raw: base(ok, nil), want: want(nil)},
		{name: "explicit single header", raw: base(ok, map[string]string{"x-convoy-message-type": "single"}),
			want: want(func(e *Event) { e.Headers["x-convoy-message-type"] = "single" })},
		{name: "message type header in any case", raw: base(ok, map[string]string{"X-Convoy-Message-Type": " SINGLE "}),
			want: want(func(e *Event) { e.Headers["x-convoy-message-type"] = " SINGLE " })},
		{name: "fanout with owner", raw: base(`{"owner_id":"o1","event_type":"e","data":[1,2]}`, map[string]string{"x-convoy-message-type": "fanout"}),
			want: want(func(e *Event) {
				e.MessageType, e.EndpointID, e.OwnerID, e.EventType, e.Data = TypeFanout, "", "o1", "e", json.RawMessage(`[1,2]`)
				e.Headers["x-convoy-message-type"] = "fanout"
			})},
		{name: "fanout without owner", raw: base(ok, map[string]string{"x-convoy-message-type": "fanout"}),
			wantErr: "owner_id is required for message type fanout"},
		{name: "broadcast needs neither", raw: base(`{"event_type":"e","data":"x"}`, map[string]string{"x-convoy-message-type": "broadcast"}),
			want: want(func(e *Event) {
				e.MessageType, e.EndpointID, e.EventType, e.Data = TypeBroadcast, "", "e", json.RawMessage(`"x"`)
				e.Headers["x-convoy-message-type"] = "broadcast"
			})},
		{name: "unknown message type", raw: base(ok, map[string]string{"x-convoy-message-type": "multicast"}),
			wantErr: `x-convoy-message-type must be single, fanout or broadcast, got "multicast"`},
		{name: "single without endpoint", raw: base(`{"event_type":"e","data":{}}`, nil),
			wantErr: "endpoint_id is required for message type single"},
		{name: "blank endpoint", raw: base(`{"endpoint_id":"  ","event_type":"e","data":{}}`, nil),
			wantErr: "endpoint_id is required"},
		{name: "missing event_type", raw: base(`{"endpoint_id":"ep1","data":{}}`, nil), wantErr: "event_type is required"},
		{name: "null event_type", raw: base(`{"endpoint_id":"ep1","event_type":null,"data":{}}`, nil), wantErr: "event_type is required"},
		{name: "blank event_type", raw: base(`{"endpoint_id":"ep1","event_type":" \t","data":{}}`, nil), wantErr: "event_type is required"},
		{name: "numeric event_type", raw: base(`{"endpoint_id":"ep1","event_type":7,"data":{}}`, nil), wantErr: "event_type must be a string"},
		{name: "missing data", raw: base(`{"endpoint_id":"ep1","event_type":"e"}`, nil), wantErr: "data is required"},
		{name: "null data", raw: base(`{"endpoint_id":"ep1","event_type":"e","data":null}`, nil), wantErr: "data is required"},
		{name: "every problem reported", raw: base(`{"endpoint_id":1}`, nil),
			wantErr: "endpoint_id must be a string; event_type is required; data is required"},
		{name: "numeric endpoint", raw: base(`{"endpoint_id":12,"event_type":"e","data":{}}`, nil), wantErr: "endpoint_id must be a string"},
		{name: "object owner", raw: base(`{"owner_id":{},"event_type":"e","data":{}}`, map[string]string{"x-convoy-message-type": "fanout"}),
			wantErr: "owner_id must be a string"},
		{name: "array idempotency key", raw: base(`{"endpoint_id":"ep1","event_type":"e","data":{},"idempotency_key":["k"]}`, nil),
			wantErr: "idempotency_key must be a string"},
		{name: "idempotency key kept", raw: base(`{"endpoint_id":"ep1","event_type":"user.created","data":{"a":1},"idempotency_key":"k-1"}`, nil),
			want: want(func(e *Event) { e.IdempotencyKey = "k-1" })},
		{name: "data bytes kept exactly", raw: base("{\"endpoint_id\":\"ep1\",\"event_type\":\"user.created\",\"data\":{ \"b\" : 2.50e1,\n\"a\":\"\\u00e9<>&\" }}", nil),
			want: want(func(e *Event) { e.Data = json.RawMessage("{ \"b\" : 2.50e1,\n\"a\":\"\\u00e9<>&\" }") })},
		{name: "data scalar number", raw: base(`{"endpoint_id":"ep1","event_type":"user.created","data":0}`, nil),
			want: want(func(e *Event) { e.Data = json.RawMessage(`0`) })},
		{name: "data false", raw: base(`{"endpoint_id":"ep1","event_type":"user.created","data":false}`, nil),
			want: want(func(e *Event) { e.Data = json.RawMessage(`false`) })},
		{name: "unknown fields ignored", raw: base(`{"endpoint_id":"ep1","event_type":"user.created","data":{"a":1},"extra":{"x":[1]},"v":9}`, nil),
			want: want(nil)},
		{name: "custom headers merged and lower-cased, broker wins", raw: base(
			`{"endpoint_id":"ep1","event_type":"user.created","data":{"a":1},"custom_headers":{"X-Tenant":"t1","X-Shared":"custom","x-broker-message-id":"forged"}}`,
			map[string]string{"X-Shared": "broker", "Content-Type": "application/json"}),
			want: want(func(e *Event) {
				e.Headers["x-tenant"] = "t1"
				e.Headers["x-shared"] = "broker"
				e.Headers["content-type"] = "application/json"
			})},
		{name: "broker header spelled twice, lower case wins", raw: base(ok, map[string]string{"X-A": "upper", "x-a": "lower"}),
			want: want(func(e *Event) { e.Headers["x-a"] = "lower" })},
		{name: "null custom headers", raw: base(`{"endpoint_id":"ep1","event_type":"user.created","data":{"a":1},"custom_headers":null}`, nil),
			want: want(nil)},
		{name: "custom headers not an object", raw: base(`{"endpoint_id":"ep1","event_type":"e","data":{},"custom_headers":["a"]}`, nil),
			wantErr: "custom_headers must be an object of strings"},
		{name: "custom header value not a string", raw: base(`{"endpoint_id":"ep1","event_type":"e","data":{},"custom_headers":{"x-n":1}}`, nil),
			wantErr: "custom_headers must be an object of strings"},
		{name: "no message id: no dedupe header", raw: func() Raw { r := base(ok, nil); r.MessageID = ""; return r }(),
			want: want(func(e *Event) { e.BrokerMessageID = ""; e.Headers = map[string]string{} })},
		{name: "empty body", raw: base(``, nil), wantErr: "body is empty"},
		{name: "whitespace body", raw: base(" \n\t ", nil), wantErr: "body is empty"},
		{name: "JSON null body", raw: base(`null`, nil), wantErr: "body must be a JSON object"},
		{name: "JSON array body", raw: base(`[`+ok+`]`, nil), wantErr: "body must be a JSON object"},
		{name: "JSON string body", raw: base(`"hello"`, nil), wantErr: "body must be a JSON object"},
		{name: "JSON number body", raw: base(`42`, nil), wantErr: "body must be a JSON object"},
		{name: "not JSON", raw: base(`event_type=e`, nil), wantErr: "body is not valid JSON"},
		{name: "truncated JSON", raw: base(ok[:30], nil), wantErr: "body is not valid JSON"},
		{name: "trailing garbage", raw: base(ok+`}`, nil), wantErr: "body is not valid JSON"},
		{name: "two objects", raw: base(ok+ok, nil), wantErr: "body is not valid JSON"},
		{name: "invalid UTF-8", raw: base("{\"endpoint_id\":\"ep\xff\",\"event_type\":\"e\",\"data\":{}}", nil), wantErr: "body is not valid UTF-8"},
		{name: "UTF-16 body", raw: base("\xff\xfe{\x00}\x00", nil), wantErr: "body is not valid UTF-8"},
		{name: "UTF-8 byte-order mark tolerated", raw: base("\xef\xbb\xbf"+ok, nil), want: want(nil)},
		{name: "leading whitespace tolerated", raw: base("\n  "+ok+"\n", nil), want: want(nil)},
		{name: "unicode values", raw: base(`{"endpoint_id":"ep1","event_type":"usér.créé \u2603","data":{"a":1}}`, nil),
			want: want(func(e *Event) { e.EventType = "usér.créé ☃" })},
		{name: "body over the default limit", raw: base(`{"endpoint_id":"ep1","event_type":"e","data":"`+strings.Repeat("x", DefaultMaxBodyBytes)+`"}`, nil),
			wantErr: fmt.Sprintf("over the limit of %d bytes", DefaultMaxBodyBytes)},
		{name: "body at a custom limit", raw: base(ok, nil), opts: DecodeOptions{MaxBodyBytes: len(ok)}, want: want(nil)},
		{name: "body one byte over a custom limit", raw: base(ok, nil), opts: DecodeOptions{MaxBodyBytes: len(ok) - 1},
			wantErr: fmt.Sprintf("body is %d bytes, over the limit of %d bytes", len(ok), len(ok)-1)},
		{name: "large body under a raised limit", raw: base(`{"endpoint_id":"ep1","event_type":"user.created","data":{"a":1},"pad":"`+strings.Repeat("x", 2<<20)+`"}`, nil),
			opts: DecodeOptions{MaxBodyBytes: 4 << 20}, want: want(nil)},
		{name: "deeply nested data", raw: base(`{"endpoint_id":"ep1","event_type":"user.created","data":`+strings.Repeat("[", 5000)+strings.Repeat("]", 5000)+`}`, nil),
			want: want(func(e *Event) { e.Data = json.RawMessage(strings.Repeat("[", 5000) + strings.Repeat("]", 5000)) })},
		{name: "duplicate keys: last wins", raw: base(`{"endpoint_id":"ep1","event_type":"first","event_type":"user.created","data":{"a":1}}`, nil),
			want: want(nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.raw, tt.opts)
			if tt.wantErr != "" {
				if !IsPermanent(err) {
					t.Fatalf("Decode error = %v, want a permanent error containing %q", err, tt.wantErr)
				}
				var pe *PermanentError
				if !errors.As(err, &pe) || !strings.Contains(pe.Reason, tt.wantErr) {
					t.Fatalf("reason = %q, want it to contain %q", pe.Reason, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if _, err := ulid.ParseStrict(got.ID); err != nil {
				t.Errorf("id %q is not a ULID: %v", got.ID, err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(Event{}, "ID")); diff != "" {
				t.Errorf("Decode (-want +got):\n%s", diff)
			}
		})
	}
	if len(tests) < 30 {
		t.Fatalf("only %d cases", len(tests))
	}
}

func TestDecodeWithoutSourceIsNotPermanent(t *testing.T) {
	_, err := Decode(Raw{Body: []byte(`{"endpoint_id":"e","event_type":"e","data":{}}`)}, DecodeOptions{})
	if err == nil || IsPermanent(err) {
		t.Fatalf("err = %v, want a non-permanent error", err)
	}
}

func TestDecodeDefaultsReceivedAt(t *testing.T) {
	before := time.Now()
	ev, err := Decode(Raw{SourceID: "s", Body: []byte(`{"endpoint_id":"e","event_type":"e","data":{}}`)}, DecodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ev.ReceivedAt.Before(before.Add(-time.Second)) || ev.ReceivedAt.Location() != time.UTC {
		t.Fatalf("received_at = %v, want about now in UTC", ev.ReceivedAt)
	}
}

func TestIsPermanentThroughWrapping(t *testing.T) {
	err := fmt.Errorf("handle: %w", &PermanentError{Reason: "x"})
	if !IsPermanent(err) {
		t.Fatal("wrapped permanent error not detected")
	}
	if IsPermanent(errors.New("redis: connection refused")) {
		t.Fatal("plain error detected as permanent")
	}
}

func TestEntryRoundTrip(t *testing.T) {
	ev := testEvent(t, "s1", "m1", `{"k":[1, 2 ,3]}`)
	ev.Headers["x-html"] = "<a&b>"
	args, err := appendEntryValues(nil, &ev)
	if err != nil {
		t.Fatal(err)
	}
	values := make(map[string]any, len(streamFields))
	for i, f := range streamFields {
		switch v := args[i].(type) {
		case []byte:
			values[f] = string(v)
		default:
			values[f] = v
		}
	}
	if values["headers"] != `{"x-broker-message-id":"m1","x-html":"<a&b>"}` {
		t.Errorf("headers field = %v", values["headers"])
	}
	got, err := ParseEntry(values)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ev, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	values["v"] = "2"
	if _, err := ParseEntry(values); err == nil {
		t.Error("ParseEntry accepted envelope version 2")
	}
}

// wellFormedSeeds are bodies for the fast path's differential test: the usual
// shapes and the unusual ones it must either decode as decodeGeneral does or
// leave to it.
var wellFormedSeeds = []string{
	`{"endpoint_id":"ep1","event_type":"user.created","data":{"a":1}}`,
	` {"endpoint_id" : "ep1" ,"event_type":"e", "data" : [1,-2.5e+3,0,true,false,null,"s",{},[]] } ` + "\r\n\t",
	`{"owner_id":"o1","event_type":"e","data":"x","idempotency_key":"k","endpoint_id":null,"custom_headers":null}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{},"custom_headers":{"X-Tenant":"t1","x-b":"","x-c":"caf\u00e9 \"q\""}}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{},"custom_headers":{"x-a":"1","x-a":"2"}}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{},"custom_headers":{"X-A":"1","x-a":"2"}}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{},"custom_headers":{"x-a":"1","X-A":"2"}}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{},"custom_headers":{"x-n":null}}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{},"custom_headers":{"x-n":1}}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{},"custom_headers":{"x-\u0041":"v","\u212a":"kelvin"}}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{},"custom_headers":{}}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{},"custom_headers":[]}`,
	`{"Endpoint_ID":"ep1","event_type":"e","data":{}}`,
	`{"endpoint_id":"ep1","EVENT_TYPE":"e","event_type":"f","data":{}}`,
	`{"endpoint_id":"ep1","event_\u0074ype":"e","data":{}}`,
	"{\"endpoint_id\":\"ep1\",\"event_type\":\"e\",\"data\":{},\"idempotency_\u212aey\":\"k\"}",
	"{\"endpoint_id\":\"ep1\",\"event_type\":\"e\",\"data\":{},\"custom_header\u017f\":{\"a\":\"b\"}}",
	`{"endpoint_id":"ep1","event_type":"e\u00e9\ud800\n\/","data":{"k":"\uD83D\uDE00"}}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{},"data":null}`,
	`{"endpoint_id":"ep1","event_type":"e","data":null,"data":0}`,
	`{"endpoint_id":"ep1","event_type":"e","data":-0.0E-0}`,
	`{"endpoint_id":"ep1","event_type":"e","data":01}`,
	`{"endpoint_id":"ep1","event_type":"e","data":1.}`,
	`{"endpoint_id":"ep1","event_type":"e","data":.5}`,
	`{"endpoint_id":"ep1","event_type":"e","data":-}`,
	`{"endpoint_id":"ep1","event_type":"e","data":+1}`,
	`{"endpoint_id":"ep1","event_type":"e","data":1e}`,
	`{"endpoint_id":"ep1","event_type":"e","data":nul}`,
	`{"endpoint_id":"ep1","event_type":"e","data":truex}`,
	`{"endpoint_id":"ep1","event_type":"e","data":[1,]}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{"a":1,}}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{"a"}}`,
	`{"endpoint_id":"ep1","event_type":"e","data":"\x"}`,
	`{"endpoint_id":"ep1","event_type":"e","data":"\u12g4"}`,
	"{\"endpoint_id\":\"ep1\",\"event_type\":\"e\",\"data\":\"tab\there\"}",
	"{\"endpoint_id\":\"ep1\",\"event_type\":\"e\",\"data\":\"\xed\xa0\x80\"}",
	"{\"endpoint_id\":\"ep1\",\"event_type\":\"e\",\"data\":\"\xc3\"}",
	"{\"endpoint_id\":\"ep1\",\"event_type\":\"e\",\"data\":{}}\v",
	"\v{\"endpoint_id\":\"ep1\",\"event_type\":\"e\",\"data\":{}}",
	"\u00a0{\"endpoint_id\":\"ep1\",\"event_type\":\"e\",\"data\":{}}",
	`{"endpoint_id":"ep1","event_type":"e","data":{}}{}`,
	`{"endpoint_id":"ep1","event_type":"e","data":{}`,
	`{"endpoint_id":"ep1","event_type":"  ","data":{}}`,
	`{"endpoint_id":" ","event_type":"e","data":{}}`,
	`{"endpoint_id":1,"event_type":"e","data":{}}`,
	`{"endpoint_id":"ep1","event_type":"e","data":` + strings.Repeat("[", 600) + strings.Repeat("]", 600) + `}`,
	`{"endpoint_id":"ep1","event_type":"e","data":` + strings.Repeat(`{"a":`, 100) + "1" + strings.Repeat("}", 100) + `}`,
	`{}`,
	`[]`,
	``,
}

// TestDecodeWellFormedMatchesGeneral checks that the fast path decodes what it
// accepts exactly as the general path does, that it accepts the usual
// messages, and that Decode gives the same result either way.
func TestDecodeWellFormedMatchesGeneral(t *testing.T) {
	accepted := 0
	for _, body := range wellFormedSeeds {
		for _, mt := range []string{"", "fanout", "Broadcast", "x"} {
			if checkWellFormed(t, body, mt) {
				accepted++
			}
		}
	}
	if accepted < 20 {
		t.Fatalf("the fast path accepted only %d of the seeds", accepted)
	}
	raw := Raw{SourceID: "s", Body: []byte(wellFormedSeeds[0])}
	if _, ok := decodeWellFormed(raw, raw.Body); !ok {
		t.Fatal("the fast path refused the usual message")
	}
}

func FuzzDecodeWellFormed(f *testing.F) {
	for _, body := range wellFormedSeeds {
		f.Add(body, "")
	}
	f.Add(wellFormedSeeds[2], "fanout")
	f.Fuzz(func(t *testing.T, body, mt string) {
		checkWellFormed(t, body, mt)
	})
}

// checkWellFormed decodes body with both paths and reports whether the fast
// path accepted it.
func checkWellFormed(t *testing.T, body, mt string) bool {
	t.Helper()
	raw := Raw{
		ProjectID: "p", SourceID: "s", Broker: "kafka", MessageID: "t/0/1", Body: []byte(body),
		Headers:    map[string]string{"X-Convoy-Message-Type": mt, "X-A": "broker", "content-type": "application/json"},
		ReceivedAt: time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC),
	}
	fast, ok := decodeWellFormed(raw, raw.Body)
	general, err := decodeGeneral(raw, raw.Body)
	if !ok {
		return false
	}
	if err != nil {
		t.Fatalf("body %q: the fast path accepted what the general path refuses: %v", body, err)
	}
	if diff := cmp.Diff(general, fast); diff != "" {
		t.Fatalf("body %q (-general +fast):\n%s", body, diff)
	}
	return true
}
