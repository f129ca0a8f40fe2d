// Package sqstest runs the fauxqs SQS emulator (the npm package pinned in the
// repository's package.json, installed by `npm ci`) for sluice's tests, on
// 127.0.0.1 and a free port, and creates queues on it.
package sqstest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	sluicesqs "github.com/sluice-io/sluice/broker/sqs"
)

// Credentials and region the emulator accepts (it checks none).
const (
	AccessKeyID = "test"
	SecretKey   = "test"
	Region      = "us-east-1"
)

// ErrNotInstalled means the emulator is not installed: no node_modules/fauxqs
// above the working directory, or no node on PATH.
var ErrNotInstalled = errors.New("the fauxqs SQS emulator is not installed (run `npm ci` at the repository root; needs Node.js 20 and npm)")

// launcher is the script that starts fauxqs, relative to the repository root.
const launcher = "broker/sqs/testdata/fauxqs.mjs"

// Emulator is a running fauxqs.
type Emulator struct {
	// Endpoint is the emulator's base URL, e.g. "http://127.0.0.1:39417".
	Endpoint string

	cmd       *exec.Cmd
	stdin     io.WriteCloser
	done      chan error
	client    *sqs.Client
	transport *http.Transport
}

// Root returns the repository root: the nearest directory above the working
// directory that holds node_modules/fauxqs. It returns ErrNotInstalled when
// there is none.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "fauxqs", "package.json")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", ErrNotInstalled
		}
		dir = parent
	}
}

// Start starts fauxqs and waits until it listens.
func Start() (*Emulator, error) {
	root, err := Root()
	if err != nil {
		return nil, err
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotInstalled, err)
	}
	cmd := exec.Command(node, filepath.Join(root, launcher), "0")
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start fauxqs: %w", err)
	}
	e := &Emulator{cmd: cmd, stdin: stdin, done: make(chan error, 1)}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() { e.done <- cmd.Wait() }()

	select {
	case line, ok := <-lines:
		addr, found := strings.CutPrefix(line, "listening ")
		if !ok || !found {
			e.Close()
			return nil, fmt.Errorf("start fauxqs: unexpected output %q", line)
		}
		e.Endpoint = addr
		e.transport = http.DefaultTransport.(*http.Transport).Clone()
		e.client = sqs.New(sqs.Options{
			Region:       Region,
			BaseEndpoint: aws.String(addr),
			Credentials:  credentials.NewStaticCredentialsProvider(AccessKeyID, SecretKey, ""),
			HTTPClient:   sluicesqs.NewHTTPClient(e.transport),
		})
		return e, nil
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, errors.New("start fauxqs: not listening after 30s")
	}
}

// Close stops the emulator and waits for it to exit.
func (e *Emulator) Close() error {
	if e.transport != nil {
		e.transport.CloseIdleConnections()
	}
	_ = e.stdin.Close()
	select {
	case err := <-e.done:
		return err
	case <-time.After(5 * time.Second):
	}
	_ = e.cmd.Process.Signal(syscall.SIGKILL)
	return <-e.done
}

// Client returns the emulator's SQS client (one per Emulator; Close closes
// its connections).
func (e *Emulator) Client() *sqs.Client { return e.client }

// CreateQueue creates a queue with the given attributes (e.g.
// "VisibilityTimeout": "5") and returns its URL.
func (e *Emulator) CreateQueue(ctx context.Context, name string, attrs map[string]string) (string, error) {
	out, err := e.Client().CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name), Attributes: attrs})
	if err != nil {
		return "", fmt.Errorf("create queue %q: %w", name, err)
	}
	return aws.ToString(out.QueueUrl), nil
}
