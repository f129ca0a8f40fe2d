package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/sluice-io/sluice/dispatch"
)

// StatusFunc returns the live state of a source's workers, ready to encode.
type StatusFunc func(sourceID string) any

// StatusRoutes mounts GET .../sources/{sourceID}/status (use in
// Options.SourceRoutes).
func StatusRoutes(status StatusFunc) func(chi.Router) {
	return func(r chi.Router) {
		r.Get("/status", func(w http.ResponseWriter, r *http.Request) {
			WriteJSON(w, http.StatusOK, "Source status fetched successfully", status(SourceFrom(r.Context()).UID))
		})
	}
}

// DeadLetters is the dead-letter stream as the admin API uses it.
type DeadLetters interface {
	// DeadLetters lists a source's dead letters, oldest first, from cursor.
	DeadLetters(ctx context.Context, sourceID, cursor string, limit int) ([]dispatch.DeadLetter, string, error)
	// Replay decodes a dead letter again, enqueues it and removes it.
	Replay(ctx context.Context, sourceID, entryID string) (dispatch.Event, error)
}

type deadLetterList struct {
	Content    []dispatch.DeadLetter `json:"content"`
	Pagination pagination            `json:"pagination"`
}

// DeadLetterRoutes mounts GET .../sources/{sourceID}/deadletters (paginated
// with perPage and next_page_cursor, like the source list) and
// POST .../deadletters/{entryID}/replay (use in Options.SourceRoutes).
func DeadLetterRoutes(dl DeadLetters) func(chi.Router) {
	return func(r chi.Router) {
		r.Get("/deadletters", func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			perPage := 50
			if v := q.Get("perPage"); v != "" {
				n, err := strconv.Atoi(v)
				if err != nil || n < 1 || n > 500 {
					WriteError(w, http.StatusBadRequest, "perPage: must be a number 1..500, got "+strconv.Quote(v))
					return
				}
				perPage = n
			}
			cursor := q.Get("next_page_cursor")
			entries, next, err := dl.DeadLetters(r.Context(), SourceFrom(r.Context()).UID, cursor, perPage)
			switch {
			case errors.Is(err, dispatch.ErrInvalidCursor):
				WriteError(w, http.StatusBadRequest, "next_page_cursor: not a cursor this API returned")
				return
			case err != nil:
				WriteError(w, http.StatusServiceUnavailable, "dead letters unavailable: "+err.Error())
				return
			}
			if entries == nil {
				entries = []dispatch.DeadLetter{}
			}
			WriteJSON(w, http.StatusOK, "Dead letters fetched successfully", deadLetterList{
				Content: entries,
				Pagination: pagination{PerPage: perPage, HasNextPage: next != "", HasPrevPage: cursor != "",
					NextPageCursor: next},
			})
		})
		r.Post("/deadletters/{entryID}/replay", func(w http.ResponseWriter, r *http.Request) {
			ev, err := dl.Replay(r.Context(), SourceFrom(r.Context()).UID, chi.URLParam(r, "entryID"))
			var pe *dispatch.PermanentError
			switch {
			case errors.Is(err, dispatch.ErrNotFound):
				WriteError(w, http.StatusNotFound, "entryID: no such dead letter for this source")
			case errors.As(err, &pe):
				WriteError(w, http.StatusUnprocessableEntity, "still malformed: "+pe.Reason)
			case err != nil:
				WriteError(w, http.StatusServiceUnavailable, "replay failed, try again: "+err.Error())
			default:
				WriteJSON(w, http.StatusOK, "Dead letter replayed", ev)
			}
		})
	}
}
