package api

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sluice-io/sluice/source"
)

// The url spliced into the stored JSON gives byte for byte what encoding
// the rendered source gives, whatever the string fields before it hold.
func TestRenderStoredMatchesEncoding(t *testing.T) {
	s := &server{o: Options{PublicURL: "https://h.example.com/a?b=<c>&d"}}
	now := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, name := range []string{"plain", `a","url":"x`, `tricky,"url":""`, `back\slash\`, "<html>&ünï\u2028", ""} {
		src := source.Source{
			UID: "01J0000000000000000000000", MaskID: "abc" + name, ProjectID: "p\"1", Name: name, Type: source.TypePubSub,
			PubSub: &source.PubSub{Type: source.PubSubAMQP, Workers: 2, AMQP: &source.AMQP{
				Schema: "amqp", Host: "h", Port: "5672", Queue: "q", BindExchange: &source.BindExchange{Exchange: "e", RoutingKey: "r"},
			}},
			Revision: 3, CreatedAt: now, UpdatedAt: now,
		}
		stored, err := json.Marshal(src)
		require.NoError(t, err)
		rendered := s.render(src)
		want, err := json.Marshal(rendered)
		require.NoError(t, err)
		got, err := renderStored(string(stored), rendered)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got), name)

		l, err := s.loaded(string(stored), src)
		require.NoError(t, err)
		env, err := json.Marshal(envelope{Message: "Source fetched successfully", Status: true, Data: rendered})
		require.NoError(t, err)
		require.Equal(t, string(env)+"\n", string(l.body))
		require.Equal(t, string(want), string(l.data))
	}
}
