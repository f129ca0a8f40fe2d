package api_test

import (
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// valid bodies (the fuzz corpus starts from them too).
const (
	okKafka  = `{"name":"k","type":"pub_sub","pub_sub":{"type":"kafka","workers":2,"kafka":{"brokers":["k:9092"],"topic_name":"t"}}}`
	okAMQP   = `{"name":"a","type":"pub_sub","pub_sub":{"type":"amqp","workers":1,"amqp":{"schema":"amqp","host":"h","port":"5672","queue":"q","bindExchange":{"exchange":"x","routingKey":"r"}}}}`
	okSQS    = `{"name":"s","type":"pub_sub","pub_sub":{"type":"sqs","workers":1,"sqs":{"access_key_id":"a","secret_key":"b","default_region":"r","queue_name":"q"}}}`
	okGoogle = `{"name":"g","type":"pub_sub","pub_sub":{"type":"google","workers":1,"google":{"project_id":"p","subscription_id":"s","service_account":{"type":"service_account"}}}}`
)

// pubsub wraps a pub_sub block into an otherwise valid body.
func pubsub(block string) string { return `{"name":"n","type":"pub_sub","pub_sub":` + block + `}` }

type badCase struct {
	name  string
	body  string
	ct    string // default application/json
	code  int    // default 400
	field string // must appear in the message
	// postOnly: valid as a partial update of a complete source.
	postOnly bool
}

func badCases() []badCase {
	kafka := func(k string) string { return pubsub(`{"type":"kafka","workers":1,"kafka":` + k + `}`) }
	amqp := func(a string) string { return pubsub(`{"type":"amqp","workers":1,"amqp":` + a + `}`) }
	sqs := func(s string) string { return pubsub(`{"type":"sqs","workers":1,"sqs":` + s + `}`) }
	google := func(g string) string { return pubsub(`{"type":"google","workers":1,"google":` + g + `}`) }
	return []badCase{
		{name: "empty body", body: "", field: "body"},
		{name: "whitespace body", body: "  \n", field: "body"},
		{name: "not JSON", body: "name=x", field: "body"},
		{name: "truncated JSON", body: `{"name":"x"`, field: "body"},
		{name: "JSON null", body: `null`, field: "body"},
		{name: "JSON array", body: `[]`, field: "body"},
		{name: "JSON string", body: `"x"`, field: "body"},
		{name: "trailing data", body: `{"name":"x","type":"http"} {}`, field: "body"},
		{name: "text/plain", body: okKafka, ct: "text/plain", code: 415, field: "Content-Type"},
		{name: "no content type", body: okKafka, ct: "-", code: 415, field: "Content-Type"},
		{name: "form content type", body: okKafka, ct: "application/x-www-form-urlencoded", code: 415, field: "Content-Type"},
		{name: "huge body", body: `{"name":"` + strings.Repeat("x", 1<<20+10) + `"}`, code: 413, field: "body"},
		{name: "unknown top-level field", body: `{"name":"x","type":"http","nmae":"y"}`, field: "nmae"},
		{name: "unknown pub_sub field", body: pubsub(`{"type":"kafka","workers":1,"wrkers":2,"kafka":{"brokers":["k:1"],"topic_name":"t"}}`), field: "pub_sub.wrkers"},
		{name: "unknown kafka field", body: kafka(`{"brokers":["k:1"],"topic":"t"}`), field: "pub_sub.kafka.topic"},
		{name: "unknown amqp field", body: amqp(`{"schema":"amqp","host":"h","port":"1","queue":"q","exchange":"x"}`), field: "pub_sub.amqp.exchange"},
		{name: "unknown google field", body: google(`{"project_id":"p","subscription_id":"s","service_account":{},"key":1}`), field: "pub_sub.google.key"},
		{name: "missing name", body: `{"type":"http"}`, field: "name", postOnly: true},
		{name: "name wrong type", body: `{"name":5,"type":"http"}`, field: "name"},
		{name: "missing type", body: `{"name":"x"}`, field: "type", postOnly: true},
		{name: "bad type", body: `{"name":"x","type":"webhook"}`, field: "type"},
		{name: "bad provider", body: `{"name":"x","type":"http","provider":"gitlab"}`, field: "provider"},
		{name: "provider without hmac secret", body: `{"name":"x","type":"http","provider":"github"}`, field: "verifier.hmac.secret"},
		{name: "bad verifier type", body: `{"name":"x","type":"http","verifier":{"type":"jwt"}}`, field: "verifier.type"},
		{name: "hmac block missing", body: `{"name":"x","type":"http","verifier":{"type":"hmac"}}`, field: "verifier.hmac"},
		{name: "hmac bad hash", body: `{"name":"x","type":"http","verifier":{"type":"hmac","hmac":{"header":"h","hash":"MD5","secret":"s","encoding":"hex"}}}`, field: "verifier.hmac.hash"},
		{name: "hmac bad encoding", body: `{"name":"x","type":"http","verifier":{"type":"hmac","hmac":{"header":"h","hash":"SHA256","secret":"s","encoding":"utf8"}}}`, field: "verifier.hmac.encoding"},
		{name: "basic_auth incomplete", body: `{"name":"x","type":"http","verifier":{"type":"basic_auth","basic_auth":{"username":"u"}}}`, field: "verifier.basic_auth.password"},
		{name: "api_key incomplete", body: `{"name":"x","type":"http","verifier":{"type":"api_key","api_key":{"header_value":"v"}}}`, field: "verifier.api_key.header_name"},
		{name: "bad idempotency key", body: `{"name":"x","type":"http","idempotency_keys":["header.X"]}`, field: "idempotency_keys[0]"},
		{name: "idempotency keys not array", body: `{"name":"x","type":"http","idempotency_keys":"request.header.X"}`, field: "idempotency_keys"},
		{name: "is_disabled not bool", body: `{"name":"x","type":"http","is_disabled":"yes"}`, field: "is_disabled"},
		{name: "pub_sub missing", body: `{"name":"x","type":"pub_sub"}`, field: "pub_sub", postOnly: true},
		{name: "pub_sub not object", body: `{"name":"x","type":"pub_sub","pub_sub":"kafka"}`, field: "pub_sub"},
		{name: "pub_sub type missing", body: pubsub(`{"workers":1}`), field: "pub_sub.type"},
		{name: "pub_sub type unknown", body: pubsub(`{"type":"nats","workers":1}`), field: "pub_sub.type"},
		{name: "pub_sub block missing", body: pubsub(`{"type":"kafka","workers":1}`), field: "pub_sub.kafka"},
		{name: "workers zero", body: pubsub(`{"type":"kafka","workers":0,"kafka":{"brokers":["k:1"],"topic_name":"t"}}`), field: "pub_sub.workers"},
		{name: "workers negative", body: pubsub(`{"type":"kafka","workers":-3,"kafka":{"brokers":["k:1"],"topic_name":"t"}}`), field: "pub_sub.workers"},
		{name: "workers over max", body: pubsub(`{"type":"kafka","workers":17,"kafka":{"brokers":["k:1"],"topic_name":"t"}}`), field: "pub_sub.workers"},
		{name: "workers string", body: pubsub(`{"type":"kafka","workers":"2","kafka":{"brokers":["k:1"],"topic_name":"t"}}`), field: "pub_sub.workers"},
		{name: "workers fraction", body: pubsub(`{"type":"kafka","workers":1.5,"kafka":{"brokers":["k:1"],"topic_name":"t"}}`), field: "pub_sub.workers"},
		{name: "workers overflow", body: pubsub(`{"type":"kafka","workers":1e30,"kafka":{"brokers":["k:1"],"topic_name":"t"}}`), field: "pub_sub.workers"},
		{name: "kafka no brokers", body: kafka(`{"brokers":[],"topic_name":"t"}`), field: "pub_sub.kafka.brokers"},
		{name: "kafka broker without port", body: kafka(`{"brokers":["kafka"],"topic_name":"t"}`), field: "pub_sub.kafka.brokers[0]"},
		{name: "kafka broker port out of range", body: kafka(`{"brokers":["k:1","k:70000"],"topic_name":"t"}`), field: "pub_sub.kafka.brokers[1]"},
		{name: "kafka brokers not array", body: kafka(`{"brokers":"k:1","topic_name":"t"}`), field: "pub_sub.kafka.brokers"},
		{name: "kafka topic missing", body: kafka(`{"brokers":["k:1"]}`), field: "pub_sub.kafka.topic_name"},
		{name: "kafka auth type unknown", body: kafka(`{"brokers":["k:1"],"topic_name":"t","auth":{"type":"gssapi","username":"u","password":"p"}}`), field: "pub_sub.kafka.auth.type"},
		{name: "kafka scram without hash", body: kafka(`{"brokers":["k:1"],"topic_name":"t","auth":{"type":"scram","username":"u","password":"p"}}`), field: "pub_sub.kafka.auth.hash"},
		{name: "kafka plain without password", body: kafka(`{"brokers":["k:1"],"topic_name":"t","auth":{"type":"plain","username":"u"}}`), field: "pub_sub.kafka.auth.password"},
		{name: "kafka empty auth", body: kafka(`{"brokers":["k:1"],"topic_name":"t","auth":{}}`), field: "pub_sub.kafka.auth.type"},
		{name: "kafka tls not bool", body: kafka(`{"brokers":["k:1"],"topic_name":"t","auth":{"tls":"true"}}`), field: "pub_sub.kafka.auth.tls"},
		{name: "kafka bad ca_cert", body: kafka(`{"brokers":["k:1"],"topic_name":"t","auth":{"tls":true,"ca_cert":"not pem"}}`), field: "pub_sub.kafka.auth.ca_cert"},
		{name: "amqp bad schema", body: amqp(`{"schema":"http","host":"h","port":"5672","queue":"q"}`), field: "pub_sub.amqp.schema"},
		{name: "amqp missing host", body: amqp(`{"schema":"amqp","port":"5672","queue":"q"}`), field: "pub_sub.amqp.host"},
		{name: "amqp port zero", body: amqp(`{"schema":"amqp","host":"h","port":"0","queue":"q"}`), field: "pub_sub.amqp.port"},
		{name: "amqp port too big", body: amqp(`{"schema":"amqp","host":"h","port":"65536","queue":"q"}`), field: "pub_sub.amqp.port"},
		{name: "amqp port not numeric", body: amqp(`{"schema":"amqp","host":"h","port":"http","queue":"q"}`), field: "pub_sub.amqp.port"},
		{name: "amqp port as number", body: amqp(`{"schema":"amqp","host":"h","port":5672,"queue":"q"}`), field: "pub_sub.amqp.port"},
		{name: "amqp missing queue", body: amqp(`{"schema":"amqp","host":"h","port":"5672"}`), field: "pub_sub.amqp.queue"},
		{name: "amqp bind without exchange", body: amqp(`{"schema":"amqp","host":"h","port":"5672","queue":"q","bindExchange":{"routingKey":"r"}}`), field: "pub_sub.amqp.bindExchange.exchange"},
		{name: "amqp bind both shapes", body: amqp(`{"schema":"amqp","host":"h","port":"5672","queue":"q","bindExchange":{"exchange":"x"},"bindedExchange":"y"}`), field: "pub_sub.amqp.bindExchange"},
		{name: "amqp auth without user", body: amqp(`{"schema":"amqp","host":"h","port":"5672","queue":"q","auth":{"password":"p"}}`), field: "pub_sub.amqp.auth.user"},
		{name: "sqs key without secret", body: sqs(`{"access_key_id":"a","default_region":"r","queue_name":"q"}`), field: "pub_sub.sqs.secret_key"},
		{name: "sqs missing region", body: sqs(`{"queue_name":"q"}`), field: "pub_sub.sqs.default_region"},
		{name: "sqs missing queue", body: sqs(`{"default_region":"r"}`), field: "pub_sub.sqs.queue_name"},
		{name: "sqs bad endpoint", body: sqs(`{"default_region":"r","queue_name":"q","endpoint":"localhost:4566"}`), field: "pub_sub.sqs.endpoint"},
		{name: "google missing service account", body: google(`{"project_id":"p","subscription_id":"s"}`), field: "pub_sub.google.service_account"},
		{name: "google invalid base64", body: google(`{"project_id":"p","subscription_id":"s","service_account":"!!!not base64!!!"}`), field: "pub_sub.google.service_account"},
		{name: "google base64 not JSON object", body: google(`{"project_id":"p","subscription_id":"s","service_account":"aGVsbG8="}`), field: "pub_sub.google.service_account"},
		{name: "google bytes out of range", body: google(`{"project_id":"p","subscription_id":"s","service_account":[123,300]}`), field: "pub_sub.google.service_account[1]"},
		{name: "google service account number", body: google(`{"project_id":"p","subscription_id":"s","service_account":5}`), field: "pub_sub.google.service_account"},
		{name: "google missing subscription", body: google(`{"project_id":"p","service_account":{}}`), field: "pub_sub.google.subscription_id"},
		{name: "unknown verifier field", body: `{"name":"x","type":"http","verifier":{"type":"hmac","hmac":{"header":"h","hash":"SHA256","secret":"s","encoding":"hex","algo":"x"}}}`, field: "verifier.hmac.algo"},
		{name: "unknown kafka auth field", body: kafka(`{"brokers":["k:1"],"topic_name":"t","auth":{"tls":true,"sasl":"x"}}`), field: "pub_sub.kafka.auth.sasl"},
		{name: "unknown amqp auth field", body: amqp(`{"schema":"amqp","host":"h","port":"1","queue":"q","auth":{"user":"u","pass":"p"}}`), field: "pub_sub.amqp.auth"},
		{name: "custom_response wrong type", body: `{"name":"x","type":"http","custom_response":"ok"}`, field: "custom_response"},
	}
}

func TestBadInput(t *testing.T) {
	b := newBundle(t)
	existing := create(t, b, "p1", "existing")
	path := "/api/v1/projects/p1/sources"
	snapshot := func() map[string]string {
		ctx := t.Context()
		out := map[string]string{}
		keys, err := b.rdb.Keys(ctx, "{"+b.prefix+"}*").Result()
		require.NoError(t, err)
		sort.Strings(keys)
		for _, k := range keys {
			out[k] = b.rdb.Dump(ctx, k).Val()
		}
		return out
	}
	before := snapshot()
	cases := badCases()
	require.GreaterOrEqual(t, len(cases), 40)
	for _, c := range cases {
		for _, method := range []string{"POST", "PUT"} {
			t.Run(method+"/"+c.name, func(t *testing.T) {
				p := path
				if method == "PUT" {
					p += "/" + existing["uid"].(string)
					if c.postOnly {
						t.Skip("a partial update keeps the current value of a field it leaves out")
					}
				}
				ct := c.ct
				if ct == "" {
					ct = "application/json"
				} else if ct == "-" {
					ct = ""
				}
				req := httptest.NewRequest(method, p, strings.NewReader(c.body))
				req.Header.Set("Authorization", bearer)
				if ct != "" {
					req.Header.Set("Content-Type", ct)
				}
				rec := httptest.NewRecorder()
				b.h.ServeHTTP(rec, req)
				want := c.code
				if want == 0 {
					want = http.StatusBadRequest
				}
				msg := rec.Body.String()
				if len(msg) > 400 {
					msg = msg[:400]
				}
				require.Equal(t, want, rec.Code, msg)
				require.Contains(t, msg, `"status":false`)
				require.Contains(t, msg, c.field, "the message names the field")
			})
		}
	}
	require.Equal(t, before, snapshot(), "no bad request changed anything stored")
}

// FuzzCreate throws bodies at the create handler: never a 500, always the
// envelope, 201 only for something that reads back.
func FuzzCreate(f *testing.F) {
	for _, body := range []string{okKafka, okAMQP, okSQS, okGoogle, fullBody} {
		f.Add(body)
	}
	for _, c := range badCases() {
		if len(c.body) < 4096 && c.ct == "" {
			f.Add(c.body)
		}
	}
	b := newBundle(f)
	f.Fuzz(func(t *testing.T, body string) {
		req := httptest.NewRequest("POST", "/api/v1/projects/fz/sources", strings.NewReader(body))
		req.Header.Set("Authorization", bearer)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		b.h.ServeHTTP(rec, req)
		switch {
		case rec.Code == http.StatusCreated:
			r := b.do(t, "GET", "/api/v1/projects/fz/sources/"+extractUID(t, rec.Body.String()), bearer, "")
			require.Equal(t, http.StatusOK, r.Code, r.Raw)
		case rec.Code >= 400 && rec.Code < 500:
			require.Contains(t, rec.Body.String(), `"status":false`)
		default:
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body.String())
		}
	})
}

func extractUID(t *testing.T, raw string) string {
	i := strings.Index(raw, `"uid":"`)
	require.GreaterOrEqual(t, i, 0, raw)
	return raw[i+7 : i+7+26]
}
