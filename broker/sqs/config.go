package sqs

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/sluice-io/sluice/broker"
)

// Limits SQS puts on the consumer's settings.
const (
	maxWaitTime          = 20 * time.Second
	maxVisibilityTimeout = 12 * time.Hour
	// fallbackVisibility is sent with every receive when the queue's own
	// visibility timeout cannot be read (SQS's default).
	fallbackVisibility = 30 * time.Second
)

// Config configures one SQS worker.
type Config struct {
	// AccessKeyID and SecretKey are static AWS credentials. Set both or
	// neither: with both empty (the default) the AWS SDK's default credential
	// chain is used, in its order: the environment (AWS_ACCESS_KEY_ID,
	// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), the shared config and
	// credentials files (AWS_PROFILE), web identity (EKS IRSA:
	// AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN), the ECS container role and
	// the EC2 instance role.
	AccessKeyID string
	// SecretKey is the secret of AccessKeyID. Default "" (see AccessKeyID).
	SecretKey string
	// Region is the queue's AWS region, e.g. "eu-west-1". Default "": the
	// region of the SDK's default chain (AWS_REGION, the shared config); New
	// fails when neither names one.
	Region string
	// QueueName is the queue's name; its URL is resolved with GetQueueUrl
	// when Run starts. Required.
	QueueName string
	// Endpoint overrides the SQS endpoint, e.g. "http://127.0.0.1:4566" for
	// an emulator or a VPC endpoint; it is the SDK's BaseEndpoint. Default "":
	// the region's endpoint (or AWS_ENDPOINT_URL_SQS). The endpoint is never
	// derived from the queue URL.
	Endpoint string

	// WaitTime is the long-poll wait of each receive, 1s to 20s in whole
	// seconds. Default 20s.
	WaitTime time.Duration
	// VisibilityTimeout is how long a received message stays invisible to
	// other consumers; when set it is sent with every receive. Messages held
	// longer than half of it (a slow dispatch write, a Redis outage) have
	// their visibility extended. Whole seconds, 1s to 12h. Default 0: the
	// queue's own VisibilityTimeout attribute, read when Run starts (30s,
	// sent with every receive, when it cannot be read).
	VisibilityTimeout time.Duration
	// Batch bounds the batches handed to the Handler; a batch gathers
	// several receives of up to 10 messages each. Default broker.Batch
	// defaults (100 messages, 50ms).
	Batch broker.Batch
	// Backoff paces retries of failed receives and of batches the Handler
	// failed. Default broker.Backoff defaults (100ms doubling to 30s).
	Backoff broker.Backoff
	// LagInterval is how often the queue's ApproximateNumberOfMessages is
	// read for Lag. Default 30s.
	LagInterval time.Duration
	// StopGrace is how long, once Run is told to stop, a receive in flight
	// may still complete so that its messages are released at once instead
	// of staying invisible for VisibilityTimeout. Default 1s.
	StopGrace time.Duration
}

// withDefaults returns c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	c.WaitTime = cmp.Or(c.WaitTime, maxWaitTime)
	c.Batch = c.Batch.WithDefaults()
	c.LagInterval = cmp.Or(c.LagInterval, 30*time.Second)
	c.StopGrace = cmp.Or(c.StopGrace, time.Second)
	return c
}

// Validate reports every problem of c at once, each naming its field.
func (c Config) Validate() error {
	var errs []error
	if c.QueueName == "" {
		errs = append(errs, errors.New("queue_name is required"))
	}
	if (c.AccessKeyID == "") != (c.SecretKey == "") {
		errs = append(errs, errors.New("access_key_id and secret_key must be set together (or both left empty for the default credential chain)"))
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("endpoint %q must be an http or https URL", c.Endpoint))
		}
	}
	if c.WaitTime != 0 && (c.WaitTime < time.Second || c.WaitTime > maxWaitTime || c.WaitTime%time.Second != 0) {
		errs = append(errs, fmt.Errorf("wait time %v must be whole seconds from 1s to 20s", c.WaitTime))
	}
	if c.VisibilityTimeout != 0 && (c.VisibilityTimeout < time.Second || c.VisibilityTimeout > maxVisibilityTimeout || c.VisibilityTimeout%time.Second != 0) {
		errs = append(errs, fmt.Errorf("visibility timeout %v must be whole seconds from 1s to 12h", c.VisibilityTimeout))
	}
	if c.Batch.Size < 0 || c.Batch.Wait < 0 {
		errs = append(errs, errors.New("batch size and wait must not be negative"))
	}
	if c.LagInterval < 0 || c.StopGrace < 0 {
		errs = append(errs, errors.New("lag interval and stop grace must not be negative"))
	}
	return errors.Join(errs...)
}
