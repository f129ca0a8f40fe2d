package kafka

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	kafkago "github.com/segmentio/kafka-go"
)

func msgs(partition int, offsets ...int64) []kafkago.Message {
	out := make([]kafkago.Message, len(offsets))
	for i, o := range offsets {
		out[i] = kafkago.Message{Partition: partition, Offset: o}
	}
	return out
}

// committable renders settle's result as partition → offset of the highest
// committable message.
func committable(ms []kafkago.Message) map[int]int64 {
	out := make(map[int]int64)
	for _, m := range ms {
		out[m.Partition] = m.Offset
	}
	return out
}

func TestWatermark(t *testing.T) {
	w := newWatermark()
	b1 := w.add(append(msgs(0, 0, 1, 2), msgs(1, 0, 1)...))
	b2 := w.add(append(msgs(0, 3, 4), msgs(2, 0)...))
	b3 := w.add(msgs(0, 5))

	steps := []struct {
		name   string
		marks  []*mark
		commit map[int]int64
	}{
		// b2 settles first: partition 2 is free (no earlier batch holds it),
		// partition 0 waits for b1.
		{"b2 before b1", b2, map[int]int64{2: 0}},
		// b1 settles: partition 0 jumps to the end of b2, partition 1 to b1's.
		{"b1", b1, map[int]int64{0: 4, 1: 1}},
		{"b3", b3, map[int]int64{0: 5}},
	}
	for _, s := range steps {
		got := committable(w.settle(s.marks))
		if diff := cmp.Diff(s.commit, got); diff != "" {
			t.Errorf("%s: committable (-want +got):\n%s", s.name, diff)
		}
	}
	if len(w.parts) != 0 {
		t.Errorf("marks left behind: %v", w.parts)
	}
}

// TestWatermarkFailedBatchHoldsLaterOnes: a batch that never settles (the
// worker stopped while Handle failed) keeps every later batch of its
// partitions from being committed.
func TestWatermarkFailedBatchHoldsLaterOnes(t *testing.T) {
	w := newWatermark()
	_ = w.add(msgs(0, 10, 11))
	b2 := w.add(append(msgs(0, 12), msgs(1, 7)...))
	got := committable(w.settle(b2))
	if diff := cmp.Diff(map[int]int64{1: 7}, got); diff != "" {
		t.Errorf("committable (-want +got):\n%s", diff)
	}
}
