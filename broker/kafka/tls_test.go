package kafka_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluice-io/sluice/broker/brokertest"
	"github.com/sluice-io/sluice/broker/kafka"
)

// selfSigned returns a server certificate for 127.0.0.1 and its PEM.
func selfSigned(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kfake test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// TestTLS: TLS without SASL against a broker whose CA is only known through
// Auth.CACert; without the CA the handshake fails with a clear error.
func TestTLS(t *testing.T) {
	t.Parallel()
	cert, caPEM := selfSigned(t)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(caPEM))
	e := newKafka(t, []kfake.Opt{kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})},
		kgo.DialTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	topic := e.topic(t, 2)
	if err := e.produce(context.Background(), topic, records(20)); err != nil {
		t.Fatal(err)
	}

	cfg := config(e, topic, unique("g"))
	cfg.Auth = kafka.Auth{TLS: true, CACert: caPEM}
	c, err := kafka.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := newCollector()
	stop := brokertest.Start(t, c, h)
	eventually(t, 20*time.Second, "20 messages over TLS", func() (bool, string) { return h.count() == 20, fmt.Sprint(h.count()) })
	stop()

	cfg.Auth.CACert = ""
	c, err = kafka.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Run(ctx, newCollector()); !contains(err, "certificate", e.addrs[0]) {
		t.Fatalf("Run without the CA = %v, want a certificate error naming the broker", err)
	}
}
