package api_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sluice-io/sluice/source"
	"github.com/sluice-io/sluice/source/api"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	globalKey  = "global-key-0123456789"
	p1Key      = "p1-key-0123456789"
	publicBase = "https://hooks.example.com"
)

// bundle is one API over a private key prefix of the shared Redis.
type bundle struct {
	h      http.Handler
	store  *source.Store
	rdb    redis.UniversalClient
	prefix string
	opts   api.Options
}

func newBundle(t testing.TB, mod ...func(*api.Options)) *bundle {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", PoolSize: 64})
	ctx := context.Background()
	require.NoError(t, rdb.Ping(ctx).Err(), "the tests need Redis on 127.0.0.1:6379")
	var b [6]byte
	rand.Read(b[:])
	prefix := "test:" + t.Name() + ":" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		iter := rdb.Scan(ctx, 0, "{"+prefix+"}*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
		rdb.Close()
	})
	st := source.New(rdb, prefix)
	o := api.Options{
		Store:      st,
		Keys:       []api.Key{{Secret: globalKey}, {Secret: p1Key, ProjectID: "p1"}},
		PublicURL:  publicBase + "/",
		MaxWorkers: 16,
	}
	for _, m := range mod {
		m(&o)
	}
	return &bundle{h: api.New(o), store: st, rdb: rdb, prefix: prefix, opts: o}
}

type resp struct {
	Code int
	Raw  string
	Body struct {
		Message string          `json:"message"`
		Status  bool            `json:"status"`
		Data    json.RawMessage `json:"data"`
	}
}

func (r resp) data(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.Body.Data, &m), r.Raw)
	return m
}

// do sends one request with a JSON content type (when body != "").
func (b *bundle) do(t testing.TB, method, path, auth, body string) resp {
	t.Helper()
	return b.doCT(t, method, path, auth, body, "application/json")
}

func (b *bundle) doCT(t testing.TB, method, path, auth, body, ct string) resp {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if body != "" && ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	rec := httptest.NewRecorder()
	b.h.ServeHTTP(rec, req)
	var r resp
	r.Code, r.Raw = rec.Code, rec.Body.String()
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &r.Body), "response is not the JSON envelope: %q", r.Raw)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Equal(t, r.Code < 400, r.Body.Status, r.Raw)
	return r
}

const bearer = "Bearer " + globalKey

// fullBody is the seed's request body (every field, same nesting) with
// values that validate.
const fullBody = `{
  "custom_response": {"body": "ok", "content_type": "text/plain"},
  "idempotency_keys": ["request.header.X-Request-Id", "request.body.event.id"],
  "name": "orders",
  "provider": "github",
  "pub_sub": {
    "amqp": {
      "auth": {"password": "guest", "user": "guest"},
      "bindExchange": {"exchange": "orders-x", "routingKey": "orders.#"},
      "deadLetterExchange": "orders-dlx",
      "host": "rabbit.internal",
      "port": "5672",
      "queue": "orders",
      "schema": "amqp"
    },
    "google": {
      "project_id": "acme",
      "service_account": [123, 125],
      "subscription_id": "orders-sub"
    },
    "kafka": {
      "auth": {"hash": "SHA512", "password": "pw", "tls": true, "type": "scram", "username": "svc"},
      "brokers": ["kafka-1:9092"],
      "consumer_group_id": "sluice",
      "topic_name": "orders"
    },
    "sqs": {
      "access_key_id": "AKIAEXAMPLE",
      "default_region": "eu-west-1",
      "queue_name": "orders",
      "secret_key": "secret"
    },
    "type": "sqs",
    "workers": 4
  },
  "type": "http",
  "verifier": {
    "api_key": {"header_name": "X-Api-Key", "header_value": "v"},
    "basic_auth": {"password": "p", "username": "u"},
    "hmac": {"encoding": "base64", "hash": "SHA256", "header": "X-Hub-Signature", "secret": "s3cret"},
    "type": "hmac"
  }
}`

// shape lists every JSON path of v with its kind; null matches anything.
func shape(prefix string, v any, out map[string]string) {
	switch v := v.(type) {
	case map[string]any:
		out[prefix] = "object"
		for k, c := range v {
			shape(prefix+"."+k, c, out)
		}
	case []any:
		out[prefix] = "array"
		for _, c := range v {
			shape(prefix+"[]", c, out)
		}
	case string:
		out[prefix] = "string"
	case float64:
		out[prefix] = "number"
	case bool:
		out[prefix] = "bool"
	case nil:
		out[prefix] = "null"
	}
}

