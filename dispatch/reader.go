package dispatch

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ReaderOptions configure a Reader.
type ReaderOptions struct {
	// Prefix is the queue's key prefix. Default "sluice".
	Prefix string
	// Group is the consumer group; readers sharing a group share the work.
	// Required.
	Group string
	// Consumer names this reader within the group; keep it stable across
	// restarts so the reader resumes its own pending entries. Required.
	Consumer string
	// Start is where a group that does not exist yet starts: "$" (only new
	// entries) or "0" (the whole stream). Default "$".
	Start string
	// Count is the most entries read at once. Default 100.
	Count int64
	// Block is how long one read waits for new entries; it also bounds how
	// long Run takes to notice ctx is done. Default 1s.
	Block time.Duration
	// ClaimIdle is how long an entry stays pending with another consumer (a
	// crashed one, or a handler that failed) before this reader claims it.
	// Default 1m.
	ClaimIdle time.Duration
	// Logger receives the reader's logs. Default: discarded.
	Logger *slog.Logger
}

// Reader reads the dispatch stream with a Redis consumer group, for the
// downstream delivery system: every entry is handled by one reader of the
// group and acknowledged (XACK) after its handler returns nil. Entries whose
// handler failed, or that a crashed reader held, are claimed again once
// they have been pending for ClaimIdle, so delivery is at least once.
type Reader struct {
	rdb  redis.UniversalClient
	opts ReaderOptions
	key  string
	log  *slog.Logger
}

// NewReader returns a Reader on rdb.
func NewReader(rdb redis.UniversalClient, opts ReaderOptions) (*Reader, error) {
	if opts.Group == "" || opts.Consumer == "" {
		return nil, errors.New("dispatch reader: group and consumer are required")
	}
	opts.Start = cmp.Or(opts.Start, "$")
	opts.Count = cmp.Or(opts.Count, 100)
	opts.Block = cmp.Or(opts.Block, time.Second)
	opts.ClaimIdle = cmp.Or(opts.ClaimIdle, time.Minute)
	return &Reader{
		rdb:  rdb,
		opts: opts,
		key:  keys{prefix: cmp.Or(opts.Prefix, "sluice")}.stream(),
		log:  cmp.Or(opts.Logger, slog.New(slog.DiscardHandler)).With("stream", keys{prefix: cmp.Or(opts.Prefix, "sluice")}.stream(), "group", opts.Group),
	}, nil
}

// Run reads and handles entries until ctx is done, then returns nil; it
// returns an error when Redis fails (the caller restarts it). handle is
// called for one event at a time; a nil return acknowledges the entry, an
// error leaves it pending to be claimed again after ClaimIdle. An entry
// this version cannot parse is logged and left pending.
func (r *Reader) Run(ctx context.Context, handle func(context.Context, Event) error) error {
	err := r.rdb.XGroupCreateMkStream(ctx, r.key, r.opts.Group, r.opts.Start).Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create consumer group %q on %s: %w", r.opts.Group, r.key, err)
	}
	// First this consumer's own pending entries (from before a restart),
	// then new ones.
	from := "0"
	var lastClaim time.Time
	for ctx.Err() == nil {
		if time.Since(lastClaim) >= r.opts.ClaimIdle/2 {
			if err := r.claim(ctx, handle); err != nil {
				return r.stopped(ctx, err)
			}
			lastClaim = time.Now()
		}
		block := r.opts.Block
		if from == "0" {
			block = -1 // no BLOCK: reading history
		}
		res, err := r.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: r.opts.Group, Consumer: r.opts.Consumer,
			Streams: []string{r.key, from}, Count: r.opts.Count, Block: block,
		}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return r.stopped(ctx, fmt.Errorf("read group %q: %w", r.opts.Group, err))
		}
		var msgs []redis.XMessage
		if len(res) > 0 {
			msgs = res[0].Messages
		}
		if from == "0" && len(msgs) == 0 {
			from = ">"
			continue
		}
		if err := r.handle(ctx, msgs, handle); err != nil {
			return r.stopped(ctx, err)
		}
		if from == "0" && len(msgs) > 0 {
			from = msgs[len(msgs)-1].ID // page through the own pending entries
		}
	}
	return nil
}

