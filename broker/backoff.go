package broker

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff computes capped exponential delays with full jitter.
// The zero value uses the defaults below.
type Backoff struct {
	// Min is the first delay. Default 100ms.
	Min time.Duration
	// Max caps every delay. Default 30s.
	Max time.Duration
}

// Delay returns the delay before retry number attempt (0-based): a random
// duration in [d/2, d] where d = min(Min*2^attempt, Max).
func (b Backoff) Delay(attempt int) time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = 100 * time.Millisecond
	}
	if hi <= 0 {
		hi = 30 * time.Second
	}
	d := hi
	if attempt < 32 {
		if e := lo << attempt; e > 0 && e < hi {
			d = e
		}
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// Sleep waits for Delay(attempt) or until ctx is done, and reports whether
// the full delay elapsed.
func (b Backoff) Sleep(ctx context.Context, attempt int) bool {
	t := time.NewTimer(b.Delay(attempt))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