func readJSON(t *testing.T, path string) any {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var v any
	require.NoError(t, json.Unmarshal(b, &v))
	return v
}

func TestCreateFullSeedBody(t *testing.T) {
	b := newBundle(t)

	// The body has exactly the seed request's fields and nesting.
	wantReq, gotReq := map[string]string{}, map[string]string{}
	shape("", readJSON(t, "testdata/seed-request.json"), wantReq)
	var body any
	require.NoError(t, json.Unmarshal([]byte(fullBody), &body))
	shape("", body, gotReq)
	require.Equal(t, wantReq, gotReq)

	r := b.do(t, "POST", "/api/v1/projects/p1/sources", bearer, fullBody)
	require.Equal(t, http.StatusCreated, r.Code, r.Raw)

	// Every field of the seed response, same nesting and kinds; the seed's
	// objects deleted_at (a live source) and provider_config (github) are null.
	want := map[string]string{}
	shape("", readJSON(t, "testdata/seed-response.json"), want)
	var got any
	require.NoError(t, json.Unmarshal([]byte(r.Raw), &got))
	gotShape := map[string]string{}
	shape("", got, gotShape)
	nullable := map[string]bool{".data.deleted_at": true, ".data.provider_config": true}
	var missing []string
	for path, kind := range want {
		if strings.HasPrefix(path, ".data.provider_config.") {
			continue
		}
		g, ok := gotShape[path]
		switch {
		case !ok && strings.Contains(path, "[]"): // elements of an empty array
		case !ok:
			missing = append(missing, path)
		case g != kind && !(nullable[path] && g == "null"):
			missing = append(missing, fmt.Sprintf("%s: %s, want %s", path, g, kind))
		}
	}
	sort.Strings(missing)
	require.Empty(t, missing, r.Raw)

	d := r.data(t)
	require.Len(t, d["uid"], 26)
	require.Len(t, d["mask_id"], 16)
	require.Equal(t, publicBase+"/ingest/"+d["mask_id"].(string), d["url"])
	require.Equal(t, "p1", d["project_id"])
	amqp := d["pub_sub"].(map[string]any)["amqp"].(map[string]any)
	require.Equal(t, "orders-x", amqp["bindedExchange"])
	require.Equal(t, "orders.#", amqp["routingKey"])
	require.Equal(t, "/", amqp["vhost"])
	require.NotContains(t, amqp, "bindExchange")
	require.Equal(t, []any{123.0, 125.0}, d["pub_sub"].(map[string]any)["google"].(map[string]any)["service_account"])

	// Readable back, the same, also by a new API and Store on the same Redis
	// (a restarted daemon).
	restarted := &bundle{h: api.New(api.Options{Store: source.New(b.rdb, b.prefix), Keys: b.opts.Keys, PublicURL: publicBase})}
	g := restarted.do(t, "GET", "/api/v1/projects/p1/sources/"+d["uid"].(string), bearer, "")
	require.Equal(t, http.StatusOK, g.Code, g.Raw)
	require.JSONEq(t, string(r.Body.Data), string(g.Body.Data))
}

func TestGoogleServiceAccountForms(t *testing.T) {
	b := newBundle(t)
	key := `{"type":"service_account","project_id":"acme"}`
	forms := map[string]string{
		"base64": `"` + "eyJ0eXBlIjoic2VydmljZV9hY2NvdW50IiwicHJvamVjdF9pZCI6ImFjbWUifQ==" + `"`,
		"object": key,
		"bytes":  "[" + strings.Trim(strings.Join(strings.Fields(fmt.Sprint([]byte(key))), ","), "[]") + "]",
	}
	for name, sa := range forms {
		t.Run(name, func(t *testing.T) {
			body := `{"name":"g","type":"pub_sub","pub_sub":{"type":"google","workers":1,"google":{"project_id":"acme","subscription_id":"s","service_account":` + sa + `}}}`
			r := b.do(t, "POST", "/api/v1/projects/p1/sources", bearer, body)
			require.Equal(t, http.StatusCreated, r.Code, r.Raw)
			src, err := b.store.Get(t.Context(), "p1", r.data(t)["uid"].(string))
			require.NoError(t, err)
			require.JSONEq(t, key, string(src.PubSub.Google.ServiceAccount))
		})
	}
}

