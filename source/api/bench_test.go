package api_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time so far. Rates per CPU
// second hold up on a machine shared with other load, where wall-clock
// rates swing with everyone else's work.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

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
// req/s, p99 (µs) and req/cpu_s (requests per CPU second of this process);
// it returns the rate per CPU second.
func parallel(b *testing.B, newOp func() func() int, want int) float64 {
	var lat latencies
	b.SetParallelism(32)
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		var local []time.Duration
		op := newOp()
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
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	b.ReportMetric(float64(lat.p99().Microseconds()), "p99_µs")
	perCPU := float64(b.N) / cpu.Seconds()
	b.ReportMetric(perCPU, "req/cpu_s")
	return perCPU
}

// baseline runs n raw go-redis operations the same way and returns their
// rate per CPU second.
func baseline(b *testing.B, n int, op func(ctx context.Context) error) float64 {
	ctx := context.Background()
	var mu sync.Mutex
	left := n
	cpu0 := cpuTime()
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
	return float64(n) / (cpuTime() - cpu0).Seconds()
}

// client returns a function that sends one request to h. The request is
// built once per goroutine (parsing it is the client's cost, not the
// handler's) and reused; the body is rewound each time.
func client(h http.Handler, method, path, body string) func() func() int {
	return func() func() int {
		r := httptest.NewRequest(method, path, nil)
		r.Header.Set("Authorization", bearer)
		if body != "" {
			r.Header.Set("Content-Type", "application/json")
		}
		rd := strings.NewReader(body)
		return func() int {
			rd.Reset(body)
			r.Body = io.NopCloser(rd)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			return rec.Code
		}
	}
}

// BenchmarkCreate: POST .../sources through the handler against the real
// Redis; raw_req/cpu_s is a go-redis SET of the same stored size (a create
// cannot be cheaper), ratio = API / raw, both per CPU second.
func BenchmarkCreate(b *testing.B) {
	bn := newBundle(b)
	rate := parallel(b, client(bn.h, "POST", "/api/v1/projects/bench/sources", okAMQP), http.StatusCreated)
	val := strings.Repeat("x", 600)
	raw := baseline(b, max(b.N, 1000), func(ctx context.Context) error {
		return bn.rdb.Set(ctx, "{"+bn.prefix+"}:raw", val, 0).Err()
	})
	b.ReportMetric(raw, "raw_req/cpu_s")
	b.ReportMetric(rate/raw, "ratio")
}

// BenchmarkGet: GET .../sources/{id} through the handler (auth, a Redis GET
// of the stored JSON, the response) against the real Redis. The same source
// is read over and over, so its rendering comes from the API's cache after
// the first read: the cost measured is that of an unchanged source (a
// changed one is decoded and rendered once more). raw_req/cpu_s is a
// go-redis GET of the key, ratio = API / raw, both per CPU second.
func BenchmarkGet(b *testing.B) {
	bn := newBundle(b)
	src := create(b, bn, "bench", "get")
	path := "/api/v1/projects/bench/sources/" + src["uid"].(string)
	rate := parallel(b, client(bn.h, "GET", path, ""), http.StatusOK)
	key := "{" + bn.prefix + "}:source:" + src["uid"].(string)
	raw := baseline(b, max(b.N, 1000), func(ctx context.Context) error { return bn.rdb.Get(ctx, key).Err() })
	b.ReportMetric(raw, "raw_req/cpu_s")
	b.ReportMetric(rate/raw, "ratio")
}
