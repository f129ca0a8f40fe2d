package source_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sluice-io/sluice/source"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testRedis connects to the shared Redis and returns a unique prefix whose
// keys are deleted when the test ends.
func testRedis(t testing.TB) (redis.UniversalClient, string) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	ctx := context.Background()
	require.NoError(t, rdb.Ping(ctx).Err(), "the tests need Redis on 127.0.0.1:6379")
	var b [6]byte
	rand.Read(b[:])
	prefix := "test:" + t.Name() + ":" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		iter := rdb.Scan(ctx, 0, "{"+prefix+"}*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
		rdb.Close()
	})
	return rdb, prefix
}

func kafkaSource(name string) source.Source {
	return source.Source{
		Name: name, Type: source.TypePubSub, Verifier: &source.Verifier{Type: "noop"},
		PubSub: &source.PubSub{Type: source.PubSubKafka, Workers: 2, Kafka: &source.Kafka{
			Brokers: []string{"127.0.0.1:9092"}, TopicName: "events",
		}},
	}
}

func TestStoreCreateGetSurvivesNewStore(t *testing.T) {
	rdb, prefix := testRedis(t)
	ctx := t.Context()
	st := source.New(rdb, prefix)
	created, err := st.Create(ctx, "p1", kafkaSource("orders"))
	require.NoError(t, err)
	require.Len(t, created.MaskID, 16)
	require.Equal(t, int64(1), created.Revision)

	// A new Store (as after a restart) on the same Redis sees it.
	st2 := source.New(rdb, prefix)
	got, err := st2.Get(ctx, "p1", created.UID)
	require.NoError(t, err)
	require.Equal(t, created.UID, got.UID)
	require.Equal(t, "orders", got.Name)
	require.Equal(t, created.PubSub, got.PubSub)
	byMask, err := st2.ByMaskID(ctx, created.MaskID)
	require.NoError(t, err)
	require.Equal(t, created.UID, byMask.UID)

	_, err = st2.Get(ctx, "p2", created.UID)
	require.ErrorIs(t, err, source.ErrNotFound, "another project's source")
}

func TestStoreUpdateDeleteAll(t *testing.T) {
	rdb, prefix := testRedis(t)
	ctx := t.Context()
	st := source.New(rdb, prefix)
	a, err := st.Create(ctx, "p1", kafkaSource("a"))
	require.NoError(t, err)
	b, err := st.Create(ctx, "p2", kafkaSource("b"))
	require.NoError(t, err)

	up, err := st.Update(ctx, "p1", a.UID, func(s *source.Source) error { s.IsDisabled = true; return nil })
	require.NoError(t, err)
	require.True(t, up.IsDisabled)
	require.Equal(t, int64(2), up.Revision)

	boom := errors.New("boom")
	_, err = st.Update(ctx, "p1", a.UID, func(s *source.Source) error { s.Name = "changed"; return boom })
	require.ErrorIs(t, err, boom)
	got, err := st.Get(ctx, "p1", a.UID)
	require.NoError(t, err)
	require.Equal(t, "a", got.Name, "a failed mutate stores nothing")

	_, err = st.Update(ctx, "p2", a.UID, func(*source.Source) error { return nil })
	require.ErrorIs(t, err, source.ErrNotFound)

	all, err := st.All(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{a.UID, b.UID}, []string{all[0].UID, all[1].UID})

	require.ErrorIs(t, st.Delete(ctx, "p2", a.UID), source.ErrNotFound)
	require.NoError(t, st.Delete(ctx, "p1", a.UID))
	_, err = st.Get(ctx, "p1", a.UID)
	require.ErrorIs(t, err, source.ErrNotFound)
	_, err = st.ByMaskID(ctx, a.MaskID)
	require.ErrorIs(t, err, source.ErrNotFound)
	require.ErrorIs(t, st.Delete(ctx, "p1", a.UID), source.ErrNotFound)
	all, err = st.All(ctx)
	require.NoError(t, err)
	require.Len(t, all, 1)
	require.Equal(t, b.UID, all[0].UID)
	// The definition is kept (soft delete).
	n, err := rdb.Exists(ctx, "{"+prefix+"}:source:"+a.UID).Result()
	require.NoError(t, err)
	require.Equal(t, int64(1), n)
}

