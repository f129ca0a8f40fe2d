package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-io/sluice/dispatch"
)

// runTail is `sluice tail`: it prints the dispatch stream's entries as JSON
// lines, one per event, until ctx is done.
//
//	sluice tail [--from 0|$|<entry id>] [--redis-url URL] [--prefix P]
//
// The Redis URL and key prefix default to $SLUICE_REDIS_URL and
// $SLUICE_PREFIX, else redis://127.0.0.1:6379/0 and "sluice".
func runTail(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	redisURL := fs.String("redis-url", cmp.Or(os.Getenv("SLUICE_REDIS_URL"), "redis://127.0.0.1:6379/0"), "Redis URL (env SLUICE_REDIS_URL)")
	prefix := fs.String("prefix", cmp.Or(os.Getenv("SLUICE_PREFIX"), "sluice"), "key prefix (env SLUICE_PREFIX)")
	from := fs.String("from", "$", `where to start: "$" new entries only, "0" the whole stream, or an entry id`)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("tail: unexpected arguments %q", fs.Args())
	}
	opts, err := redis.ParseURL(*redisURL)
	if err != nil {
		return fmt.Errorf("tail: redis url: %w", err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	return dispatch.Tail(ctx, rdb, dispatch.TailOptions{Prefix: *prefix, From: *from}, stdout)
}
