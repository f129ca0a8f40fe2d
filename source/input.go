package source

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
)

// Input is the body of a create (POST) or update (PUT) request: Convoy's
// CreateSource/UpdateSource. A field left out keeps its current value on
// update; a field given replaces it wholesale (pub_sub, verifier included).
type Input struct {
	Name              *string         `json:"name"`
	Type              *string         `json:"type"`
	Provider          *string         `json:"provider"`
	IsDisabled        *bool           `json:"is_disabled"`
	Verifier          *Verifier       `json:"verifier"`
	CustomResponse    *CustomResponse `json:"custom_response"`
	ForwardHeaders    []string        `json:"forward_headers"`
	IdempotencyKeys   []string        `json:"idempotency_keys"`
	PubSub            *PubSub         `json:"pub_sub"`
	EventTypeLocation *string         `json:"event_type_location"`
	BodyFunction      *string         `json:"body_function"`
	HeaderFunction    *string         `json:"header_function"`
}

// Apply copies every field given in the input onto s.
func (in Input) Apply(s *Source) {
	if in.Name != nil {
		s.Name = *in.Name
	}
	if in.Type != nil {
		s.Type = *in.Type
	}
	if in.Provider != nil {
		s.Provider = *in.Provider
	}
	if in.IsDisabled != nil {
		s.IsDisabled = *in.IsDisabled
	}
	if in.Verifier != nil {
		s.Verifier = in.Verifier
	}
	if in.CustomResponse != nil {
		s.CustomResponse = *in.CustomResponse
	}
	if in.ForwardHeaders != nil {
		s.ForwardHeaders = in.ForwardHeaders
	}
	if in.IdempotencyKeys != nil {
		s.IdempotencyKeys = in.IdempotencyKeys
	}
	if in.PubSub != nil {
		s.PubSub = in.PubSub
	}
	if in.EventTypeLocation != nil {
		s.EventTypeLocation = *in.EventTypeLocation
	}
	if in.BodyFunction != nil {
		s.BodyFunction = in.BodyFunction
	}
	if in.HeaderFunction != nil {
		s.HeaderFunction = in.HeaderFunction
	}
}

// DecodeInput reads one JSON object from r. Unknown fields, wrong types and
// trailing data are errors; every error is a *FieldError naming the field
// ("body" when the document as a whole is wrong).
func DecodeInput(r io.Reader) (Input, error) {
	var in Input
	b, err := io.ReadAll(r)
	if err != nil {
		return in, err // not a FieldError: the caller decides (e.g. body too large)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return in, fieldErr("body", "empty; a JSON object is required")
	}
	if err := strictUnmarshal(b, &in, ""); err != nil {
		return in, err
	}
	return in, nil
}

// unknownFieldPath finds the JSON path of the first field in raw that t
// (a struct type, walked along) does not declare; encoding/json only
// reports the bare name. Types that decode themselves (AMQP, Google)
// report their own paths and are not entered.
func unknownFieldPath(raw []byte, t reflect.Type, base string) string {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return ""
	}
	return walkUnknown(v, t, base)
}

func walkUnknown(v any, t reflect.Type, path string) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(reflect.TypeFor[json.Unmarshaler]()) {
		return ""
	}
	switch val := v.(type) {
	case map[string]any:
		if t.Kind() != reflect.Struct {
			return ""
		}
		keys := make([]string, 0, len(val))
		for k := range val {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			f, ok := jsonField(t, k)
			if !ok {
				return cmpPath(path, k)
			}
			if p := walkUnknown(val[k], f.Type, cmpPath(path, f.Tag.Get("json"))); p != "" {
				return p
			}
		}
	case []any:
		if t.Kind() != reflect.Slice {
			return ""
		}
		for i, e := range val {
			if p := walkUnknown(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); p != "" {
				return p
			}
		}
	}
	return ""
}

// jsonField finds the field of struct t that encoding/json maps key to
// (names match case-insensitively, as encoding/json does).
func jsonField(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" && strings.EqualFold(name, key) {
			f.Tag = reflect.StructTag(`json:"` + name + `"`)
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// FieldError is a problem with one field of a source, named by its JSON path.
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

func fieldErr(path, format string, args ...any) *FieldError {
	return &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// strictUnmarshal decodes exactly one JSON value from b into v, rejecting
// unknown fields and trailing data. Errors are *FieldError with paths
// prefixed by base.
func strictUnmarshal(b []byte, v any, base string) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		if base == "" {
			return fieldErr("body", "must be a JSON object, got null")
		}
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var inner *FieldError
		if errors.As(err, &inner) {
			return inner // from a nested decoder, path complete
		}
		fe := jsonFieldErr(err, base)
		if fe.Msg == "unknown field" {
			if path := unknownFieldPath(b, reflect.TypeOf(v), base); path != "" {
				fe.Path = path
			}
		}
		return fe
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fieldErr(cmpPath(base, ""), "unexpected data after the JSON object")
	}
	return nil
}

func cmpPath(base, field string) string {
	switch {
	case base == "" && field == "":
		return "body"
	case base == "":
		return field
	case field == "":
		return base
	}
	return base + "." + field
}

// jsonFieldErr turns an encoding/json error into a *FieldError.
func jsonFieldErr(err error, base string) *FieldError {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return fieldErr(cmpPath(base, te.Field), "must be %s, got %s", jsonKind(te.Type.Kind().String()), te.Value)
	case errors.As(err, &se):
		return fieldErr(cmpPath(base, ""), "invalid JSON at offset %d: %s", se.Offset, strings.TrimPrefix(se.Error(), "json: "))
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return fieldErr(cmpPath(base, ""), "truncated JSON")
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if name, ok := strings.CutPrefix(msg, "unknown field "); ok {
		return fieldErr(cmpPath(base, strings.Trim(name, `"`)), "unknown field")
	}
	return fieldErr(cmpPath(base, ""), "%s", msg)
}

func jsonKind(k string) string {
	switch k {
	case "struct", "map":
		return "an object"
	case "slice", "array":
		return "an array"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "int", "int64", "int32", "uint8", "float64":
		return "a number in range"
	case "ptr":
		return "an object"
	}
	return "a " + k
}

// decodeServiceAccount accepts a base64 string, a JSON object or an array of
// byte values; null or absent is nil (validation reports it missing).
func decodeServiceAccount(raw json.RawMessage) ([]byte, error) {
	const path = "pub_sub.google.service_account"
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fieldErr(path, "invalid string")
		}
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if b, err := enc.DecodeString(s); err == nil {
				return b, nil
			}
		}
		return nil, fieldErr(path, "invalid base64")
	case '{':
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return nil, fieldErr(path, "invalid JSON object")
		}
		return buf.Bytes(), nil
	case '[':
		var vals []int
		if err := json.Unmarshal(raw, &vals); err != nil {
			return nil, fieldErr(path, "must be an array of byte values (0..255)")
		}
		b := make([]byte, len(vals))
		for i, v := range vals {
			if v < 0 || v > 255 {
				return nil, fieldErr(fmt.Sprintf("%s[%d]", path, i), "must be a byte value (0..255), got %d", v)
			}
			b[i] = byte(v)
		}
		return b, nil
	}
	return nil, fieldErr(path, "must be a base64 string, a JSON object or an array of byte values")
}
