package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// runHealthcheck is `sluice healthcheck`: it asks the local daemon's
// /healthz and fails unless it answers 200. It is the container image's
// HEALTHCHECK (the distroless image has no curl).
//
//	sluice healthcheck [--url http://127.0.0.1:8080/healthz]
//
// The default URL follows SLUICE_LISTEN (an empty host means 127.0.0.1).
func runHealthcheck(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	host, port, err := net.SplitHostPort(cmp.Or(getenv("SLUICE_LISTEN"), ":8080"))
	if err != nil {
		return fmt.Errorf("SLUICE_LISTEN: %w", err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://"+net.JoinHostPort(host, port)+"/healthz", "URL to check")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", *url, resp.Status)
	}
	return nil
}