func TestStoreConcurrentUpdatesLoseNothing(t *testing.T) {
	rdb, prefix := testRedis(t)
	ctx := t.Context()
	st := source.New(rdb, prefix)
	s, err := st.Create(ctx, "p1", kafkaSource("c"))
	require.NoError(t, err)
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			_, err := st.Update(ctx, "p1", s.UID, func(s *source.Source) error {
				s.ForwardHeaders = append(s.ForwardHeaders, fmt.Sprintf("x-h-%d", i))
				return nil
			})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	got, err := st.Get(ctx, "p1", s.UID)
	require.NoError(t, err)
	require.Len(t, got.ForwardHeaders, n)
	require.Equal(t, int64(n+1), got.Revision)
}

func TestStoreListFilterPaginate(t *testing.T) {
	rdb, prefix := testRedis(t)
	ctx := t.Context()
	st := source.New(rdb, prefix)
	var ids []string
	for i := range 7 {
		s := kafkaSource(fmt.Sprintf("Src-%d", i))
		if i%2 == 0 {
			s.Type, s.PubSub = source.TypeHTTP, nil
		}
		c, err := st.Create(ctx, "p1", s)
		require.NoError(t, err)
		ids = append(ids, c.UID)
	}
	_, err := st.Create(ctx, "other", kafkaSource("Src-x"))
	require.NoError(t, err)

	var got []string
	cursor := ""
	pages := 0
	for {
		p, err := st.List(ctx, "p1", source.ListOptions{PerPage: 3, Cursor: cursor})
		require.NoError(t, err)
		pages++
		for _, s := range p.Sources {
			got = append(got, s.UID)
		}
		if !p.HasNext {
			require.Empty(t, p.NextCursor)
			break
		}
		cursor = p.NextCursor
	}
	require.Equal(t, 3, pages)
	want := []string{ids[6], ids[5], ids[4], ids[3], ids[2], ids[1], ids[0]}
	require.Equal(t, want, got, "newest first, every source once")

	p, err := st.List(ctx, "p1", source.ListOptions{Type: source.TypePubSub})
	require.NoError(t, err)
	require.Len(t, p.Sources, 3)
	p, err = st.List(ctx, "p1", source.ListOptions{Query: "src-4"})
	require.NoError(t, err)
	require.Len(t, p.Sources, 1)
	require.Equal(t, ids[4], p.Sources[0].UID)
	p, err = st.List(ctx, "p1", source.ListOptions{Type: source.TypeHTTP, PerPage: 2})
	require.NoError(t, err)
	require.Equal(t, []string{ids[6], ids[4]}, []string{p.Sources[0].UID, p.Sources[1].UID})
	require.True(t, p.HasNext)
	p, err = st.List(ctx, "p1", source.ListOptions{Type: source.TypeHTTP, PerPage: 2, Cursor: p.NextCursor})
	require.NoError(t, err)
	require.Equal(t, []string{ids[2], ids[0]}, []string{p.Sources[0].UID, p.Sources[1].UID})
	require.False(t, p.HasNext)
}

func TestStoreWatch(t *testing.T) {
	rdb, prefix := testRedis(t)
	ctx, cancel := context.WithCancel(t.Context())
	st := source.New(rdb, prefix)
	ready := make(chan struct{})
	changed := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		done <- st.Watch(ctx, func() { close(ready) }, func(id string) { changed <- id })
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch never became ready")
	}
	s, err := st.Create(ctx, "p1", kafkaSource("w"))
	require.NoError(t, err)
	_, err = st.Update(ctx, "p1", s.UID, func(s *source.Source) error { s.IsDisabled = true; return nil })
	require.NoError(t, err)
	require.NoError(t, st.Delete(ctx, "p1", s.UID))
	for range 3 {
		select {
		case id := <-changed:
			require.Equal(t, s.UID, id)
		case <-time.After(10 * time.Second):
			t.Fatal("missing change notice")
		}
	}
	cancel()
	require.NoError(t, <-done)
}
