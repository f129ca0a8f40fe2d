package main

// End-to-end tests of SQS sources: the real sluice binary against the
// fauxqs SQS emulator (started per test on a free port of 127.0.0.1) and the
// machine's Redis, driven through the admin API.

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sluice-io/sluice/broker/sqs"
	"github.com/sluice-io/sluice/broker/sqs/sqstest"
	"github.com/sluice-io/sluice/broker/supervisor"
	"github.com/sluice-io/sluice/source"
)

func TestSQSConfigMapping(t *testing.T) {
	ps := &source.PubSub{Type: source.PubSubSQS, Workers: 4, SQS: &source.SQS{
		AccessKeyID: "AKIA", SecretKey: "secret", DefaultRegion: "eu-west-1",
		QueueName: "orders", Endpoint: "http://127.0.0.1:4566",
	}}
	got, err := sqsConfig(ps, "src1")
	if err != nil {
		t.Fatal(err)
	}
	want := sqs.Config{AccessKeyID: "AKIA", SecretKey: "secret", Region: "eu-west-1", QueueName: "orders", Endpoint: "http://127.0.0.1:4566"}
	if got != want {
		t.Errorf("sqsConfig =\n%+v\nwant\n%+v", got, want)
	}
	// Both keys empty: the SDK's default credential chain.
	ps.SQS.AccessKeyID, ps.SQS.SecretKey = "", ""
	if _, err := sqsConfig(ps, "src1"); err != nil {
		t.Errorf("sqsConfig without keys = %v, want the default chain", err)
	}
	ps.SQS.AccessKeyID = "AKIA"
	if _, err := sqsConfig(ps, "src1"); err == nil {
		t.Error("sqsConfig with a key and no secret = nil error")
	}
	if _, err := sqsConfig(&source.PubSub{Type: source.PubSubSQS}, "src2"); err == nil {
		t.Error("sqsConfig without pub_sub.sqs = nil error")
	}
}

// sqsE2E is one test's emulator, proxy and queue.
type sqsE2E struct {
	t      *testing.T
	emu    *sqstest.Emulator
	proxy  *sqstest.Proxy
	queue  string
	url    string
	client *awssqs.Client
}

// newSQSE2E starts fauxqs and a recording proxy in front of it and names a
// queue; the queue is created with attrs unless create is false.
func newSQSE2E(t *testing.T, create bool, attrs map[string]string) *sqsE2E {
	t.Helper()
	emu, err := sqstest.Start()
	if errors.Is(err, sqstest.ErrNotInstalled) && os.Getenv("CI") != "true" {
		t.Skip("skipping: ", err)
	}
	if err != nil {
		t.Fatalf("start the SQS emulator: %v", err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	proxy, err := sqstest.NewProxy(emu.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	var b [4]byte
	_, _ = rand.Read(b[:])
	e := &sqsE2E{t: t, emu: emu, proxy: proxy, queue: "e2e-" + hex.EncodeToString(b[:]), client: emu.Client()}
	if create {
		e.createQueue(attrs)
	}
	return e
}

func (e *sqsE2E) createQueue(attrs map[string]string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url, err := e.emu.CreateQueue(ctx, e.queue, attrs)
	if err != nil {
		e.t.Fatal(err)
	}
	e.url = url
}

// sourceBody is the create request of an SQS source whose endpoint is the
// proxy (so the test sees every call the workers make).
func (e *sqsE2E) sourceBody(workers int) map[string]any {
	return map[string]any{
		"name": "sqs " + e.queue,
		"type": "pub_sub",
		"pub_sub": map[string]any{
			"type":    "sqs",
			"workers": workers,
			"sqs": map[string]any{
				"access_key_id":  sqstest.AccessKeyID,
				"secret_key":     sqstest.SecretKey,
				"default_region": sqstest.Region,
				"queue_name":     e.queue,
				"endpoint":       e.proxy.URL,
			},
		},
	}
}

// publish sends messages seq from..to-1 with attributes, eight batches of
// 10 at a time, and, when malformedEvery > 0, one malformed message after
// every malformedEvery-th. It returns the SQS MessageId of each seq and how
// many malformed it sent.
func (e *sqsE2E) publish(from, to, malformedEvery int) (ids map[int]string, malformed int) {
	e.t.Helper()
	type entry struct {
		seq  int // -1 for a malformed message
		body string
	}
	var all []entry
	for seq := from; seq < to; seq++ {
		all = append(all, entry{seq, string(messageBody(seq))})
		if malformedEvery > 0 && seq%malformedEvery == malformedEvery-1 {
			all = append(all, entry{-1, `{"data":"no event type"}`})
			malformed++
		}
	}
	ids = make(map[int]string, to-from)
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		next     = make(chan []entry)
	)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for range 8 {
		wg.Go(func() {
			for batch := range next {
				entries := make([]types.SendMessageBatchRequestEntry, len(batch))
				for i, m := range batch {
					attrs := map[string]types.MessageAttributeValue{}
					if m.seq >= 0 {
						attrs["x-tenant"] = types.MessageAttributeValue{DataType: aws.String("String"), StringValue: aws.String("t-" + strconv.Itoa(m.seq%7))}
						attrs["x-seq"] = types.MessageAttributeValue{DataType: aws.String("Number"), StringValue: aws.String(strconv.Itoa(m.seq))}
					}
					entries[i] = types.SendMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), MessageBody: aws.String(m.body), MessageAttributes: attrs}
				}
				out, err := e.client.SendMessageBatch(ctx, &awssqs.SendMessageBatchInput{QueueUrl: aws.String(e.url), Entries: entries})
				mu.Lock()
				switch {
				case err != nil:
					firstErr = cmp.Or(firstErr, err)
				case len(out.Failed) > 0:
					firstErr = cmp.Or(firstErr, fmt.Errorf("%d sends failed: %s", len(out.Failed), aws.ToString(out.Failed[0].Message)))
				default:
					for _, s := range out.Successful {
						i, _ := strconv.Atoi(aws.ToString(s.Id))
						if seq := batch[i].seq; seq >= 0 {
							ids[seq] = aws.ToString(s.MessageId)
						}
					}
				}
				mu.Unlock()
			}
		})
	}
	for start := 0; start < len(all); start += 10 {
		next <- all[start:min(start+10, len(all))]
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		e.t.Fatalf("publish: %v", firstErr)
	}
	return ids, malformed
}

