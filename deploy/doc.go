// Package deploy holds what it takes to run sluice outside a developer's
// machine: a docker-compose stack with every broker for a local trial
// (compose/), Kubernetes manifests applied with kustomize (kubernetes/) and a
// Grafana dashboard for sluice's Prometheus metrics (grafana/). It has no Go
// code; its test checks the files against each other and against the metrics
// sluice exports.
package deploy
