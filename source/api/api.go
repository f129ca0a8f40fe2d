// Package api is sluice's admin HTTP API: Convoy-compatible source routes
// under /api/v1/projects/{projectID}/sources, plus /healthz and /readyz.
//
// Every response is the envelope {"message","status","data"}; errors have
// status false and a message naming the offending field.
package api

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/go-chi/chi/v5"

	"github.com/sluice-io/sluice/source"
)

// Key is one admin API key.
type Key struct {
	Secret    string // the key as clients send it
	ProjectID string // the only project the key may touch; empty = every project
}

// Options configures the API.
type Options struct {
	// Store keeps the sources. Required.
	Store *source.Store
	// Keys are the accepted API keys. No keys: every /api request is 401.
	Keys []Key
	// PublicURL is the base of each source's url (url = PublicURL + "/ingest/" + mask_id).
	// Default "http://localhost:8080".
	PublicURL string
	// MaxWorkers bounds pub_sub.workers. Default source.DefaultMaxWorkers (64).
	MaxWorkers int
	// MaxBodyBytes bounds request bodies (413 beyond). Default 1 MiB.
	MaxBodyBytes int64
	// Logger receives server-side errors. Default: discard.
	Logger *slog.Logger
	// Ready is an extra readiness check for /readyz, run after the Redis
	// ping. Nil: Redis alone decides.
	Ready func(ctx context.Context) error
	// SourceRoutes mounts more routes under
	// /api/v1/projects/{projectID}/sources/{sourceID}; they run after the
	// key is checked and the source is loaded (SourceFrom). Optional.
	SourceRoutes func(r chi.Router)
	// Routes mounts more routes at the root without API key (e.g. /metrics).
	// Optional.
	Routes func(r chi.Router)
}

type server struct {
	o     Options
	keys  []hashedKey
	log   *slog.Logger
	cache renderCache
}

type hashedKey struct {
	sum       [32]byte
	projectID string
}

// New returns the API's handler.
func New(o Options) http.Handler {
	o.PublicURL = strings.TrimRight(cmp.Or(o.PublicURL, "http://localhost:8080"), "/")
	o.MaxWorkers = cmp.Or(o.MaxWorkers, source.DefaultMaxWorkers)
	o.MaxBodyBytes = cmp.Or(o.MaxBodyBytes, 1<<20)
	s := &server{o: o, log: cmp.Or(o.Logger, slog.New(slog.DiscardHandler)), cache: renderCache{max: 1024}}
	for _, k := range o.Keys {
		s.keys = append(s.keys, hashedKey{sha256.Sum256([]byte(k.Secret)), k.ProjectID})
	}

	r := chi.NewRouter()
	r.Use(s.recoverer)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) { WriteError(w, http.StatusNotFound, "route not found") })
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed")
	})
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, http.StatusOK, "ok", nil) })
	r.Get("/readyz", s.readyz)
	if o.Routes != nil {
		o.Routes(r)
	}
	r.Route("/api/v1/projects/{projectID}", func(r chi.Router) {
		r.Use(s.authorize)
		r.Route("/sources", func(r chi.Router) {
			r.Post("/", s.create)
			r.Get("/", s.list)
			r.Route("/{sourceID}", func(r chi.Router) {
				r.Use(s.loadSource)
				r.Get("/", s.get)
				r.Put("/", s.update)
				r.Delete("/", s.delete)
				if o.SourceRoutes != nil {
					o.SourceRoutes(r)
				}
			})
		})
	})
	return r
}

// envelope is every response body.
type envelope struct {
	Message string `json:"message"`
	Status  bool   `json:"status"`
	Data    any    `json:"data,omitempty"`
}

