package dispatch

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// BenchmarkEnqueue compares, in one run and interleaved batch by batch so
// both see the same machine load, an idempotent Enqueue of 100 events of a
// 1 KiB payload with the raw baseline: the same stream entries appended by
// 100 pipelined XADDs (no dedupe). One iteration is one batch of each. It
// reports both rates and the ratio.
func BenchmarkEnqueue(b *testing.B) {
	const batch = 100
	ctx := context.Background()
	prefix := testPrefix(b)
	rdb := sharedRedis(b, prefix)
	q := New(rdb, Options{Prefix: prefix, DedupeWindow: 10 * time.Minute})
	rawStream := prefix + ":raw"

	data := payload(1024)
	mk := func(round int) []Event {
		evs := make([]Event, batch)
		for i := range evs {
			evs[i] = testEvent(b, "src1", fmt.Sprintf("bench/0/%d", round*batch+i), data)
		}
		return evs
	}
	// Warm up: load the script and create both streams.
	if _, err := q.Enqueue(ctx, mk(-1)); err != nil {
		b.Fatal(err)
	}

	var rawTime, enqTime time.Duration
	b.ResetTimer()
	for round := 0; b.Loop(); round++ {
		b.StopTimer()
		evs := mk(round)
		args := make([][]any, batch)
		for i := range evs {
			a, err := appendEntryValues(nil, &evs[i])
			if err != nil {
				b.Fatal(err)
			}
			kv := make([]any, 0, 2*len(streamFields))
			for j, f := range streamFields {
				kv = append(kv, f, a[j])
			}
			args[i] = kv
		}
		b.StartTimer()

		start := time.Now()
		pipe := rdb.Pipeline()
		for i := range evs {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: rawStream, Values: args[i]})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
		rawTime += time.Since(start)

		start = time.Now()
		out, err := q.Enqueue(ctx, evs)
		if err != nil {
			b.Fatal(err)
		}
		enqTime += time.Since(start)
		if out[0] != Written {
			b.Fatalf("outcome %v", out[0])
		}
	}
	b.StopTimer()
	n := float64(b.N * batch)
	rawRate := n / rawTime.Seconds()
	enqRate := n / enqTime.Seconds()
	b.ReportMetric(rawRate, "raw_xadd_events/s")
	b.ReportMetric(enqRate, "enqueue_events/s")
	b.ReportMetric(enqRate/rawRate, "ratio")
}

// BenchmarkDecode decodes one message per iteration: a Convoy body with
// custom_headers and a data object of 100 B and of 1 KiB (the body is about
// 220 B and 1.1 KiB; MB/s is of the whole body), delivered with a few broker
// headers, one of them in mixed case.
func BenchmarkDecode(b *testing.B) {
	for _, size := range []int{100, 1024} {
		b.Run(fmt.Sprintf("data=%dB", size), func(b *testing.B) {
			raw := benchRaw(size)
			b.SetBytes(int64(len(raw.Body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Decode(raw, DecodeOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecodeVsGeneral compares, interleaved message by message so both
// see the same machine load, Decode with its general encoding/json path
// alone (what Decode did for every message before it had a fast path), on
// BenchmarkDecode's messages. It reports both costs and the speedup.
func BenchmarkDecodeVsGeneral(b *testing.B) {
	for _, size := range []int{100, 1024} {
		b.Run(fmt.Sprintf("data=%dB", size), func(b *testing.B) {
			raw := benchRaw(size)
			var fast, general time.Duration
			for b.Loop() {
				start := time.Now()
				if _, err := Decode(raw, DecodeOptions{}); err != nil {
					b.Fatal(err)
				}
				mid := time.Now()
				ev, err := decodeGeneral(raw, raw.Body)
				if err != nil {
					b.Fatal(err)
				}
				finish(&ev)
				general += time.Since(mid)
				fast += mid.Sub(start)
			}
			n := float64(b.N)
			b.ReportMetric(float64(fast.Nanoseconds())/n, "decode_ns/msg")
			b.ReportMetric(float64(general.Nanoseconds())/n, "general_ns/msg")
			b.ReportMetric(general.Seconds()/fast.Seconds(), "speedup")
		})
	}
}

// benchRaw is a message with custom_headers and a data object of size bytes
// (the body is about 120 B more), delivered with a few broker headers.
func benchRaw(size int) Raw {
	body := []byte(`{"endpoint_id":"ep1","owner_id":null,"event_type":"user.created","idempotency_key":"k-1",` +
		`"custom_headers":{"X-Tenant":"t1","x-trace-id":"0af7651916cd43dd8448eb211c80319c"},"data":`)
	body = append(body, payload(size)...)
	body = append(body, '}')
	return Raw{
		ProjectID: "proj1", SourceID: "src1", Broker: "kafka", MessageID: "orders/3/1234567",
		Body: body,
		Headers: map[string]string{
			"kafka-key": "k1234567", "Content-Type": "application/json", "x-convoy-message-type": "single",
		},
	}
}

// BenchmarkEnqueueArgs builds Enqueue's script arguments for a batch of 100
// events of a 1 KiB payload with a few headers (no round trip): the client
// side cost of an Enqueue.
func BenchmarkEnqueueArgs(b *testing.B) {
	const batch = 100
	q := New(nil, Options{})
	evs := make([]Event, batch)
	for i := range evs {
		raw := benchRaw(1024)
		raw.MessageID = fmt.Sprintf("orders/3/%d", i)
		ev, err := Decode(raw, DecodeOptions{})
		if err != nil {
			b.Fatal(err)
		}
		evs[i] = ev
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := q.enqueueArgs(evs); err != nil {
			b.Fatal(err)
		}
	}
}
