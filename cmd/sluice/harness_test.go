package main

// The end-to-end harness: tests run the real sluice binary as a subprocess
// against the shared Redis (each daemon with its own key prefix) and talk to
// it over HTTP, the way an operator would.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-io/sluice/broker/supervisor"
	"github.com/sluice-io/sluice/dispatch"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
	"github.com/sluice-io/sluice/source"
)

// sluiceBin is the binary under test, built once by buildSluice.
var (
	sluiceBin  string
	buildOnce  sync.Once
	buildError error
)

func buildSluice(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sluice-e2e-*")
		if err != nil {
			buildError = err
			return
		}
		sluiceBin = filepath.Join(dir, "sluice")
		out, err := exec.Command("go", "build", "-o", sluiceBin, ".").CombinedOutput()
		if err != nil {
			buildError = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildError != nil {
		t.Fatal(buildError)
	}
	return sluiceBin
}

// daemon is one sluice serve process and what a test needs to drive it.
type daemon struct {
	t      testing.TB
	Prefix string
	Key    string
	URL    string
	RDB    *redis.Client
	env    []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	logs   *lockedBuffer
	exited chan struct{}
	err    error
}

// startDaemon starts sluice serve on a free port with its own key prefix in
// the shared Redis; extra are additional KEY=VALUE environment variables.
// The daemon is killed and its keys removed when the test ends.
func startDaemon(t testing.TB, extra ...string) *daemon {
	t.Helper()
	bin := buildSluice(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	port := dispatchtest.FreePort(t)
	d := &daemon{
		t:      t,
		Prefix: "test:e2e:" + id,
		Key:    "key-" + id,
		URL:    fmt.Sprintf("http://127.0.0.1:%d", port),
		// Generous timeouts: the checks read large streams on a loaded machine.
		RDB:  redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", ReadTimeout: 30 * time.Second}),
		logs: &lockedBuffer{},
	}
	// The test's own settings only: a SLUICE_* variable of the developer's
	// shell must not change what a test runs.
	d.env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "SLUICE_") })
	d.env = append(d.env,
		fmt.Sprintf("SLUICE_LISTEN=127.0.0.1:%d", port),
		"SLUICE_REDIS_URL=redis://127.0.0.1:6379/0",
		"SLUICE_PREFIX="+d.Prefix,
		"SLUICE_API_KEYS="+d.Key,
		"SLUICE_PUBLIC_URL=http://sluice.test",
		"SLUICE_LOG_LEVEL=debug",
	)
	d.env = append(d.env, extra...)
	for _, kv := range extra {
		if url, ok := strings.CutPrefix(kv, "SLUICE_REDIS_URL="); ok {
			opt, err := redis.ParseURL(url)
			if err != nil {
				t.Fatal(err)
			}
			_ = d.RDB.Close()
			d.RDB = redis.NewClient(opt)
		}
	}
	t.Cleanup(func() {
		d.Kill()
		ctx := context.Background()
		for _, pattern := range []string{d.Prefix + "*", "{" + d.Prefix + "*"} {
			keys, _ := d.RDB.Keys(ctx, pattern).Result()
			if len(keys) > 0 {
				d.RDB.Del(ctx, keys...)
			}
		}
		_ = d.RDB.Close()
		if t.Failed() {
			t.Logf("sluice logs:\n%s", d.Logs())
		}
		_ = bin
	})
	d.Start()
	return d
}

// SetEnv sets KEY=VALUE for the next Start.
func (d *daemon) SetEnv(kv string) { d.env = append(d.env, kv) }

// Start (re)starts the process with the same port, prefix and key, and waits
// until it is ready.
func (d *daemon) Start() {
	d.t.Helper()
	cmd := exec.Command(sluiceBin, "serve")
	cmd.Env = d.env
	cmd.Stdout = d.logs
	cmd.Stderr = d.logs
	if err := cmd.Start(); err != nil {
		d.t.Fatalf("start sluice: %v", err)
	}
	exited := make(chan struct{})
	d.mu.Lock()
	d.cmd, d.exited, d.err = cmd, exited, nil
	d.mu.Unlock()
	go func() {
		err := cmd.Wait()
		d.mu.Lock()
		d.err = err
		d.mu.Unlock()
		close(exited)
	}()
	d.WaitReady()
}

