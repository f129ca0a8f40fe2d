package sqs_test

import (
	"context"
	"net/http"
	"strconv"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sluice-io/sluice/broker/sqs"
	"github.com/sluice-io/sluice/broker/sqs/sqstest"
)

// TestReceivesAreNotCutShort drains 20,000 messages with the SDK on
// NewHTTPClient and no SDK retries, so that a receive whose response the
// transport cuts short (aws/aws-sdk-go-v2#2737) fails the test instead of
// being retried. On a plain http.Client this drain hit that failure up to
// several times a run against fauxqs.
func TestReceivesAreNotCutShort(t *testing.T) {
	t.Parallel()
	e := emulator(t)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	client := awssqs.New(awssqs.Options{
		Region:           sqstest.Region,
		BaseEndpoint:     aws.String(e.Endpoint),
		Credentials:      credentials.NewStaticCredentialsProvider(sqstest.AccessKeyID, sqstest.SecretKey, ""),
		HTTPClient:       sqs.NewHTTPClient(tr),
		RetryMaxAttempts: 1,
	})
	q := newQueue(t, nil)
	const n = 20000
	ctx := context.Background()
	if err := q.publish(ctx, events(q.name, n)); err != nil {
		t.Fatal(err)
	}
	receives := 0
	for got := 0; got < n; {
		out, err := client.ReceiveMessage(ctx, &awssqs.ReceiveMessageInput{
			QueueUrl: aws.String(q.url), MaxNumberOfMessages: 10, WaitTimeSeconds: 1,
			MessageAttributeNames:       []string{"All"},
			MessageSystemAttributeNames: []types.MessageSystemAttributeName{types.MessageSystemAttributeNameAll},
		})
		if err != nil {
			t.Fatalf("receive %d, after %d of %d messages: %v", receives+1, got, n, err)
		}
		receives++
		if len(out.Messages) == 0 {
			t.Fatalf("receive %d came back empty after %d of %d messages", receives, got, n)
		}
		entries := make([]types.DeleteMessageBatchRequestEntry, len(out.Messages))
		for i, m := range out.Messages {
			entries[i] = types.DeleteMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: m.ReceiptHandle}
		}
		res, err := client.DeleteMessageBatch(ctx, &awssqs.DeleteMessageBatchInput{QueueUrl: aws.String(q.url), Entries: entries})
		if err != nil || len(res.Failed) > 0 {
			t.Fatalf("delete batch after receive %d: %v %+v", receives, err, res)
		}
		got += len(out.Messages)
	}
	t.Logf("%d messages in %d receives", n, receives)
}