// counts returns how many messages the queue holds visible and in flight.
func (e *sqsE2E) counts() (visible, inFlight int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := e.client.GetQueueAttributes(ctx, &awssqs.GetQueueAttributesInput{
		QueueUrl: aws.String(e.url),
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

// waitEmpty waits until the queue holds no message, visible or in flight.
func (e *sqsE2E) waitEmpty(timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, f, err := e.counts()
		if err == nil && v == 0 && f == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("queue %s not empty after %s: %d visible, %d in flight (%v)", e.queue, timeout, v, f, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestE2ESQS creates an SQS source with 4 workers through the API over a
// backlog of 20,000 messages with attributes and some malformed ones: every
// message is in the dispatch stream once with the right envelope, every
// malformed one in the dead-letter stream once, the queue is emptied, and
// with the queue full every receive carried 10 messages.
func TestE2ESQS(t *testing.T) {
	t.Parallel()
	const n = 20000
	// The emulator first: cleanups run last to first, so the daemon is
	// killed before the proxy waits for its long polls to end.
	e := newSQSE2E(t, true, map[string]string{"VisibilityTimeout": "10"})
	d := startDaemon(t)
	ids, malformed := e.publish(0, n, 500)

	src := d.CreateSource("p1", e.sourceBody(4))
	if src.PubSub == nil || src.PubSub.SQS == nil || src.PubSub.SQS.QueueName != e.queue || src.PubSub.SQS.Endpoint != e.proxy.URL {
		t.Fatalf("created source: %+v", src.PubSub)
	}
	d.WaitStream(n, 3*time.Minute)
	e.waitEmpty(time.Minute)

	events := d.RequireExactlyOnce(n)
	for _, ev := range events {
		seq := eventSeq(t, ev)
		requireEnvelope(t, ev, src.UID, "sqs", ids[seq], map[string]string{
			"x-tenant": "t-" + strconv.Itoa(seq%7),
			"x-seq":    strconv.Itoa(seq),
		})
		if ev.Headers[sqs.HeaderReceiveCount] == "" || ev.Headers["x-sqs-sent-timestamp"] == "" {
			t.Fatalf("event seq %d lacks the SQS system attributes: %v", seq, ev.Headers)
		}
	}

	dead, err := d.RDB.XRange(context.Background(), d.DeadLetterKey(), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	deadIDs := map[string]int{}
	for _, m := range dead {
		if m.Values["source_id"] == src.UID {
			deadIDs[fmt.Sprint(m.Values["message_id"])]++
		}
	}
	if len(deadIDs) != malformed {
		t.Errorf("dead-letter stream holds %d distinct messages of the source, want %d", len(deadIDs), malformed)
	}
	for id, c := range deadIDs {
		if c != 1 {
			t.Errorf("dead-letter stream holds message %s %d times", id, c)
		}
	}

	// The backlog was there before the workers started: receives carry 10
	// until the queue runs dry at the end.
	sizes := e.proxy.ReceiveSizes()
	var full, partial, fullMsgs, total int
	for _, s := range sizes {
		switch {
		case s == 10:
			full++
			fullMsgs += s
		case s > 0:
			partial++
		}
		total += s
	}
	t.Logf("%d receives: %d carried 10, %d fewer, %d none; %d messages received for %d published; %d DeleteMessageBatch calls",
		len(sizes), full, partial, len(sizes)-full-partial, total, n+malformed, e.proxy.Calls("DeleteMessageBatch"))
	if partial > 8 || fullMsgs < (n+malformed)*99/100 {
		t.Errorf("%d receives carried fewer than 10 messages and full ones carried %d of %d: receives do not fill up", partial, fullMsgs, n+malformed)
	}
	st := d.Status("p1", src.UID)
	var lagged bool
	for _, w := range st.Workers {
		lagged = lagged || w.Lag != nil
	}
	t.Logf("status %s, %d workers, lag reported: %v", st.State, len(st.Workers), lagged)
}

// TestE2ESQSKillAndRestart kills sluice serve (SIGKILL) while it drains a
// queue and starts it again: the messages the dead process held reappear
// after their visibility timeout and the stream holds every message once.
func TestE2ESQSKillAndRestart(t *testing.T) {
	t.Parallel()
	const n = 16000
	e := newSQSE2E(t, true, map[string]string{"VisibilityTimeout": "3"})
	d := startDaemon(t)
	e.publish(0, n, 0)
	src := d.CreateSource("p1", e.sourceBody(2))
	d.WaitStream(n/8, time.Minute)
	d.Kill()
	killedAt, _ := d.RDB.XLen(context.Background(), d.StreamKey()).Result()
	if killedAt >= n {
		t.Fatalf("all %d messages were written before the kill; publish more", killedAt)
	}
	t.Logf("killed with %d of %d messages in the stream", killedAt, n)
	d.Start()
	d.WaitStream(n, 3*time.Minute)
	e.waitEmpty(time.Minute)
	d.RequireExactlyOnce(n)
	var received int
	for _, s := range e.proxy.ReceiveSizes() {
		received += s
	}
	t.Logf("source %s: %d messages received for %d published (redelivered after the kill: %d)", src.UID, received, n, received-n)
}

// TestE2ESQSTermDrains stops sluice serve with SIGTERM while it drains a
// queue: it exits 0 having deleted what it wrote and released what it had
// not handed over, so the stream and the queue's visible messages together
// hold every message exactly once, with none left in flight; a restart
// finishes the queue.
func TestE2ESQSTermDrains(t *testing.T) {
	t.Parallel()
	const n = 16000
	// Held messages stay invisible for 20s unless released: far longer
	// than the stop takes, so the checks right after it see only releases.
	e := newSQSE2E(t, true, map[string]string{"VisibilityTimeout": "20"})
	d := startDaemon(t)
	e.publish(0, n, 0)
	d.CreateSource("p1", e.sourceBody(4))
	d.WaitStream(n/8, time.Minute)
	d.Terminate(time.Minute)
	written, err := d.RDB.XLen(context.Background(), d.StreamKey()).Result()
	if err != nil {
		t.Fatal(err)
	}
	visible, inFlight, err := e.counts()
	if err != nil {
		t.Fatal(err)
	}
	if written >= n {
		t.Fatalf("all %d messages were written before the stop; publish more", written)
	}
	t.Logf("drained: %d in the stream, %d visible and %d in flight on the queue", written, visible, inFlight)
	if inFlight != 0 || int(written)+visible != n {
		t.Errorf("after the drain the stream holds %d, the queue %d visible and %d in flight; want %d in all and none in flight", written, visible, inFlight, n)
	}
	d.Start()
	d.WaitStream(n, 3*time.Minute)
	e.waitEmpty(time.Minute)
	d.RequireExactlyOnce(n)
}

// TestE2ESQSMissingQueue creates a source for a queue that does not exist:
// its workers back off and /status says why; once the queue exists they
// consume it.
func TestE2ESQSMissingQueue(t *testing.T) {
	t.Parallel()
	e := newSQSE2E(t, false, nil)
	d := startDaemon(t)
	src := d.CreateSource("p1", e.sourceBody(1))
	d.WaitStatus("p1", src.UID, 30*time.Second, "the missing queue reported", func(st supervisor.SourceStatus) bool {
		return len(st.Workers) == 1 && st.Workers[0].Failures > 0 &&
			strings.Contains(st.Workers[0].LastError, "does not exist") && strings.Contains(st.Workers[0].LastError, e.queue)
	})
	e.createQueue(nil)
	e.publish(0, 100, 0)
	d.WaitStream(100, time.Minute)
	e.waitEmpty(time.Minute)
	d.RequireExactlyOnce(100)
	d.WaitStatus("p1", src.UID, 30*time.Second, "the worker running", func(st supervisor.SourceStatus) bool {
		return len(st.Workers) == 1 && st.Workers[0].State == supervisor.StateRunning
	})
}
