package api_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// latencies collects per-request durations from parallel goroutines.
type latencies struct {
	mu  sync.Mutex
	all []time.Duration
}

func (l *latencies) add(d []time.Duration) {
	l.mu.Lock()
	l.all = append(l.all, d...)
	l.mu.Unlock()
}

func (l *latencies) p99() time.Duration {
	if len(l.all) == 0 {
		return 0
	}
	slices.Sort(l.all)
	return l.all[len(l.all)*99/100]
}

// parallel runs op b.N times over 32 goroutines per GOMAXPROCS and reports
// req/s and p99 (µs); it returns the rate.
func parallel(b *testing.B, op func() int, want int) float64 {
	var lat latencies
	b.SetParallelism(32)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var local []time.Duration
		for pb.Next() {
			t0 := time.Now()
			if code := op(); code != want {
				b.Errorf("status %d, want %d", code, want)
				return
			}
			local = append(local, time.Since(t0))
		}
		lat.add(local)
	})
	elapsed := time.Since(start)
	b.StopTimer()
	rate := float64(b.N) / elapsed.Seconds()
	b.ReportMetric(rate, "req/s")
	b.ReportMetric(float64(lat.p99().Microseconds()), "p99_µs")
	return rate
}

// baseline runs n raw go-redis operations the same way and returns their rate.
func baseline(b *testing.B, n int, op func(ctx context.Context) error) float64 {
	ctx := context.Background()
	var mu sync.Mutex
	left := n
	start := time.Now()
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for {
				mu.Lock()
				if left == 0 {
					mu.Unlock()
					return
				}
				left--
				mu.Unlock()
				if err := op(ctx); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

func hit(h http.Handler, method, path, body string) int {
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, path, nil)
	} else {
		r = httptest.NewRequest(method, path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	}
	r.Header.Set("Authorization", bearer)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec.Code
}

// BenchmarkCreate: POST .../sources through the handler against the real
// Redis; raw_req/s is a go-redis SET of the same stored size (the floor a
// create cannot beat), ratio = API / raw.
func BenchmarkCreate(b *testing.B) {
	bn := newBundle(b)
	rate := parallel(b, func() int { return hit(bn.h, "POST", "/api/v1/projects/bench/sources", okAMQP) }, http.StatusCreated)
	val := strings.Repeat("x", 600)
	raw := baseline(b, max(b.N, 1000), func(ctx context.Context) error {
		return bn.rdb.Set(ctx, "{"+bn.prefix+"}:raw", val, 0).Err()
	})
	b.ReportMetric(raw, "raw_req/s")
	b.ReportMetric(rate/raw, "ratio")
}

// BenchmarkGet: GET .../sources/{id} through the handler (auth, load,
// render) against the real Redis; raw_req/s is a go-redis GET of the key.
func BenchmarkGet(b *testing.B) {
	bn := newBundle(b)
	src := create(b, bn, "bench", "get")
	path := "/api/v1/projects/bench/sources/" + src["uid"].(string)
	rate := parallel(b, func() int { return hit(bn.h, "GET", path, "") }, http.StatusOK)
	key := "{" + bn.prefix + "}:source:" + src["uid"].(string)
	raw := baseline(b, max(b.N, 1000), func(ctx context.Context) error { return bn.rdb.Get(ctx, key).Err() })
	b.ReportMetric(raw, "raw_req/s")
	b.ReportMetric(rate/raw, "ratio")
}
