package dispatch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func redisAddr() string {
	if a := os.Getenv("SLUICE_TEST_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9_]+`)

// testPrefix is a key prefix no other test or engineer uses.
func testPrefix(tb testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "test:dispatch:" + unsafeChars.ReplaceAllString(tb.Name(), "_") + ":" + hex.EncodeToString(b[:])
}

// sharedRedis connects to the shared test Redis and removes every key under
// prefix when the test ends.
func sharedRedis(tb testing.TB, prefix string) *redis.Client {
	tb.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr()})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		tb.Fatalf("redis at %s: %v", redisAddr(), err)
	}
	tb.Cleanup(func() {
		deleteKeys(tb, rdb, prefix)
		_ = rdb.Close()
	})
	return rdb
}

// deleteKeys unlinks every key of a queue with this prefix, tagged or not.
func deleteKeys(tb testing.TB, rdb redis.UniversalClient, prefix string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, pattern := range []string{prefix + ":*", "{" + prefix + ":*"} {
		iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
		var batch []string
		for iter.Next(ctx) {
			batch = append(batch, iter.Val())
			if len(batch) == 1000 {
				rdb.Unlink(ctx, batch...)
				batch = batch[:0]
			}
		}
		if len(batch) > 0 {
			rdb.Unlink(ctx, batch...)
		}
		if err := iter.Err(); err != nil {
			tb.Logf("clean up %s: %v", pattern, err)
		}
	}
}

// testEvent is a decoded event of source src with broker message id id.
func testEvent(tb testing.TB, src, id string, data string) Event {
	tb.Helper()
	ev, err := Decode(Raw{
		ProjectID: "proj1",
		SourceID:  src,
		Broker:    "kafka",
		MessageID: id,
		Body:      []byte(fmt.Sprintf(`{"endpoint_id":"ep1","event_type":"user.created","data":%s}`, data)),
	}, DecodeOptions{})
	if err != nil {
		tb.Fatalf("decode: %v", err)
	}
	return ev
}

// streamEvents reads the whole dispatch stream.
func streamEvents(tb testing.TB, rdb redis.UniversalClient, q *Queue) []Event {
	tb.Helper()
	msgs, err := rdb.XRange(context.Background(), q.StreamKey(), "-", "+").Result()
	if err != nil {
		tb.Fatalf("xrange: %v", err)
	}
	out := make([]Event, 0, len(msgs))
	for _, m := range msgs {
		ev, err := ParseEntry(m.Values)
		if err != nil {
			tb.Fatalf("entry %s: %v", m.ID, err)
		}
		out = append(out, ev)
	}
	return out
}

// countByMessageID counts stream events per broker message id.
func countByMessageID(events []Event) map[string]int {
	n := make(map[string]int, len(events))
	for _, ev := range events {
		n[ev.BrokerMessageID]++
	}
	return n
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func payload(n int) string {
	return `{"blob":"` + strings.Repeat("x", n-len(`{"blob":""}`)) + `"}`
}