func TestKafkaTLSWithoutSASLAndSQSDefaultCredentials(t *testing.T) {
	b := newBundle(t)
	r := b.do(t, "POST", "/api/v1/projects/p1/sources", bearer,
		`{"name":"k","type":"pub_sub","pub_sub":{"type":"kafka","workers":2,"kafka":{"brokers":["k:9093"],"topic_name":"t","auth":{"tls":true}}}}`)
	require.Equal(t, http.StatusCreated, r.Code, r.Raw)
	r = b.do(t, "POST", "/api/v1/projects/p1/sources", bearer,
		`{"name":"q","type":"pub_sub","pub_sub":{"type":"sqs","workers":2,"sqs":{"default_region":"us-east-1","queue_name":"q","endpoint":"http://127.0.0.1:4566"}}}`)
	require.Equal(t, http.StatusCreated, r.Code, r.Raw)
	require.Equal(t, "http://127.0.0.1:4566", r.data(t)["pub_sub"].(map[string]any)["sqs"].(map[string]any)["endpoint"])
}

func create(t testing.TB, b *bundle, project, name string) map[string]any {
	t.Helper()
	r := b.do(t, "POST", "/api/v1/projects/"+project+"/sources", bearer,
		`{"name":"`+name+`","type":"pub_sub","pub_sub":{"type":"amqp","workers":1,"amqp":{"schema":"amqp","host":"localhost","port":"5672","queue":"q-`+name+`"}}}`)
	require.Equal(t, http.StatusCreated, r.Code, r.Raw)
	return r.data(t)
}

func TestListFilterPaginate(t *testing.T) {
	b := newBundle(t)
	var ids []string
	for i := range 5 {
		ids = append(ids, create(t, b, "p1", fmt.Sprintf("amqp-%d", i))["uid"].(string))
	}
	r := b.do(t, "POST", "/api/v1/projects/p1/sources", bearer,
		`{"name":"Github Hook","type":"http","provider":"github","verifier":{"type":"hmac","hmac":{"header":"X-Sig","hash":"SHA512","secret":"s","encoding":"hex"}}}`)
	require.Equal(t, http.StatusCreated, r.Code, r.Raw)
	ghID := r.data(t)["uid"].(string)
	create(t, b, "p2", "elsewhere")

	list := func(q string) (uids []string, pg map[string]any) {
		r := b.do(t, "GET", "/api/v1/projects/p1/sources"+q, bearer, "")
		require.Equal(t, http.StatusOK, r.Code, r.Raw)
		d := r.data(t)
		for _, c := range d["content"].([]any) {
			uids = append(uids, c.(map[string]any)["uid"].(string))
		}
		return uids, d["pagination"].(map[string]any)
	}
	all, _ := list("")
	require.Equal(t, []string{ghID, ids[4], ids[3], ids[2], ids[1], ids[0]}, all)

	got, pg := list("?perPage=4")
	require.Equal(t, all[:4], got)
	require.Equal(t, true, pg["has_next_page"])
	got2, pg2 := list("?perPage=4&next_page_cursor=" + pg["next_page_cursor"].(string))
	require.Equal(t, all[4:], got2)
	require.Equal(t, false, pg2["has_next_page"])
	require.Equal(t, true, pg2["has_prev_page"])

	got, _ = list("?type=http")
	require.Equal(t, []string{ghID}, got)
	got, _ = list("?provider=github")
	require.Equal(t, []string{ghID}, got)
	got, _ = list("?q=AMQP-3")
	require.Equal(t, []string{ids[3]}, got)
	got, _ = list("?type=pub_sub&perPage=2")
	require.Equal(t, []string{ids[4], ids[3]}, got)

	r = b.do(t, "GET", "/api/v1/projects/p1/sources?perPage=0", bearer, "")
	require.Equal(t, http.StatusBadRequest, r.Code)
	require.Contains(t, r.Body.Message, "perPage")
}