// WaitReady polls /readyz until it answers 200.
func (d *daemon) WaitReady() {
	d.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(d.URL + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-d.exitedCh():
			d.t.Fatalf("sluice exited before it was ready: %v\n%s", d.exitErr(), d.Logs())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("sluice not ready after 30s: %v\n%s", err, d.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *daemon) exitedCh() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.exited
}

func (d *daemon) exitErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// Kill sends SIGKILL and waits for the process to be gone.
func (d *daemon) Kill() {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// Signal sends sig and returns a channel closed when the process has exited.
func (d *daemon) Signal(sig os.Signal) <-chan struct{} {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.mu.Unlock()
	if err := cmd.Process.Signal(sig); err != nil {
		d.t.Fatalf("signal sluice: %v", err)
	}
	return exited
}

// Terminate sends SIGTERM, requires the process to exit 0 within timeout,
// and returns how long it took. While it waits it polls /readyz and returns
// how many times it answered 503 (shutting down).
func (d *daemon) Terminate(timeout time.Duration) (took time.Duration, notReady int) {
	d.t.Helper()
	probeCtx, stopProbe := context.WithCancel(context.Background())
	probed := make(chan int)
	go func() {
		n := 0
		for probeCtx.Err() == nil {
			if resp, err := http.Get(d.URL + "/readyz"); err == nil {
				if resp.StatusCode == http.StatusServiceUnavailable {
					n++
				}
				_ = resp.Body.Close()
			}
			time.Sleep(2 * time.Millisecond)
		}
		probed <- n
	}()
	start := time.Now()
	select {
	case <-d.Signal(syscall.SIGTERM):
	case <-time.After(timeout):
		stopProbe()
		<-probed
		d.t.Fatalf("sluice still running %s after SIGTERM", timeout)
	}
	took = time.Since(start)
	stopProbe()
	notReady = <-probed
	if code := d.ExitCode(); code != 0 {
		d.t.Fatalf("sluice exited with %d after SIGTERM, want 0\n%s", code, d.Logs())
	}
	return took, notReady
}

// ExitCode is the exit code of the last process, -1 while it runs or when a
// signal ended it.
func (d *daemon) ExitCode() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil || d.cmd.ProcessState == nil {
		return -1
	}
	return d.cmd.ProcessState.ExitCode()
}

// Logs returns everything the daemon printed so far, across restarts.
func (d *daemon) Logs() string { return d.logs.String() }

// Do sends an authenticated API request; body is JSON-encoded unless it is a
// string or nil. It returns the status code and the raw response body.
func (d *daemon) Do(method, path string, body any) (int, []byte) {
	d.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			d.t.Fatal(err)
		}
		r = bytes.NewReader(enc)
	}
	req, err := http.NewRequest(method, d.URL+path, r)
	if err != nil {
		d.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+d.Key)
	if r != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		d.t.Fatal(err)
	}
	return resp.StatusCode, out
}

// envelope is the API's response envelope.
type envelope[T any] struct {
	Message string `json:"message"`
	Status  bool   `json:"status"`
	Data    T      `json:"data"`
}

// CreateSource creates a source in project and returns it as the API did.
func (d *daemon) CreateSource(project string, body any) source.Source {
	d.t.Helper()
	code, out := d.Do(http.MethodPost, "/api/v1/projects/"+project+"/sources", body)
	if code != http.StatusCreated {
		d.t.Fatalf("create source: %d %s", code, out)
	}
	var env envelope[source.Source]
	if err := json.Unmarshal(out, &env); err != nil {
		d.t.Fatalf("decode create response: %v: %s", err, out)
	}
	return env.Data
}

// Status returns the live status of a source.
func (d *daemon) Status(project, id string) supervisor.SourceStatus {
	d.t.Helper()
	code, out := d.Do(http.MethodGet, "/api/v1/projects/"+project+"/sources/"+id+"/status", nil)
	if code != http.StatusOK {
		d.t.Fatalf("status: %d %s", code, out)
	}
	var env envelope[supervisor.SourceStatus]
	if err := json.Unmarshal(out, &env); err != nil {
		d.t.Fatalf("decode status: %v: %s", err, out)
	}
	return env.Data
}

