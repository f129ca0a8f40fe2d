package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// deadLetter is a dead letter as the API renders it.
type deadLetter struct {
	ID        string `json:"id"`
	ProjectID string `json:"project_id"`
	SourceID  string `json:"source_id"`
	Broker    string `json:"broker"`
	MessageID string `json:"message_id"`
	Reason    string `json:"reason"`
	Body      string `json:"body"`
}

type deadLetterPage struct {
	Content    []deadLetter `json:"content"`
	Pagination struct {
		PerPage        int    `json:"per_page"`
		HasNextPage    bool   `json:"has_next_page"`
		NextPageCursor string `json:"next_page_cursor"`
	} `json:"pagination"`
}

// TestE2EDeadLetters dead-letters messages over the size limit, lists them
// page by page through the API, and replays one after the limit was raised:
// it moves to the dispatch stream. A still-malformed one is answered 422 and
// stays; unknown entries, cursors and page sizes are 4xx.
func TestE2EDeadLetters(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "SLUICE_MAX_MESSAGE_BYTES=200")
	e := newAMQPE2E(t)
	body := e.sourceBody(1)
	delete(body["pub_sub"].(map[string]any)["amqp"].(map[string]any), "deadLetterExchange")
	src := d.CreateSource("p1", body)
	waitWorkersRunning(d, "p1", src.UID, 1)
	base := "/api/v1/projects/p1/sources/" + src.UID + "/deadletters"

	// 5 messages over 200 bytes, then one malformed at any size.
	big := strings.Repeat("x", 300)
	e.publishRaw("big", 5, `{"endpoint_id":"ep-1","event_type":"t","data":{"seq":%d,"pad":"`+big+`"}}`)
	e.publishRaw("bad", 1, `{"data":{"seq":%d}}`)
	var entries []deadLetter
	deadline := time.Now().Add(time.Minute)
	for len(entries) < 6 {
		if time.Now().After(deadline) {
			t.Fatalf("dead letters after a minute: %d, want 6", len(entries))
		}
		entries = nil
		cursor := ""
		for {
			code, out := d.Do(http.MethodGet, base+"?perPage=4&next_page_cursor="+cursor, nil)
			if code != http.StatusOK {
				t.Fatalf("list dead letters: %d %s", code, out)
			}
			var page envelope[deadLetterPage]
			if err := json.Unmarshal(out, &page); err != nil {
				t.Fatal(err)
			}
			if len(page.Data.Content) > 4 {
				t.Fatalf("page of %d entries with perPage=4", len(page.Data.Content))
			}
			entries = append(entries, page.Data.Content...)
			if !page.Data.Pagination.HasNextPage {
				break
			}
			cursor = page.Data.Pagination.NextPageCursor
		}
		time.Sleep(50 * time.Millisecond)
	}
	var tooBig, malformed []deadLetter
	for _, dl := range entries {
		switch {
		case strings.Contains(dl.Reason, "over the limit"):
			tooBig = append(tooBig, dl)
		case strings.Contains(dl.Reason, "event_type is required"):
			malformed = append(malformed, dl)
		default:
			t.Fatalf("unexpected dead letter %+v", dl)
		}
		if dl.SourceID != src.UID || dl.ProjectID != "p1" || dl.Broker != "amqp" || !strings.Contains(dl.Body, `"seq"`) {
			t.Fatalf("dead letter %+v lacks its source", dl)
		}
	}
	if len(tooBig) != 5 || len(malformed) != 1 {
		t.Fatalf("%d too big and %d malformed, want 5 and 1", len(tooBig), len(malformed))
	}

	// Still malformed: 422 with the reason, and it stays.
	code, out := d.Do(http.MethodPost, base+"/"+malformed[0].ID+"/replay", nil)
	if code != http.StatusUnprocessableEntity || !strings.Contains(string(out), "event_type is required") {
		t.Fatalf("replay of a malformed message: %d %s", code, out)
	}
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{http.MethodPost, base + "/1-0/replay", http.StatusNotFound},
		{http.MethodPost, base + "/not-an-id/replay", http.StatusNotFound},
		{http.MethodGet, base + "?next_page_cursor=bogus", http.StatusBadRequest},
		{http.MethodGet, base + "?perPage=0", http.StatusBadRequest},
		{http.MethodGet, "/api/v1/projects/p2/sources/" + src.UID + "/deadletters", http.StatusNotFound},
	} {
		if code, out := d.Do(c.method, c.path, nil); code != c.want {
			t.Errorf("%s %s = %d %s, want %d", c.method, c.path, code, out, c.want)
		}
	}

	// Raise the limit: the too-big message replays into the dispatch stream.
	d.Kill()
	d.SetEnv("SLUICE_MAX_MESSAGE_BYTES=1048576")
	d.Start()
	code, out = d.Do(http.MethodPost, base+"/"+tooBig[0].ID+"/replay", nil)
	if code != http.StatusOK {
		t.Fatalf("replay after raising the limit: %d %s", code, out)
	}
	events := d.Events()
	if len(events) != 1 || events[0].BrokerMessageID != tooBig[0].MessageID || events[0].SourceID != src.UID {
		t.Fatalf("dispatch stream after the replay: %+v", events)
	}
	if code, _ := d.Do(http.MethodPost, base+"/"+tooBig[0].ID+"/replay", nil); code != http.StatusNotFound {
		t.Errorf("a replayed dead letter can be replayed again: %d", code)
	}
}