func TestUpdateDisableDelete(t *testing.T) {
	b := newBundle(t)
	s := create(t, b, "p1", "u")
	path := "/api/v1/projects/p1/sources/" + s["uid"].(string)

	r := b.do(t, "PUT", path, bearer, `{"name":"renamed"}`)
	require.Equal(t, http.StatusAccepted, r.Code, r.Raw)
	d := r.data(t)
	require.Equal(t, "renamed", d["name"])
	require.Equal(t, s["pub_sub"], d["pub_sub"], "a partial update keeps what it does not name")
	require.Equal(t, s["mask_id"], d["mask_id"])
	require.Equal(t, 2.0, d["revision"])

	r = b.do(t, "PUT", path, bearer, `{"is_disabled":true}`)
	require.Equal(t, http.StatusAccepted, r.Code, r.Raw)
	r = b.do(t, "GET", path, bearer, "")
	require.Equal(t, true, r.data(t)["is_disabled"])
	all, err := b.store.All(t.Context())
	require.NoError(t, err)
	require.True(t, all[0].IsDisabled, "a disabled source is kept, flagged")
	r = b.do(t, "PUT", path, bearer, `{"is_disabled":false,"pub_sub":{"type":"kafka","workers":3,"kafka":{"brokers":["k:9092"],"topic_name":"t"}}}`)
	require.Equal(t, http.StatusAccepted, r.Code, r.Raw)
	d = r.data(t)
	require.Equal(t, false, d["is_disabled"])
	require.Equal(t, "kafka", d["pub_sub"].(map[string]any)["type"])
	require.NotContains(t, d["pub_sub"], "amqp", "pub_sub is replaced wholesale")

	r = b.do(t, "DELETE", path, bearer, "")
	require.Equal(t, http.StatusOK, r.Code, r.Raw)
	for _, m := range []string{"GET", "DELETE"} {
		r = b.do(t, m, path, bearer, "")
		require.Equal(t, http.StatusNotFound, r.Code, r.Raw)
	}
	r = b.do(t, "PUT", path, bearer, `{"name":"x"}`)
	require.Equal(t, http.StatusNotFound, r.Code, r.Raw)
	r = b.do(t, "GET", "/api/v1/projects/p1/sources", bearer, "")
	require.Empty(t, r.data(t)["content"])
	// Soft: the definition remains in Redis with deleted_at.
	raw, err := b.rdb.Get(t.Context(), "{"+b.prefix+"}:source:"+s["uid"].(string)).Result()
	require.NoError(t, err)
	require.NotContains(t, raw, `"deleted_at":null`)
}

func TestConcurrentUpdatesLoseNothing(t *testing.T) {
	b := newBundle(t)
	s := create(t, b, "p1", "c")
	path := "/api/v1/projects/p1/sources/" + s["uid"].(string)
	bodies := []string{
		`{"name":"new-name"}`,
		`{"is_disabled":true}`,
		`{"custom_response":{"body":"thanks","content_type":"text/plain"}}`,
		`{"forward_headers":["x-a","x-b"]}`,
		`{"idempotency_keys":["request.header.X-Id"]}`,
		`{"event_type_location":"body.type"}`,
		`{"body_function":"function(b){return b}"}`,
		`{"header_function":"function(h){return h}"}`,
	}
	var wg sync.WaitGroup
	codes := make(chan int, len(bodies)*5)
	for range 5 {
		for _, body := range bodies {
			wg.Go(func() {
				req := httptest.NewRequest("PUT", path, strings.NewReader(body))
				req.Header.Set("Authorization", bearer)
				req.Header.Set("Content-Type", "application/json")
				rec := httptest.NewRecorder()
				b.h.ServeHTTP(rec, req)
				codes <- rec.Code
			})
		}
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		require.Equal(t, http.StatusAccepted, c)
	}
	d := b.do(t, "GET", path, bearer, "").data(t)
	require.Equal(t, "new-name", d["name"])
	require.Equal(t, true, d["is_disabled"])
	require.Equal(t, "thanks", d["custom_response"].(map[string]any)["body"])
	require.Equal(t, []any{"x-a", "x-b"}, d["forward_headers"])
	require.Equal(t, []any{"request.header.X-Id"}, d["idempotency_keys"])
	require.Equal(t, "body.type", d["event_type_location"])
	require.Equal(t, "function(b){return b}", d["body_function"])
	require.Equal(t, "function(h){return h}", d["header_function"])
	require.Equal(t, float64(1+len(bodies)*5), d["revision"])
}

