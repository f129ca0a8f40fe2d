package api_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sluice-io/sluice/source/api"
)

// A GET reuses the previous rendering of a source only while its stored
// JSON is unchanged: writes through another API over the same Redis (another
// process) are seen by the very next read, so are deletes and project checks.
func TestGetSeesOtherProcessesWrites(t *testing.T) {
	b := newBundle(t)
	other := &bundle{h: api.New(b.opts), store: b.store, rdb: b.rdb, prefix: b.prefix, opts: b.opts}
	s := create(t, b, "p1", "first")
	path := "/api/v1/projects/p1/sources/" + s["uid"].(string)

	for _, api := range []*bundle{other, b, b} { // other decodes it afresh, b renders from the create, then the cache
		r := api.do(t, "GET", path, bearer, "")
		require.Equal(t, http.StatusOK, r.Code, r.Raw)
		require.Equal(t, s, r.data(t))
		require.Equal(t, publicBase+"/ingest/"+s["mask_id"].(string), r.data(t)["url"])
	}
	r := b.do(t, "GET", "/api/v1/projects/p2/sources/"+s["uid"].(string), bearer, "")
	require.Equal(t, http.StatusNotFound, r.Code, "a cached source still belongs to its project only: %s", r.Raw)

	r = other.do(t, "PUT", path, bearer, `{"name":"second"}`)
	require.Equal(t, http.StatusAccepted, r.Code, r.Raw)
	updated := r.data(t)
	r = b.do(t, "GET", path, bearer, "")
	require.Equal(t, http.StatusOK, r.Code, r.Raw)
	require.Equal(t, updated, r.data(t))
	require.Equal(t, "second", r.data(t)["name"])
	require.Equal(t, 2.0, r.data(t)["revision"])

	r = other.do(t, "DELETE", path, bearer, "")
	require.Equal(t, http.StatusOK, r.Code, r.Raw)
	r = b.do(t, "GET", path, bearer, "")
	require.Equal(t, http.StatusNotFound, r.Code, r.Raw)
}
