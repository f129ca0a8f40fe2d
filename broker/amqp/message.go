package amqp

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-io/sluice/broker"
)

// message converts a delivery into a broker.Message (see the package
// documentation for the headers it carries).
func message(d amqp091.Delivery) broker.Message {
	h := make(map[string]string, len(d.Headers)+4)
	props := [...]struct{ name, value string }{
		{"x-amqp-content-type", d.ContentType},
		{"x-amqp-content-encoding", d.ContentEncoding},
		{"x-amqp-correlation-id", d.CorrelationId},
		{"x-amqp-type", d.Type},
		{"x-amqp-app-id", d.AppId},
		{"x-amqp-exchange", d.Exchange},
		{"x-amqp-routing-key", d.RoutingKey},
	}
	for _, p := range props {
		if p.value != "" {
			h[p.name] = p.value
		}
	}
	for k, v := range d.Headers {
		h[k] = stringify(v)
	}
	m := broker.Message{
		ID:      d.MessageId,
		Body:    d.Body,
		Headers: h,
	}
	if !d.Timestamp.IsZero() {
		m.PublishedAt = d.Timestamp
	}
	return m
}

// stringify formats an AMQP field value as a header string.
func stringify(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case []byte:
		return string(v)
	case bool:
		return strconv.FormatBool(v)
	case int8:
		return strconv.FormatInt(int64(v), 10)
	case int16:
		return strconv.FormatInt(int64(v), 10)
	case int32:
		return strconv.FormatInt(int64(v), 10)
	case int64:
		return strconv.FormatInt(v, 10)
	case int:
		return strconv.Itoa(v)
	case uint8:
		return strconv.FormatUint(uint64(v), 10)
	case uint16:
		return strconv.FormatUint(uint64(v), 10)
	case uint32:
		return strconv.FormatUint(uint64(v), 10)
	case uint64:
		return strconv.FormatUint(v, 10)
	case float32:
		return strconv.FormatFloat(float64(v), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case time.Time:
		return v.UTC().Format(time.RFC3339)
	case amqp091.Decimal:
		return decimal(v)
	case amqp091.Table, []any:
		b, err := json.Marshal(jsonable(v))
		if err != nil {
			return fmt.Sprint(v)
		}
		return string(b)
	default:
		return fmt.Sprint(v)
	}
}

// jsonable turns nested AMQP values into values encoding/json renders
// readably (byte arrays as text rather than base64).
func jsonable(v any) any {
	switch v := v.(type) {
	case amqp091.Table:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[k] = jsonable(x)
		}
		return m
	case []any:
		s := make([]any, len(v))
		for i, x := range v {
			s[i] = jsonable(x)
		}
		return s
	case []byte:
		return string(v)
	case amqp091.Decimal:
		return decimal(v)
	default:
		return v
	}
}

// decimal formats an AMQP decimal (value × 10^-scale).
func decimal(d amqp091.Decimal) string {
	s := strconv.FormatInt(int64(d.Value), 10)
	if d.Scale == 0 {
		return s
	}
	neg := d.Value < 0
	if neg {
		s = s[1:]
	}
	for len(s) <= int(d.Scale) {
		s = "0" + s
	}
	s = s[:len(s)-int(d.Scale)] + "." + s[len(s)-int(d.Scale):]
	if neg {
		s = "-" + s
	}
	return s
}