func TestAuthAndProjectIsolation(t *testing.T) {
	b := newBundle(t)
	s := create(t, b, "p1", "mine")
	mine := "/api/v1/projects/p1/sources/" + s["uid"].(string)
	cases := []struct {
		name, method, path, auth string
		want                     int
	}{
		{"no key", "GET", "/api/v1/projects/p1/sources", "", 401},
		{"wrong key", "GET", "/api/v1/projects/p1/sources", "Bearer nope", 401},
		{"empty bearer", "GET", "/api/v1/projects/p1/sources", "Bearer ", 401},
		{"key prefix only", "GET", "/api/v1/projects/p1/sources", "Bearer " + globalKey[:5], 401},
		{"wrong key on source", "GET", mine, "Bearer nope", 401},
		{"wrong key on create", "POST", "/api/v1/projects/p1/sources", "nope", 401},
		{"global bearer", "GET", mine, bearer, 200},
		{"global bare", "GET", mine, globalKey, 200},
		{"lowercase bearer", "GET", mine, "bearer " + globalKey, 200},
		{"project key own project", "GET", mine, "Bearer " + p1Key, 200},
		{"project key own list", "GET", "/api/v1/projects/p1/sources", p1Key, 200},
		{"project key other project list", "GET", "/api/v1/projects/p2/sources", "Bearer " + p1Key, 403},
		{"project key other project create", "POST", "/api/v1/projects/p2/sources", "Bearer " + p1Key, 403},
		{"project key other project source", "GET", "/api/v1/projects/p2/sources/" + s["uid"].(string), "Bearer " + p1Key, 403},
		{"other project's source id", "GET", "/api/v1/projects/p2/sources/" + s["uid"].(string), bearer, 404},
		{"other project's source put", "PUT", "/api/v1/projects/p2/sources/" + s["uid"].(string), bearer, 404},
		{"other project's source delete", "DELETE", "/api/v1/projects/p2/sources/" + s["uid"].(string), bearer, 404},
		{"unknown id", "GET", "/api/v1/projects/p1/sources/01ARZ3NDEKTSV4RRFFQ69G5FAV", bearer, 404},
		{"wrong method", "PATCH", mine, bearer, 405},
		{"wrong method list", "DELETE", "/api/v1/projects/p1/sources", bearer, 405},
		{"unknown route", "GET", "/api/v1/nope", bearer, 404},
		{"healthz without key", "GET", "/healthz", "", 200},
		{"readyz without key", "GET", "/readyz", "", 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := ""
			if c.method == "POST" || c.method == "PUT" {
				body = `{"name":"x"}`
			}
			r := b.do(t, c.method, c.path, c.auth, body)
			require.Equal(t, c.want, r.Code, r.Raw)
			if c.want >= 400 {
				require.NotEmpty(t, r.Body.Message)
			}
		})
	}
	// p2 sees nothing of p1, and p1's source is untouched.
	r := b.do(t, "GET", "/api/v1/projects/p2/sources", bearer, "")
	require.Empty(t, r.data(t)["content"])
	r = b.do(t, "GET", mine, bearer, "")
	require.Equal(t, "mine", r.data(t)["name"])
	require.Equal(t, 1.0, r.data(t)["revision"])
}

func TestReadinessAndSourceRoutes(t *testing.T) {
	notReady := errors.New("supervisor not started")
	var ready error
	b := newBundle(t, func(o *api.Options) {
		o.Ready = func(context.Context) error { return ready }
		o.SourceRoutes = func(r chi.Router) {
			r.Get("/status", func(w http.ResponseWriter, r *http.Request) {
				api.WriteJSON(w, http.StatusOK, "status", map[string]string{"uid": api.SourceFrom(r.Context()).UID, "url": api.SourceFrom(r.Context()).URL})
			})
		}
	})
	s := create(t, b, "p1", "s")
	status := "/api/v1/projects/p1/sources/" + s["uid"].(string) + "/status"
	r := b.do(t, "GET", status, bearer, "")
	require.Equal(t, http.StatusOK, r.Code, r.Raw)
	require.Equal(t, s["uid"], r.data(t)["uid"])
	require.Equal(t, s["url"], r.data(t)["url"])
	require.Equal(t, 401, b.do(t, "GET", status, "", "").Code)
	require.Equal(t, 404, b.do(t, "GET", "/api/v1/projects/p2/sources/"+s["uid"].(string)+"/status", bearer, "").Code)

	require.Equal(t, 200, b.do(t, "GET", "/readyz", "", "").Code)
	ready = notReady
	r = b.do(t, "GET", "/readyz", "", "")
	require.Equal(t, 503, r.Code)
	require.Contains(t, r.Body.Message, "supervisor not started")

	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer dead.Close()
	down := &bundle{h: api.New(api.Options{Store: source.New(dead, "x"), Keys: []api.Key{{Secret: globalKey}}})}
	r = down.do(t, "GET", "/readyz", "", "")
	require.Equal(t, 503, r.Code)
	require.Contains(t, r.Body.Message, "redis")
	r = down.do(t, "GET", "/healthz", "", "")
	require.Equal(t, 200, r.Code)
	r = down.do(t, "POST", "/api/v1/projects/p1/sources", bearer, `{"name":"n","type":"http"}`)
	require.Equal(t, 503, r.Code, "Redis down is the server's failure, and retryable")
	require.Equal(t, "source store unavailable, try again", r.Body.Message)
	r = down.do(t, "GET", "/api/v1/projects/p1/sources/01JD2Q4ZC6W8Y0K7V6S3T9M1PA/status", bearer, "")
	require.Equal(t, 503, r.Code)
}
