package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// syncBuffer is an io.Writer safe for the daemon and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestVersionAndUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	require.Equal(t, 0, runCommand(t.Context(), []string{"version"}, func(string) string { return "" }, &out, &errOut))
	require.Equal(t, "sluice dev\n", out.String())
	require.Equal(t, 2, runCommand(t.Context(), nil, func(string) string { return "" }, &out, &errOut))
	require.Equal(t, 2, runCommand(t.Context(), []string{"frobnicate"}, func(string) string { return "" }, &out, &errOut))
	require.Contains(t, errOut.String(), "unknown command")
}

func TestServeRefusesWithoutKey(t *testing.T) {
	var out, errOut bytes.Buffer
	env := map[string]string{"SLUICE_LISTEN": "127.0.0.1:0"}
	code := runCommand(t.Context(), []string{"serve"}, func(k string) string { return env[k] }, &out, &errOut)
	require.Equal(t, 1, code)
	require.Contains(t, errOut.String(), "SLUICE_API_KEYS")

	env["SLUICE_MAX_WORKERS"] = "lots"
	errOut.Reset()
	require.Equal(t, 1, runCommand(t.Context(), []string{"serve", "--dev"}, func(k string) string { return env[k] }, &out, &errOut))
	require.Contains(t, errOut.String(), "SLUICE_MAX_WORKERS")
}

// TestServeDev runs serve --dev in process: the printed key works against
// the embedded Redis, and cancelling (SIGTERM in main) shuts down cleanly.
func TestServeDev(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, serveEnv{
			args:   []string{"--dev", "--listen", "127.0.0.1:0", "--public-url", "https://hooks.example.com"},
			getenv: func(string) string { return "" },
			stdout: stdout, stderr: stderr,
			listening: func(addr string) { addrc <- addr },
		})
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("serve returned early: %v\n%s", err, stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatal("serve --dev did not start")
	}
	require.Contains(t, stdout.String(), "NOTHING PERSISTS")
	key := regexp.MustCompile(`API key: (\S+)`).FindStringSubmatch(stdout.String())
	require.Len(t, key, 2, stdout.String())

	call := func(method, path, body string) (int, string) {
		req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+key[1])
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	// Ready once the first reconcile is done: poll with a deadline.
	var code int
	var body string
	for deadline := time.Now().Add(20 * time.Second); ; {
		if code, body = call("GET", "/readyz", ""); code == 200 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.Equal(t, 200, code, body)
	require.NoError(t, runHealthcheck(ctx, nil, func(k string) string {
		return map[string]string{"SLUICE_LISTEN": addr}[k]
	}, io.Discard))
	code, body = call("POST", "/api/v1/projects/demo/sources",
		`{"name":"orders","type":"pub_sub","pub_sub":{"type":"kafka","workers":2,"kafka":{"brokers":["localhost:9092"],"topic_name":"orders"}}}`)
	require.Equal(t, 201, code, body)
	var env struct {
		Data struct {
			MaskID string `json:"mask_id"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &env))
	require.Equal(t, "https://hooks.example.com/ingest/"+env.Data.MaskID, extractURL(t, body))
	code, body = call("GET", "/api/v1/projects/demo/sources", "")
	require.Equal(t, 200, code, body)
	require.Contains(t, body, env.Data.MaskID)

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop")
	}
	require.Error(t, runHealthcheck(t.Context(), []string{"--url", "http://" + addr + "/healthz"}, func(string) string { return "" }, io.Discard))
}

func extractURL(t *testing.T, body string) string {
	var env struct {
		Data struct {
			URL string `json:"url"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &env))
	return env.Data.URL
}
