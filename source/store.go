package source

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// ErrNotFound: no live source with that id (or mask id) in that project.
var ErrNotFound = errors.New("source not found")

// keys builds every Redis key and channel the Store uses; nothing else in
// the package spells a key. All keys carry the hash tag {<prefix>} so one
// MULTI or Lua script can touch several of them on Redis Cluster too (source
// definitions are a small data set; one slot is plenty).
//
//	{p}:source:<uid>             STRING  the Source as JSON (kept after a soft delete, with deleted_at)
//	{p}:project:<project>:sources ZSET   uids of the project's live sources, all score 0: lex order = ULID = creation order
//	{p}:sources                  ZSET    uids of every live source (score 0)
//	{p}:mask:<mask_id>           STRING  uid of the live source with that mask id
//	{p}:changes                  channel a source's uid is published after each write to it
type keys struct{ tag string }

func (k keys) source(uid string) string        { return k.tag + ":source:" + uid }
func (k keys) project(projectID string) string { return k.tag + ":project:" + projectID + ":sources" }
func (k keys) all() string                     { return k.tag + ":sources" }
func (k keys) mask(maskID string) string       { return k.tag + ":mask:" + maskID }
func (k keys) changes() string                 { return k.tag + ":changes" }

// createScript stores a new source and its index entries atomically.
//
//	KEYS[1] source key   KEYS[2] project index   KEYS[3] all index   KEYS[4] mask key
//	ARGV[1] source JSON  ARGV[2] uid             ARGV[3] changes channel
//
// Returns 0 (and writes nothing) when the mask id is taken, else 1.
var createScript = redis.NewScript(`
if redis.call('SET', KEYS[4], ARGV[2], 'NX') == false then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
`)

// Store keeps source definitions in Redis. It is safe for concurrent use,
// also across processes sharing the same Redis and prefix.
type Store struct {
	rdb  redis.UniversalClient
	keys keys
	now  func() time.Time
}

// New returns a Store keeping its keys under prefix (e.g. "sluice").
func New(rdb redis.UniversalClient, prefix string) *Store {
	return &Store{rdb: rdb, keys: keys{tag: "{" + prefix + "}"}, now: func() time.Time { return time.Now().UTC() }}
}

// Create stores s as a new source of projectID, assigning uid, mask_id,
// timestamps and revision 1. It does not validate; callers do.
func (s *Store) Create(ctx context.Context, projectID string, src Source) (Source, error) {
	src, _, err := s.CreateStored(ctx, projectID, src)
	return src, err
}

// CreateStored is Create that also returns the JSON it stored (as Stored
// would return it), so callers can answer without encoding the source again.
func (s *Store) CreateStored(ctx context.Context, projectID string, src Source) (Source, string, error) {
	now := s.now()
	src.UID = ulid.Make().String()
	src.ProjectID = projectID
	src.CreatedAt, src.UpdatedAt, src.DeletedAt = now, now, nil
	src.Revision = 1
	for range 3 { // a mask collision among 62^16 is a curiosity, but never overwrite one
		src.MaskID = NewMaskID()
		b, err := json.Marshal(src)
		if err != nil {
			return Source{}, "", fmt.Errorf("encode source: %w", err)
		}
		k := s.keys
		ok, err := createScript.Run(ctx, s.rdb,
			[]string{k.source(src.UID), k.project(projectID), k.all(), k.mask(src.MaskID)},
			b, src.UID, k.changes()).Int()
		if err != nil {
			return Source{}, "", fmt.Errorf("create source %s: %w", src.UID, err)
		}
		if ok == 1 {
			return src, string(b), nil
		}
	}
	return Source{}, "", fmt.Errorf("create source %s: no free mask id", src.UID)
}

// Get returns projectID's live source id, or ErrNotFound.
func (s *Store) Get(ctx context.Context, projectID, id string) (Source, error) {
	src, err := s.ByID(ctx, id)
	if err != nil {
		return Source{}, err
	}
	if src.ProjectID != projectID {
		return Source{}, ErrNotFound
	}
	return src, nil
}

// ByID returns the live source id of any project, or ErrNotFound (also
// when it was deleted).
func (s *Store) ByID(ctx context.Context, id string) (Source, error) {
	b, err := s.rdb.Get(ctx, s.keys.source(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return Source{}, ErrNotFound
	}
	if err != nil {
		return Source{}, fmt.Errorf("get source %s: %w", id, err)
	}
	src, err := decodeStored(b)
	if err != nil {
		return Source{}, fmt.Errorf("get source %s: %w", id, err)
	}
	if src.DeletedAt != nil {
		return Source{}, ErrNotFound
	}
	return src, nil
}

// Stored returns source id's JSON exactly as kept in Redis, whatever its
// project and also when soft-deleted, or ErrNotFound when there is none.
// DecodeStored decodes it. Callers that keep decoded sources compare it to
// tell whether the source changed since (every write changes it: the
// revision is bumped).
func (s *Store) Stored(ctx context.Context, id string) (string, error) {
	b, err := s.rdb.Get(ctx, s.keys.source(id)).Result()
	if errors.Is(err, redis.Nil) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("get source %s: %w", id, err)
	}
	return b, nil
}

