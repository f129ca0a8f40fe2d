package sqs

import (
	"encoding/base64"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sluice-io/sluice/broker"
)

// SystemHeaderPrefix starts the header names of SQS system attributes:
// ApproximateReceiveCount becomes "x-sqs-approximate-receive-count",
// SentTimestamp "x-sqs-sent-timestamp".
const SystemHeaderPrefix = "x-sqs-"

// HeaderReceiveCount is the header carrying ApproximateReceiveCount: 1 on
// the first delivery, more on redeliveries.
const HeaderReceiveCount = SystemHeaderPrefix + "approximate-receive-count"

// received is one message this worker holds: what the Handler sees and the
// receipt handle that deletes it or changes its visibility.
type received struct {
	msg     broker.Message
	receipt string
}

// convert turns an SQS message into a broker message. Message attributes
// become headers under their own names (String and Number values as
// delivered, Binary values base64-encoded); system attributes become
// headers prefixed with SystemHeaderPrefix.
func convert(m types.Message) received {
	headers := make(map[string]string, len(m.MessageAttributes)+len(m.Attributes))
	for name, v := range m.MessageAttributes {
		switch {
		case v.StringValue != nil:
			headers[name] = *v.StringValue
		case v.BinaryValue != nil:
			headers[name] = base64.StdEncoding.EncodeToString(v.BinaryValue)
		}
	}
	for name, v := range m.Attributes {
		headers[systemHeader(name)] = v
	}
	var published time.Time
	if ms, err := strconv.ParseInt(m.Attributes[string(types.MessageSystemAttributeNameSentTimestamp)], 10, 64); err == nil {
		published = time.UnixMilli(ms).UTC()
	}
	return received{
		msg: broker.Message{
			ID:          aws.ToString(m.MessageId),
			Body:        []byte(aws.ToString(m.Body)),
			Headers:     headers,
			PublishedAt: published,
		},
		receipt: aws.ToString(m.ReceiptHandle),
	}
}

// systemHeader names the header of a system attribute: the prefix and the
// attribute's name in kebab case ("AWSTraceHeader" → "x-sqs-aws-trace-header").
func systemHeader(name string) string {
	var b strings.Builder
	b.WriteString(SystemHeaderPrefix)
	r := []rune(name)
	for i, c := range r {
		if unicode.IsUpper(c) && i > 0 {
			prevLower := unicode.IsLower(r[i-1]) || unicode.IsDigit(r[i-1])
			acronymEnd := unicode.IsUpper(r[i-1]) && i+1 < len(r) && unicode.IsLower(r[i+1])
			if prevLower || acronymEnd {
				b.WriteByte('-')
			}
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}
