package dispatch

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestOnRedisCluster runs the queue's scripts on a real (one-node) Redis
// Cluster, which refuses a script whose keys hash to different slots.
func TestOnRedisCluster(t *testing.T) {
	ctx := context.Background()
	srv := startPrivateRedis(t, "--cluster-enabled", "yes", "--appendonly", "no")
	admin := redis.NewClient(&redis.Options{Addr: srv.addr()})
	t.Cleanup(func() { _ = admin.Close() })
	if err := admin.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "cluster state ok", func() bool {
		info, err := admin.ClusterInfo(ctx).Result()
		return err == nil && strings.Contains(info, "cluster_state:ok")
	})
	// The guard this test relies on: keys of two slots in one script fail.
	if err := admin.Eval(ctx, "return 1", []string{"a", "b"}).Err(); err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("cross-slot script: %v, want CROSSSLOT", err)
	}

	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.addr()}})
	t.Cleanup(func() { _ = rdb.Close() }) // after the reader has stopped
	q := New(rdb, Options{Prefix: "sluice", PollInterval: 10 * time.Millisecond})
	evs := batchOf(t, "s1", 20)
	for range 2 {
		if _, err := q.Enqueue(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := rdb.XLen(ctx, q.StreamKey()).Result(); err != nil || n != 20 {
		t.Fatalf("stream length %d, %v; want 20", n, err)
	}

	bad := Raw{ProjectID: "p", SourceID: "s1", Broker: "sqs", MessageID: "m", Body: []byte(`{}`)}
	for range 2 {
		if err := q.DeadLetter(ctx, bad, "event_type is required"); err != nil {
			t.Fatal(err)
		}
	}
	list, _, err := q.DeadLetters(ctx, "s1", "", 10)
	if err != nil || len(list) != 1 {
		t.Fatalf("dead letters %d, %v; want 1", len(list), err)
	}
	if _, err := q.Replay(ctx, "s1", list[0].EntryID); !IsPermanent(err) {
		t.Fatalf("replay: %v, want the permanent error", err)
	}

	r, err := NewReader(rdb, ReaderOptions{Group: "g", Consumer: "c", Start: "0", Block: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	h := &handled{counts: map[string]int{}}
	runReader(t, r, func(_ context.Context, ev Event) error { h.add(ev); return nil })
	waitFor(t, "all events read", func() bool { return len(h.snapshot()) == 20 })
}
