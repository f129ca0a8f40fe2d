package sqs_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/broker/sqs"
	"github.com/sluice-io/sluice/broker/sqs/sqstest"
)

// emu is the emulator every test of the package shares (TestMain starts it);
// nil with skipReason set when it is not installed outside CI.
var (
	emu        *sqstest.Emulator
	skipReason string
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	// The dispatch queues of the tests live in a redis-server of the
	// package's own: the shared one may hold so many keys that cleaning up
	// a prefix takes seconds. Without redis-server the shared one is used.
	stopRedis := func() {}
	if os.Getenv("SLUICE_TEST_REDIS_ADDR") == "" {
		stop, addr, err := startRedisServer()
		if err == nil {
			stopRedis = stop
			os.Setenv("SLUICE_TEST_REDIS_ADDR", addr)
		} else {
			fmt.Fprintln(os.Stderr, "using the shared Redis:", err)
		}
	}
	code := runTests(m)
	stopRedis()
	os.Exit(code)
}

func runTests(m *testing.M) int {
	e, err := sqstest.Start()
	switch {
	case errors.Is(err, sqstest.ErrNotInstalled) && os.Getenv("CI") != "true":
		skipReason = "skipping the SQS tests: " + err.Error()
		fmt.Fprintln(os.Stderr, skipReason)
	case err != nil:
		fmt.Fprintln(os.Stderr, "start the SQS emulator:", err)
		return 1
	default:
		emu = e
	}
	code := m.Run()
	if emu != nil {
		if err := emu.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "stop the SQS emulator:", err)
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}

// startRedisServer starts a redis-server without persistence on a free
// port of 127.0.0.1.
func startRedisServer() (stop func(), addr string, err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	addr = l.Addr().String()
	_ = l.Close()
	_, port, _ := net.SplitHostPort(addr)
	dir, err := os.MkdirTemp("", "sluice-sqs-redis-*")
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, "", err
	}
	stop = func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = os.RemoveAll(dir)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	for deadline := time.Now().Add(10 * time.Second); rdb.Ping(context.Background()).Err() != nil; {
		if time.Now().After(deadline) {
			stop()
			return nil, "", errors.New("redis-server did not answer within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return stop, addr, nil
}

func emulator(tb testing.TB) *sqstest.Emulator {
	tb.Helper()
	if emu == nil {
		tb.Skip(skipReason)
	}
	return emu
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// uniqueName returns a queue name (or key prefix) unique to this run of tb.
func uniqueName(tb testing.TB) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := unsafeName.ReplaceAllString(tb.Name(), "-")
	if len(name) > 60 {
		name = name[len(name)-60:]
	}
	return "t-" + name + "-" + hex.EncodeToString(b)
}

// testQueue is a fresh queue on the emulator.
type testQueue struct {
	name, url string
	client    *awssqs.Client
}

func newQueue(tb testing.TB, attrs map[string]string) testQueue {
	tb.Helper()
	e := emulator(tb)
	name := uniqueName(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url, err := e.CreateQueue(ctx, name, attrs)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = e.Client().DeleteQueue(ctx, &awssqs.DeleteQueueInput{QueueUrl: aws.String(url)})
	})
	return testQueue{name: name, url: url, client: e.Client()}
}

// config is a worker config for q with short waits for tests.
func (q testQueue) config() sqs.Config {
	return sqs.Config{
		AccessKeyID:       sqstest.AccessKeyID,
		SecretKey:         sqstest.SecretKey,
		Region:            sqstest.Region,
		QueueName:         q.name,
		Endpoint:          emu.Endpoint,
		WaitTime:          2 * time.Second,
		VisibilityTimeout: 10 * time.Second,
		Backoff:           broker.Backoff{Min: 50 * time.Millisecond, Max: time.Second},
	}
}

func newConsumer(tb testing.TB, cfg sqs.Config) *sqs.Consumer {
	tb.Helper()
	c, err := sqs.New(cfg, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// publish sends msgs in batches of 10, headers as String attributes.
func (q testQueue) publish(ctx context.Context, msgs []brokertest.Outgoing) error {
	for start := 0; start < len(msgs); start += 10 {
		end := min(start+10, len(msgs))
		entries := make([]types.SendMessageBatchRequestEntry, 0, end-start)
		for i, m := range msgs[start:end] {
			attrs := make(map[string]types.MessageAttributeValue, len(m.Headers))
			for k, v := range m.Headers {
				attrs[k] = types.MessageAttributeValue{DataType: aws.String("String"), StringValue: aws.String(v)}
			}
			entries = append(entries, types.SendMessageBatchRequestEntry{
				Id:                aws.String(strconv.Itoa(i)),
				MessageBody:       aws.String(string(m.Body)),
				MessageAttributes: attrs,
			})
		}
		out, err := q.client.SendMessageBatch(ctx, &awssqs.SendMessageBatchInput{QueueUrl: aws.String(q.url), Entries: entries})
		if err != nil {
			return err
		}
		if len(out.Failed) > 0 {
			return fmt.Errorf("send: %d entries failed: %s", len(out.Failed), aws.ToString(out.Failed[0].Message))
		}
	}
	return nil
}

// counts returns the queue's visible and in-flight message counts.
func (q testQueue) counts(ctx context.Context) (visible, inFlight int, err error) {
	out, err := q.client.GetQueueAttributes(ctx, &awssqs.GetQueueAttributesInput{
		QueueUrl: aws.String(q.url),
		AttributeNames: []types.QueueAttributeName{
			types.QueueAttributeNameApproximateNumberOfMessages,
			types.QueueAttributeNameApproximateNumberOfMessagesNotVisible,
		},
	})
	if err != nil {
		return 0, 0, err
	}
	visible, _ = strconv.Atoi(out.Attributes[string(types.QueueAttributeNameApproximateNumberOfMessages)])
	inFlight, _ = strconv.Atoi(out.Attributes[string(types.QueueAttributeNameApproximateNumberOfMessagesNotVisible)])
	return visible, inFlight, nil
}

func (q testQueue) unacked(ctx context.Context) (int, error) {
	v, f, err := q.counts(ctx)
	return v + f, err
}

func TestConformance(t *testing.T) {
	emulator(t)
	brokertest.Run(t, func(t *testing.T) brokertest.Fixture {
		q := newQueue(t, nil)
		return brokertest.Fixture{
			Publish:     q.publish,
			NewConsumer: func(t *testing.T) broker.Consumer { return newConsumer(t, q.config()) },
			Unacked:     q.unacked,
		}
	}, brokertest.Options{Timeout: 30 * time.Second})
}