// DecodeStored decodes a source as Stored returns it.
func DecodeStored(b string) (Source, error) {
	return decodeStored([]byte(b))
}

// ByMaskID returns the live source with that mask id, or ErrNotFound.
func (s *Store) ByMaskID(ctx context.Context, maskID string) (Source, error) {
	id, err := s.rdb.Get(ctx, s.keys.mask(maskID)).Result()
	if errors.Is(err, redis.Nil) {
		return Source{}, ErrNotFound
	}
	if err != nil {
		return Source{}, fmt.Errorf("get mask id: %w", err)
	}
	return s.ByID(ctx, id)
}

// Update applies mutate to projectID's live source id and stores the result
// with a bumped revision, atomically: a concurrent write makes it retry with
// the fresh value, so no write is lost. mutate may run more than once and
// must only change its argument; an error from it is returned unchanged and
// nothing is stored. uid, mask_id, project_id and created_at cannot change.
func (s *Store) Update(ctx context.Context, projectID, id string, mutate func(*Source) error) (Source, error) {
	var out Source
	err := s.modify(ctx, projectID, id, func(tx *redis.Tx, cur Source) (func(redis.Pipeliner), error) {
		next := cur // cur is freshly decoded on every attempt: mutate may change it freely
		if err := mutate(&next); err != nil {
			return nil, err
		}
		next.UID, next.MaskID, next.ProjectID, next.CreatedAt, next.DeletedAt = cur.UID, cur.MaskID, cur.ProjectID, cur.CreatedAt, nil
		next.Revision = cur.Revision + 1
		next.UpdatedAt = s.now()
		b, err := json.Marshal(next)
		if err != nil {
			return nil, fmt.Errorf("encode source: %w", err)
		}
		out = next
		return func(p redis.Pipeliner) {
			p.Set(ctx, s.keys.source(id), b, 0)
			p.Publish(ctx, s.keys.changes(), id)
		}, nil
	})
	if err != nil {
		return Source{}, err
	}
	return out, nil
}

// Delete soft-deletes projectID's live source id: it keeps its definition
// with deleted_at set, leaves every index and no longer resolves.
func (s *Store) Delete(ctx context.Context, projectID, id string) error {
	return s.modify(ctx, projectID, id, func(tx *redis.Tx, cur Source) (func(redis.Pipeliner), error) {
		now := s.now()
		cur.DeletedAt = &now
		cur.UpdatedAt = now
		cur.Revision++
		b, err := json.Marshal(cur)
		if err != nil {
			return nil, fmt.Errorf("encode source: %w", err)
		}
		k := s.keys
		return func(p redis.Pipeliner) {
			p.Set(ctx, k.source(id), b, 0)
			p.ZRem(ctx, k.project(cur.ProjectID), id)
			p.ZRem(ctx, k.all(), id)
			p.Del(ctx, k.mask(cur.MaskID))
			p.Publish(ctx, k.changes(), id)
		}, nil
	})
}

