package gcppubsub

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sluice-io/sluice/broker"
	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/dispatch/dispatchtest"
)

const testClientEmail = "sluice-test@sluice-test.iam.gserviceaccount.com"

// fakeKey is a syntactically valid service account key with a fresh RSA
// key pair; Google has never seen it.
func fakeKey(t *testing.T) (keyJSON []byte, pub *rsa.PublicKey) {
	t.Helper()
	pk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	keyJSON, err = json.Marshal(map[string]string{
		"type":           "service_account",
		"project_id":     testProject,
		"private_key_id": "0123456789abcdef",
		"private_key":    string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":   testClientEmail,
		"client_id":      "100000000000000000001",
		"token_uri":      "https://oauth2.googleapis.com/token",
	})
	if err != nil {
		t.Fatal(err)
	}
	return keyJSON, &pk.PublicKey
}

// authGate serves the fake's Pub/Sub API over TLS and lets a call through
// only with a bearer JWT signed by the service account's key.
type authGate struct {
	pub    *rsa.PublicKey
	reject bool // reject every call as Unauthenticated

	mu       sync.Mutex
	verified int
	errs     []error
}

func (g *authGate) check(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.reject {
		return status.Error(codes.Unauthenticated, "request had invalid authentication credentials")
	}
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	if len(auth) != 1 {
		err := fmt.Errorf("authorization metadata %q, want one bearer token", auth)
		g.errs = append(g.errs, err)
		return status.Error(codes.Unauthenticated, err.Error())
	}
	if err := verifyJWT(strings.TrimPrefix(auth[0], "Bearer "), g.pub); err != nil {
		g.errs = append(g.errs, err)
		return status.Error(codes.Unauthenticated, err.Error())
	}
	g.verified++
	return nil
}

// verifyJWT checks an RS256 JWT's signature with pub and its issuer.
func verifyJWT(token string, pub *rsa.PublicKey) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return fmt.Errorf("bearer token is not a JWT (%d parts)", len(parts))
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return fmt.Errorf("JWT signature: %w", err)
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig); err != nil {
		return fmt.Errorf("JWT not signed by the service account key: %w", err)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return fmt.Errorf("JWT payload: %w", err)
	}
	var claims struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return fmt.Errorf("JWT claims: %w", err)
	}
	if claims.Iss != testClientEmail {
		return fmt.Errorf("JWT issuer %q, want %q", claims.Iss, testClientEmail)
	}
	return nil
}

// serveTLS serves f's Pub/Sub API behind g on a TLS listener and returns
// the client options that reach it (endpoint and trusted CA).
func serveTLS(t *testing.T, f *fake, g *authGate) []option.ClientOption {
	t.Helper()
	cert, pool := selfSigned(t)
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewServerTLSFromCert(&cert)),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := g.check(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := g.check(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	)
	pubsubpb.RegisterPublisherServer(srv, &f.srv.GServer)
	pubsubpb.RegisterSubscriberServer(srv, &f.srv.GServer)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return []option.ClientOption{
		option.WithEndpoint(l.Addr().String()),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool}))),
	}
}

// selfSigned makes a certificate for 127.0.0.1 and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pubsub.test"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// recordingHandler counts what it is handed and writes everything.
type recordingHandler struct {
	mu      sync.Mutex
	seen    map[string]broker.Message
	failing []error
	healthy int
	largest int // largest batch
}

func newRecordingHandler() *recordingHandler {
	return &recordingHandler{seen: make(map[string]broker.Message)}
}

func (h *recordingHandler) Handle(_ context.Context, batch []broker.Message) ([]broker.Result, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range batch {
		h.seen[m.ID] = m
	}
	h.largest = max(h.largest, len(batch))
	return make([]broker.Result, len(batch)), nil
}

func (h *recordingHandler) Failing(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failing = append(h.failing, err)
}

func (h *recordingHandler) Healthy() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.healthy++
}

func (h *recordingHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.seen)
}

// The service account's key reaches the auth layer: every call the client
// makes carries a JWT signed by that key, and consuming works.
func TestServiceAccountKeyAuthenticates(t *testing.T) {
	t.Parallel()
	key, pub := fakeKey(t)
	f := newFake(t, 0, nil)
	gate := &authGate{pub: pub}
	cfg := Config{ProjectID: testProject, SubscriptionID: testSub, ServiceAccount: key, Streams: 4}
	cfg.clientOptions = serveTLS(t, f, gate)
	c, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		f.publish(event(i), nil)
	}
	h := newRecordingHandler()
	stop := brokertest.Start(t, c, h)
	dispatchtest.WaitFor(t, 30*time.Second, "every message to be handled and acked", func() bool {
		return h.count() == n && f.unacked() == 0
	})
	stop()
	gate.mu.Lock()
	defer gate.mu.Unlock()
	if len(gate.errs) > 0 || gate.verified == 0 {
		t.Errorf("%d calls authenticated with the key; rejected: %v", gate.verified, errors.Join(gate.errs...))
	}
}

// Credentials the service rejects fail Run with an error saying so.
func TestRejectedCredentialsFailRun(t *testing.T) {
	t.Parallel()
	key, pub := fakeKey(t)
	f := newFake(t, 0, nil)
	cfg := Config{ProjectID: testProject, SubscriptionID: testSub, ServiceAccount: key}
	cfg.clientOptions = serveTLS(t, f, &authGate{pub: pub, reject: true})
	c, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	h := newRecordingHandler()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = c.Run(ctx, h)
	if err == nil || !strings.Contains(err.Error(), "credentials rejected") || status.Code(errors.Unwrap(errors.Unwrap(err))) != codes.Unauthenticated {
		t.Fatalf("Run = %v, want an Unauthenticated error saying credentials were rejected", err)
	}
	if h.healthy != 0 {
		t.Errorf("consumer reported healthy %d times with rejected credentials", h.healthy)
	}
}

func TestMissingSubscriptionFailsRun(t *testing.T) {
	t.Parallel()
	f := newFake(t, 0, nil)
	cfg := f.config(1)
	cfg.SubscriptionID = "no-such-subscription"
	c, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = c.Run(ctx, newRecordingHandler())
	if err == nil || !strings.Contains(err.Error(), "subscription does not exist") || !strings.Contains(err.Error(), "no-such-subscription") {
		t.Fatalf("Run = %v, want an error naming the missing subscription", err)
	}
}

// With PUBSUB_EMULATOR_HOST set the consumer dials the emulator without
// credentials: a service account key that could never authenticate (its
// private key is not a key) is not used.
func TestEmulatorHostNeedsNoCredentials(t *testing.T) {
	f := newFake(t, 0, nil)
	t.Setenv(emulatorEnv, f.srv.Addr)
	key, err := json.Marshal(map[string]string{
		"type":         "service_account",
		"client_email": testClientEmail,
		"private_key":  "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{ProjectID: testProject, SubscriptionID: testSub, ServiceAccount: key, Streams: 4}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		f.publish(event(i), map[string]string{"k": "v"})
	}
	h := newRecordingHandler()
	stop := brokertest.Start(t, c, h)
	dispatchtest.WaitFor(t, 30*time.Second, "every message to be handled and acked", func() bool {
		return h.count() == n && f.unacked() == 0
	})
	stop()

	// The same key without the emulator is refused by the auth layer.
	t.Setenv(emulatorEnv, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = c.Run(ctx, newRecordingHandler())
	if err == nil {
		t.Fatal("Run with an unusable key and no emulator succeeded")
	}
	t.Logf("without the emulator: %v", err)
}