// WaitStatus polls the status until cond holds.
func (d *daemon) WaitStatus(project, id string, timeout time.Duration, what string, cond func(supervisor.SourceStatus) bool) supervisor.SourceStatus {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := d.Status(project, id)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("source %s: %s not reached within %s; status %+v", id, what, timeout, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// queue is a handle on this daemon's dispatch queue, for its key names.
func (d *daemon) queue() *dispatch.Queue {
	return dispatch.New(d.RDB, dispatch.Options{Prefix: d.Prefix})
}

// StreamKey is the dispatch stream of this daemon.
func (d *daemon) StreamKey() string { return d.queue().StreamKey() }

// DeadLetterKey is the dead-letter stream of this daemon.
func (d *daemon) DeadLetterKey() string { return d.queue().DeadLetterKey() }

// WaitStream waits until the dispatch stream holds at least n entries.
func (d *daemon) WaitStream(n int64, timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	var got int64
	for {
		got, _ = d.RDB.XLen(context.Background(), d.StreamKey()).Result()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("dispatch stream holds %d entries after %s, want %d", got, timeout, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Events reads the whole dispatch stream.
func (d *daemon) Events() []dispatch.Event {
	d.t.Helper()
	_, events, err := dispatchtest.ReadStream(context.Background(), d.RDB, d.queue())
	if err != nil {
		d.t.Fatalf("read dispatch stream: %v", err)
	}
	return events
}

// RequireExactlyOnce checks that the stream holds exactly the events whose
// data carry the sequence numbers 0..n-1 (field "seq" of data), each once.
func (d *daemon) RequireExactlyOnce(n int) []dispatch.Event {
	d.t.Helper()
	events := d.Events()
	seen := make(map[int]int, n)
	for _, ev := range events {
		var data struct {
			Seq *int `json:"seq"`
		}
		if err := json.Unmarshal(ev.Data, &data); err != nil || data.Seq == nil {
			d.t.Fatalf("event %s: data %s has no seq", ev.ID, ev.Data)
		}
		seen[*data.Seq]++
	}
	var missing, dups int
	for i := range n {
		switch c := seen[i]; {
		case c == 0:
			missing++
		case c > 1:
			dups += c - 1
		}
	}
	if missing > 0 || dups > 0 || len(events) != n {
		d.t.Fatalf("dispatch stream: %d entries for %d messages: %d missing, %d duplicated", len(events), n, missing, dups)
	}
	return events
}

// messageBody is the body of test message seq in Convoy's pub/sub format;
// RequireExactlyOnce counts messages by that seq.
func messageBody(seq int) []byte {
	return fmt.Appendf(nil, `{"endpoint_id":"ep-1","event_type":"test.event","data":{"seq":%d}}`, seq)
}

// eventSeq returns the seq of a test message's data (see messageBody).
func eventSeq(t testing.TB, ev dispatch.Event) int {
	t.Helper()
	var seq int
	if _, err := fmt.Sscanf(string(ev.Data), `{"seq":%d}`, &seq); err != nil {
		t.Fatalf("event data %s: %v", ev.Data, err)
	}
	return seq
}

// requireEnvelope checks what every event made from messageBody in project
// p1 carries, and the headers given (name → value).
func requireEnvelope(t testing.TB, ev dispatch.Event, sourceID, broker, messageID string, headers map[string]string) {
	t.Helper()
	fields := [][3]string{
		{"project_id", ev.ProjectID, "p1"},
		{"source_id", ev.SourceID, sourceID},
		{"broker", ev.Broker, broker},
		{"broker_message_id", ev.BrokerMessageID, messageID},
		{"message_type", ev.MessageType, "single"},
		{"endpoint_id", ev.EndpointID, "ep-1"},
		{"event_type", ev.EventType, "test.event"},
		{"headers.x-broker-message-id", ev.Headers["x-broker-message-id"], messageID},
	}
	for name, want := range headers {
		fields = append(fields, [3]string{"headers." + name, ev.Headers[name], want})
	}
	for _, f := range fields {
		if f[1] != f[2] {
			t.Fatalf("event %s: %s = %q, want %q", ev.Data, f[0], f[1], f[2])
		}
	}
	if ev.ID == "" || ev.ReceivedAt.IsZero() {
		t.Fatalf("event %s has no id or received_at: %+v", ev.Data, ev)
	}
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