// modify runs an optimistic WATCH/MULTI transaction on one source, retrying
// while other writers get in first.
func (s *Store) modify(ctx context.Context, projectID, id string, fn func(*redis.Tx, Source) (func(redis.Pipeliner), error)) error {
	key := s.keys.source(id)
	txf := func(tx *redis.Tx) error {
		b, err := tx.Get(ctx, key).Bytes()
		if errors.Is(err, redis.Nil) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		cur, err := decodeStored(b)
		if err != nil {
			return err
		}
		if cur.DeletedAt != nil || cur.ProjectID != projectID {
			return ErrNotFound
		}
		write, err := fn(tx, cur)
		if err != nil {
			return err
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error { write(p); return nil })
		return err
	}
	for {
		err := s.rdb.Watch(ctx, txf, key)
		if !errors.Is(err, redis.TxFailedErr) {
			if err != nil && !errors.Is(err, ErrNotFound) && !isFieldErr(err) {
				return fmt.Errorf("write source %s: %w", id, err)
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("write source %s: %w", id, err)
		}
	}
}

func isFieldErr(err error) bool {
	var fe *FieldError
	return errors.As(err, &fe)
}

// ListOptions filters and pages List.
type ListOptions struct {
	Type     string // exact source type; empty = any
	Provider string // exact provider; empty = any
	Query    string // case-insensitive substring of the name; empty = any
	PerPage  int    // page size, default 20, at most 100
	Cursor   string // next_page_cursor of the previous page; empty = first page
}

// Page is one page of List, newest source first.
type Page struct {
	Sources    []Source
	HasNext    bool
	NextCursor string // pass as ListOptions.Cursor for the next page; empty on the last
}

// List returns a page of projectID's live sources, newest first.
func (s *Store) List(ctx context.Context, projectID string, o ListOptions) (Page, error) {
	per := o.PerPage
	if per <= 0 {
		per = 20
	}
	per = min(per, 100)
	q := strings.ToLower(o.Query)
	hi := "+"
	if o.Cursor != "" {
		hi = "(" + o.Cursor
	}
	var page Page
	batch := int64(per + 1)
	if o.Type != "" || o.Provider != "" || q != "" {
		batch = 200
	}
	for {
		ids, err := s.rdb.ZRevRangeByLex(ctx, s.keys.project(projectID), &redis.ZRangeBy{Max: hi, Min: "-", Count: batch}).Result()
		if err != nil {
			return Page{}, fmt.Errorf("list sources: %w", err)
		}
		srcs, err := s.load(ctx, ids)
		if err != nil {
			return Page{}, fmt.Errorf("list sources: %w", err)
		}
		for _, src := range srcs {
			if src.ProjectID != projectID ||
				o.Type != "" && src.Type != o.Type ||
				o.Provider != "" && src.Provider != o.Provider ||
				q != "" && !strings.Contains(strings.ToLower(src.Name), q) {
				continue
			}
			if len(page.Sources) == per {
				page.HasNext = true
				page.NextCursor = page.Sources[per-1].UID
				return page, nil
			}
			page.Sources = append(page.Sources, src)
		}
		if int64(len(ids)) < batch {
			return page, nil
		}
		hi = "(" + ids[len(ids)-1]
	}
}

// All returns every source of every project that is not deleted (for the
// supervisor's resync).
func (s *Store) All(ctx context.Context) ([]Source, error) {
	ids, err := s.rdb.ZRange(ctx, s.keys.all(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("list all sources: %w", err)
	}
	var out []Source
	for len(ids) > 0 {
		n := min(len(ids), 500)
		srcs, err := s.load(ctx, ids[:n])
		if err != nil {
			return nil, fmt.Errorf("list all sources: %w", err)
		}
		out = append(out, srcs...)
		ids = ids[n:]
	}
	return out, nil
}

// load fetches the live sources among ids, in order, skipping missing and
// deleted ones.
func (s *Store) load(ctx context.Context, ids []string) ([]Source, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	ks := make([]string, len(ids))
	for i, id := range ids {
		ks[i] = s.keys.source(id)
	}
	vals, err := s.rdb.MGet(ctx, ks...).Result()
	if err != nil {
		return nil, err
	}
	out := make([]Source, 0, len(vals))
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue
		}
		src, err := decodeStored([]byte(str))
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", ids[i], err)
		}
		if src.DeletedAt == nil {
			out = append(out, src)
		}
	}
	return out, nil
}

// Watch subscribes to change notices and calls changed(sourceID) for each
// one until ctx is done (returns nil) or the subscription fails (returns
// the error). Calls ready() once subscribed if ready != nil. Notices sent
// while not subscribed are lost: callers resync with All after (re)starting.
func (s *Store) Watch(ctx context.Context, ready func(), changed func(sourceID string)) error {
	ps := s.rdb.Subscribe(ctx, s.keys.changes())
	defer ps.Close()
	// go-redis does not abort a blocked read when ctx ends: closing does.
	stop := context.AfterFunc(ctx, func() { ps.Close() })
	defer stop()
	if _, err := ps.Receive(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("subscribe to source changes: %w", err)
	}
	if ready != nil {
		ready()
	}
	for {
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("receive source change: %w", err)
		}
		changed(msg.Payload)
	}
}

func decodeStored(b []byte) (Source, error) {
	var src Source
	if err := json.Unmarshal(b, &src); err != nil {
		return Source{}, fmt.Errorf("decode stored source: %w", err)
	}
	return src, nil
}

// NewMaskID returns a random 16-character [A-Za-z0-9] token.
func NewMaskID() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	out := make([]byte, 0, 16)
	var buf [32]byte
	for len(out) < 16 {
		rand.Read(buf[:]) // never fails (crypto/rand)
		for _, c := range buf {
			if c < 248 && len(out) < 16 { // 248 = 4*62: no modulo bias
				out = append(out, alphabet[c%62])
			}
		}
	}
	return string(out)
}

// Ping checks that Redis answers (readiness).
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis ping: %w", err)
	}
	return nil
}