// WriteJSON writes the envelope {"message","status":true,"data"} with code.
func WriteJSON(w http.ResponseWriter, code int, msg string, data any) {
	b, err := json.Marshal(envelope{Message: msg, Status: code < 400, Data: data})
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"message":"encode response","status":false}`)
	}
	writeBody(w, code, append(b, '\n'))
}

// writeBody writes an encoded JSON response.
func writeBody(w http.ResponseWriter, code int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(body)
}

// WriteError writes the error envelope {"message","status":false} with code.
func WriteError(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(envelope{Message: msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

type ctxKey struct{}

// SourceFrom returns the source loaded for a SourceRoutes handler (its url
// filled in). It panics outside such a handler. What its pointers and
// slices reach is shared with other requests: read it, never modify it.
func SourceFrom(ctx context.Context) source.Source {
	return ctx.Value(ctxKey{}).(*loaded).src
}

// loaded is one stored version of a source, decoded and rendered once.
type loaded struct {
	stored string        // the JSON as kept in Redis
	src    source.Source // decoded, url filled in; shared, never modified
	data   []byte        // src's JSON (within body)
	body   []byte        // the complete GET response, envelope and newline included
}

// renderCache keeps the last rendering of recently read sources by uid.
// Every request still reads the source from Redis; the earlier decoding and
// rendering is reused only when the stored JSON is byte for byte the same,
// so a write by any process is seen by the next read.
type renderCache struct {
	mu  sync.RWMutex
	m   map[string]*loaded
	max int // entries kept; beyond, an arbitrary one makes room
}

func (c *renderCache) get(id string) *loaded {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.m[id]
}

func (c *renderCache) put(id string, l *loaded) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]*loaded)
	}
	if _, ok := c.m[id]; !ok && len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[id] = l
}

func (s *server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic in handler", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v))
				WriteError(w, http.StatusInternalServerError, "internal error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	if err := s.o.Store.Ping(r.Context()); err != nil {
		WriteError(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
		return
	}
	if s.o.Ready != nil {
		if err := s.o.Ready(r.Context()); err != nil {
			WriteError(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
	}
	WriteJSON(w, http.StatusOK, "ready", nil)
}

// authorize accepts "Authorization: Bearer <key>" or a bare key: 401 when
// it matches no key, 403 when the key is bound to another project. Every
// key is compared, in constant time, on SHA-256 sums (no length leak).
func (s *server) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := strings.TrimSpace(r.Header.Get("Authorization"))
		if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			h = strings.TrimSpace(h[7:])
		}
		if h == "" {
			WriteError(w, http.StatusUnauthorized, "Authorization: an API key is required")
			return
		}
		sum := sha256.Sum256([]byte(h))
		match := -1
		for i := range s.keys {
			if subtle.ConstantTimeCompare(sum[:], s.keys[i].sum[:]) == 1 {
				match = i
			}
		}
		if match < 0 {
			WriteError(w, http.StatusUnauthorized, "Authorization: invalid API key")
			return
		}
		if p := s.keys[match].projectID; p != "" && p != chi.URLParam(r, "projectID") {
			WriteError(w, http.StatusForbidden, "Authorization: this API key is not allowed for project "+strconv.Quote(chi.URLParam(r, "projectID")))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *server) loadSource(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l, err := s.load(r.Context(), chi.URLParam(r, "projectID"), chi.URLParam(r, "sourceID"))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, l)))
	})
}

// load reads projectID's live source id from the store, decoding and
// rendering it only when its stored JSON differs from the cached one.
func (s *server) load(ctx context.Context, projectID, id string) (*loaded, error) {
	stored, err := s.o.Store.Stored(ctx, id)
	if err != nil {
		return nil, err
	}
	l := s.cache.get(id)
	if l == nil || l.stored != stored {
		src, err := source.DecodeStored(stored)
		if err != nil {
			return nil, fmt.Errorf("get source %s: %w", id, err)
		}
		if src.DeletedAt != nil {
			return nil, source.ErrNotFound
		}
		if l, err = s.loaded(stored, src); err != nil {
			return nil, fmt.Errorf("encode source %s: %w", id, err)
		}
		s.cache.put(id, l)
	}
	if l.src.ProjectID != projectID {
		return nil, source.ErrNotFound
	}
	return l, nil
}

func (s *server) render(src source.Source) source.Source {
	src.URL = s.o.PublicURL + "/ingest/" + src.MaskID
	return src
}

// loaded renders src, decoded from stored, for GET.
func (s *server) loaded(stored string, src source.Source) (*loaded, error) {
	src = s.render(src)
	data, err := renderStored(stored, src)
	if err != nil {
		return nil, err
	}
	body := okBody("Source fetched successfully", data)
	return &loaded{stored: stored, src: src, data: body[len(body)-2-len(data) : len(body)-2], body: body}, nil
}

// renderStored returns src's JSON, src being rendered (url filled in) from
// a source whose stored JSON is stored. Instead of encoding src again it
// puts the url into stored, which holds "url":"" (the store keeps no url:
// it follows from PublicURL) after only string fields: a `,"` cannot occur
// inside a JSON string, so the first `,"url":""` is that field. Anything
// else is encoded afresh.
func renderStored(stored string, src source.Source) ([]byte, error) {
	const empty = `,"url":""`
	i := strings.Index(stored, empty)
	if i < 0 {
		return json.Marshal(src)
	}
	u, err := json.Marshal(src.URL)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, len(stored)+len(u))
	b = append(b, stored[:i+len(empty)-2]...)
	b = append(b, u...)
	return append(b, stored[i+len(empty):]...), nil
}