func (r *Reader) stopped(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// claim takes over entries pending with any consumer for longer than
// ClaimIdle and handles them.
func (r *Reader) claim(ctx context.Context, handle func(context.Context, Event) error) error {
	start := "0-0"
	for {
		msgs, next, err := r.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: r.key, Group: r.opts.Group, Consumer: r.opts.Consumer,
			MinIdle: r.opts.ClaimIdle, Start: start, Count: r.opts.Count,
		}).Result()
		if err != nil {
			return fmt.Errorf("claim idle entries of group %q: %w", r.opts.Group, err)
		}
		if err := r.handle(ctx, msgs, handle); err != nil {
			return err
		}
		if next == "0-0" || ctx.Err() != nil {
			return nil
		}
		start = next
	}
}

// handle runs handle on each entry and acknowledges those it accepted.
func (r *Reader) handle(ctx context.Context, msgs []redis.XMessage, handle func(context.Context, Event) error) error {
	done := make([]string, 0, len(msgs))
	for _, m := range msgs {
		if ctx.Err() != nil {
			break
		}
		if m.Values == nil {
			done = append(done, m.ID) // deleted since it was delivered: clear it from the pending list
			continue
		}
		ev, err := ParseEntry(m.Values)
		if err != nil {
			r.log.Error("unreadable dispatch entry left pending", "entry_id", m.ID, "error", err)
			continue
		}
		if err := handle(ctx, ev); err != nil {
			r.log.Warn("handler failed, entry left pending", "entry_id", m.ID, "event_id", ev.ID, "error", err)
			continue
		}
		done = append(done, m.ID)
	}
	if len(done) == 0 {
		return nil
	}
	// Ack what was handled even when ctx ended meanwhile.
	if err := r.rdb.XAck(context.WithoutCancel(ctx), r.key, r.opts.Group, done...).Err(); err != nil {
		return fmt.Errorf("ack %d entries: %w", len(done), err)
	}
	return nil
}

// TailOptions configure Tail.
type TailOptions struct {
	// Prefix is the queue's key prefix. Default "sluice".
	Prefix string
	// From is where to start: "$" (entries added from now on), "0" (the whole
	// stream) or an entry id (entries after it). Default "$".
	From string
	// Block is how long one read waits for new entries. Default 1s.
	Block time.Duration
}

// Tail writes the dispatch stream's entries to w as JSON lines (the Event
// JSON with the stream entry id first, as "entry_id") until ctx is done; it
// then returns nil. It reads without a consumer group, so it takes nothing
// from downstream readers. An entry it cannot parse is written as
// {"entry_id":...,"error":...}.
func Tail(ctx context.Context, rdb redis.UniversalClient, opts TailOptions, w io.Writer) error {
	key := keys{prefix: cmp.Or(opts.Prefix, "sluice")}.stream()
	block := cmp.Or(opts.Block, time.Second)
	last := cmp.Or(opts.From, "$")
	if last == "$" {
		// Resolve "$" once: reading again from "$" would miss entries added
		// between two reads.
		msgs, err := rdb.XRevRangeN(ctx, key, "+", "-", 1).Result()
		if err != nil {
			return fmt.Errorf("tail %s: %w", key, err)
		}
		last = "0-0"
		if len(msgs) > 0 {
			last = msgs[0].ID
		}
	}
	for ctx.Err() == nil {
		res, err := rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{key, last}, Count: 100, Block: block}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("tail %s: %w", key, err)
		}
		for _, s := range res {
			for _, m := range s.Messages {
				if err := writeTailLine(w, m); err != nil {
					return fmt.Errorf("tail %s: %w", key, err)
				}
				last = m.ID
			}
		}
	}
	return nil
}

func writeTailLine(w io.Writer, m redis.XMessage) error {
	var buf bytes.Buffer
	idJSON, _ := json.Marshal(m.ID)
	buf.WriteString(`{"entry_id":`)
	buf.Write(idJSON)
	ev, err := ParseEntry(m.Values)
	if err != nil {
		msg, _ := json.Marshal(err.Error())
		buf.WriteString(`,"error":`)
		buf.Write(msg)
		buf.WriteString("}\n")
	} else {
		var evJSON bytes.Buffer
		enc := json.NewEncoder(&evJSON)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(ev); err != nil {
			return fmt.Errorf("encode entry %s: %w", m.ID, err)
		}
		buf.WriteByte(',')
		buf.Write(evJSON.Bytes()[1:]) // the object without its "{", newline included
	}
	_, err = w.Write(buf.Bytes())
	return err
}
