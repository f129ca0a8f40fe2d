package sqs

import (
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/google/go-cmp/cmp"

	"github.com/sluice-io/sluice/broker"
)

func TestValidate(t *testing.T) {
	valid := Config{QueueName: "orders", Region: "eu-west-1"}
	tests := []struct {
		name   string
		change func(*Config)
		want   []string // substrings of the error, one per problem; none for valid
	}{
		{name: "minimal"},
		{name: "static keys", change: func(c *Config) { c.AccessKeyID, c.SecretKey = "AKIA", "secret" }},
		{name: "emulator endpoint", change: func(c *Config) { c.Endpoint = "http://127.0.0.1:4566" }},
		{name: "short waits", change: func(c *Config) { c.WaitTime, c.VisibilityTimeout = time.Second, 2*time.Second }},
		{name: "no queue", change: func(c *Config) { c.QueueName = "" }, want: []string{"queue_name is required"}},
		{name: "key without secret", change: func(c *Config) { c.AccessKeyID = "AKIA" }, want: []string{"access_key_id and secret_key must be set together"}},
		{name: "secret without key", change: func(c *Config) { c.SecretKey = "s" }, want: []string{"access_key_id and secret_key must be set together"}},
		{name: "endpoint without scheme", change: func(c *Config) { c.Endpoint = "localhost:4566" }, want: []string{"endpoint"}},
		{name: "wait over 20s", change: func(c *Config) { c.WaitTime = 21 * time.Second }, want: []string{"wait time"}},
		{name: "wait not whole seconds", change: func(c *Config) { c.WaitTime = 1500 * time.Millisecond }, want: []string{"wait time"}},
		{name: "visibility over 12h", change: func(c *Config) { c.VisibilityTimeout = 13 * time.Hour }, want: []string{"visibility timeout"}},
		{name: "negative batch", change: func(c *Config) { c.Batch = broker.Batch{Size: -1} }, want: []string{"batch"}},
		{name: "every problem at once", change: func(c *Config) {
			c.QueueName, c.AccessKeyID, c.Endpoint = "", "AKIA", "ftp://x"
		}, want: []string{"queue_name", "secret_key", "endpoint"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid
			if tt.change != nil {
				tt.change(&c)
			}
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want errors about %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %v, want it to mention %q", err, w)
				}
			}
		})
	}
}

func TestNewFailsWithoutRegion(t *testing.T) {
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_PROFILE", "")
	_, err := New(Config{QueueName: "q"}, nil)
	if err == nil || !strings.Contains(err.Error(), "region") {
		t.Fatalf("New without a region = %v, want an error naming the region", err)
	}
	t.Setenv("AWS_REGION", "eu-central-1")
	c, err := New(Config{QueueName: "q"}, nil)
	if err != nil {
		t.Fatalf("New with AWS_REGION from the default chain: %v", err)
	}
	if got := c.client.Options().Region; got != "eu-central-1" {
		t.Errorf("region %q, want eu-central-1 from the environment", got)
	}
}

func TestSystemHeader(t *testing.T) {
	for name, want := range map[string]string{
		"ApproximateReceiveCount":          "x-sqs-approximate-receive-count",
		"ApproximateFirstReceiveTimestamp": "x-sqs-approximate-first-receive-timestamp",
		"SentTimestamp":                    "x-sqs-sent-timestamp",
		"SenderId":                         "x-sqs-sender-id",
		"AWSTraceHeader":                   "x-sqs-aws-trace-header",
		"MessageGroupId":                   "x-sqs-message-group-id",
		"DeadLetterQueueSourceArn":         "x-sqs-dead-letter-queue-source-arn",
		"SequenceNumber":                   "x-sqs-sequence-number",
	} {
		if got := systemHeader(name); got != want {
			t.Errorf("systemHeader(%q) = %q, want %q", name, got, want)
		}
	}
	if HeaderReceiveCount != systemHeader("ApproximateReceiveCount") {
		t.Errorf("HeaderReceiveCount = %q", HeaderReceiveCount)
	}
}

func TestConvert(t *testing.T) {
	got := convert(types.Message{
		MessageId:     aws.String("m-1"),
		ReceiptHandle: aws.String("rh-1"),
		Body:          aws.String(`{"event_type":"x","data":1}`),
		Attributes: map[string]string{
			"ApproximateReceiveCount": "3",
			"SentTimestamp":           "1700000000123",
		},
		MessageAttributes: map[string]types.MessageAttributeValue{
			"x-convoy-message-type": {DataType: aws.String("String"), StringValue: aws.String("fanout")},
			"amount":                {DataType: aws.String("Number.float"), StringValue: aws.String("1.5")},
			"blob":                  {DataType: aws.String("Binary"), BinaryValue: []byte("hi")},
		},
	})
	want := received{
		msg: broker.Message{
			ID:   "m-1",
			Body: []byte(`{"event_type":"x","data":1}`),
			Headers: map[string]string{
				"x-convoy-message-type":           "fanout",
				"amount":                          "1.5",
				"blob":                            "aGk=",
				"x-sqs-approximate-receive-count": "3",
				"x-sqs-sent-timestamp":            "1700000000123",
			},
			PublishedAt: time.UnixMilli(1700000000123).UTC(),
		},
		receipt: "rh-1",
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(received{})); diff != "" {
		t.Errorf("convert (-want +got):\n%s", diff)
	}
}
