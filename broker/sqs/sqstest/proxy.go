package sqstest

import (
	"bytes"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
)

// Proxy is an HTTP proxy in front of an SQS endpoint that records the
// calls it forwards: set its URL as a consumer's endpoint to see what the
// consumer asks of SQS (and that it asks there).
type Proxy struct {
	// URL is the proxy's base URL.
	URL string

	srv      *httptest.Server
	mu       sync.Mutex
	actions  map[string]int
	receives []int
}

// NewProxy starts a proxy to target (an endpoint URL). Close stops it.
func NewProxy(target string) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	p := &Proxy{actions: make(map[string]int)}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0) // a long poll cut at a stop is expected
	rp.ModifyResponse = p.record
	p.srv = httptest.NewServer(rp)
	p.URL = p.srv.URL
	return p, nil
}

// record counts a response's action and, for a successful ReceiveMessage,
// how many messages it carries.
func (p *Proxy) record(resp *http.Response) error {
	action := strings.TrimPrefix(resp.Request.Header.Get("X-Amz-Target"), "AmazonSQS.")
	size := -1
	if action == "ReceiveMessage" && resp.StatusCode == http.StatusOK {
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			return err
		}
		var out struct{ Messages []json.RawMessage }
		if err := json.Unmarshal(body, &out); err != nil {
			return err
		}
		size = len(out.Messages)
		resp.Body = io.NopCloser(bytes.NewReader(body))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.actions[action]++
	if size >= 0 {
		p.receives = append(p.receives, size)
	}
	return nil
}

// Calls returns how many calls of action ("DeleteMessageBatch") it forwarded.
func (p *Proxy) Calls(action string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.actions[action]
}

// ReceiveSizes returns how many messages each successful ReceiveMessage
// carried, in the order the responses passed.
func (p *Proxy) ReceiveSizes() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int(nil), p.receives...)
}

// Close stops the proxy.
func (p *Proxy) Close() { p.srv.Close() }
