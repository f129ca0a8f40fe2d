//go:build deps

// Package deps pins the modules sluice's packages are being built on; removed once they all import them.
package deps

import (
	_ "github.com/redis/go-redis/v9"
	_ "github.com/alicebob/miniredis/v2"
	_ "github.com/oklog/ulid/v2"
	_ "github.com/go-chi/chi/v5"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/prometheus/client_golang/prometheus/testutil"
	_ "github.com/rabbitmq/amqp091-go"
	_ "github.com/segmentio/kafka-go"
	_ "github.com/segmentio/kafka-go/sasl/plain"
	_ "github.com/segmentio/kafka-go/sasl/scram"
	_ "github.com/twmb/franz-go/pkg/kfake"
	_ "github.com/twmb/franz-go/pkg/kgo"
	_ "github.com/twmb/franz-go/pkg/kadm"
	_ "github.com/aws/aws-sdk-go-v2/config"
	_ "github.com/aws/aws-sdk-go-v2/credentials"
	_ "github.com/aws/aws-sdk-go-v2/service/sqs"
	_ "cloud.google.com/go/pubsub/v2"
	_ "cloud.google.com/go/pubsub/v2/pstest"
	_ "google.golang.org/api/option"
	_ "github.com/stretchr/testify/require"
	_ "go.uber.org/goleak"
	_ "github.com/oklog/run"
	_ "golang.org/x/time/rate"
	_ "github.com/google/go-cmp/cmp"
)