// okBody is WriteJSON's body for status true around data, already encoded.
func okBody(msg string, data []byte) []byte {
	m, _ := json.Marshal(msg) // a string always encodes
	b := make([]byte, 0, len(m)+len(data)+40)
	b = append(b, `{"message":`...)
	b = append(b, m...)
	b = append(b, `,"status":true,"data":`...)
	b = append(b, data...)
	return append(b, "}\n"...)
}

// fail maps err to a response: field errors 400, not found 404, a body
// over the limit 413, anything else 500 (logged, not shown).
func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var fe *source.FieldError
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &fe):
		WriteError(w, http.StatusBadRequest, strings.ReplaceAll(err.Error(), "\n", "; "))
	case errors.Is(err, source.ErrNotFound):
		WriteError(w, http.StatusNotFound, "source not found")
	case errors.As(err, &tooBig):
		WriteError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body: larger than %d bytes", tooBig.Limit))
	case r.Context().Err() != nil:
		// the client is gone; nobody reads a response
	default:
		// Everything the client could have got wrong is mapped above; what is
		// left is the store failing (Redis down, a timeout): retryable.
		s.log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		WriteError(w, http.StatusServiceUnavailable, "source store unavailable, try again")
	}
}

// readInput checks the content type and decodes the body as a source.Input.
func (s *server) readInput(w http.ResponseWriter, r *http.Request) (source.Input, bool) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		WriteError(w, http.StatusUnsupportedMediaType, "Content-Type: must be application/json")
		return source.Input{}, false
	}
	in, err := source.DecodeInput(http.MaxBytesReader(w, r.Body, s.o.MaxBodyBytes))
	if err != nil {
		s.fail(w, r, err)
		return source.Input{}, false
	}
	return in, true
}

func (s *server) create(w http.ResponseWriter, r *http.Request) {
	in, ok := s.readInput(w, r)
	if !ok {
		return
	}
	var src source.Source
	in.Apply(&src)
	src.Normalize()
	if err := src.Validate(s.o.MaxWorkers); err != nil {
		s.fail(w, r, err)
		return
	}
	created, stored, err := s.o.Store.CreateStored(r.Context(), chi.URLParam(r, "projectID"), src)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	l, err := s.loaded(stored, created)
	if err != nil {
		WriteJSON(w, http.StatusCreated, "Source created successfully", s.render(created))
		return
	}
	s.cache.put(created.UID, l)
	writeBody(w, http.StatusCreated, okBody("Source created successfully", l.data))
}

func (s *server) get(w http.ResponseWriter, r *http.Request) {
	writeBody(w, http.StatusOK, r.Context().Value(ctxKey{}).(*loaded).body)
}

func (s *server) update(w http.ResponseWriter, r *http.Request) {
	in, ok := s.readInput(w, r)
	if !ok {
		return
	}
	updated, err := s.o.Store.Update(r.Context(), chi.URLParam(r, "projectID"), chi.URLParam(r, "sourceID"), func(src *source.Source) error {
		in.Apply(src)
		src.Normalize()
		return src.Validate(s.o.MaxWorkers)
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// 202 as Convoy's UpdateSource answers.
	WriteJSON(w, http.StatusAccepted, "Source updated successfully", s.render(updated))
}

func (s *server) delete(w http.ResponseWriter, r *http.Request) {
	if err := s.o.Store.Delete(r.Context(), chi.URLParam(r, "projectID"), chi.URLParam(r, "sourceID")); err != nil {
		s.fail(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, "Source deleted successfully", nil)
}

// pagination is Convoy's pagination block.
type pagination struct {
	PerPage        int    `json:"per_page"`
	HasNextPage    bool   `json:"has_next_page"`
	HasPrevPage    bool   `json:"has_prev_page"`
	PrevPageCursor string `json:"prev_page_cursor"`
	NextPageCursor string `json:"next_page_cursor"`
}

type listData struct {
	Content    []source.Source `json:"content"`
	Pagination pagination      `json:"pagination"`
}

func (s *server) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	o := source.ListOptions{
		Type: q.Get("type"), Provider: q.Get("provider"), Query: q.Get("q"),
		Cursor: q.Get("next_page_cursor"), PerPage: 20,
	}
	if v := q.Get("perPage"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			WriteError(w, http.StatusBadRequest, "perPage: must be a number 1..100, got "+strconv.Quote(v))
			return
		}
		o.PerPage = n
	}
	page, err := s.o.Store.List(r.Context(), chi.URLParam(r, "projectID"), o)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d := listData{Content: make([]source.Source, 0, len(page.Sources)), Pagination: pagination{
		PerPage: o.PerPage, HasNextPage: page.HasNext, HasPrevPage: o.Cursor != "", NextPageCursor: page.NextCursor,
	}}
	for _, src := range page.Sources {
		d.Content = append(d.Content, s.render(src))
	}
	WriteJSON(w, http.StatusOK, "Sources fetched successfully", d)
}
