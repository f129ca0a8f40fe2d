// Command sluice is the sluice daemon: it keeps source definitions behind a
// Convoy-compatible admin API and (with the supervisor) consumes their
// brokers into the dispatch queue.
//
//	sluice serve [flags]   run the daemon (see serve --help)
//	sluice tail [flags]    print the dispatch stream as JSON lines
//	sluice healthcheck     exit 0 when the local daemon answers /healthz
//	sluice version         print the version
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	// SIGINT/SIGTERM cancel ctx: every subcommand stops gracefully on it.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	// After the first signal the default action is back: a second one ends
	// the process at once.
	context.AfterFunc(ctx, stop)
	code := runCommand(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: sluice <command> [flags]

commands:
  serve        run the daemon (sluice serve --help for flags)
  tail         print the dispatch stream as JSON lines (sluice tail --help)
  healthcheck  exit 0 when the local daemon answers /healthz (container HEALTHCHECK)
  version      print the version
`

// runCommand dispatches a subcommand and returns the process exit code.
func runCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		if err := serve(ctx, serveEnv{args: args[1:], getenv: getenv, stdout: stdout, stderr: stderr}); err != nil {
			fmt.Fprintln(stderr, "sluice serve:", err)
			return 1
		}
		return 0
	case "tail":
		if err := runTail(ctx, args[1:], stdout); err != nil && ctx.Err() == nil {
			fmt.Fprintln(stderr, "sluice tail:", err)
			return 1
		}
		return 0
	case "healthcheck":
		if err := runHealthcheck(ctx, args[1:], getenv, stderr); err != nil {
			fmt.Fprintln(stderr, "sluice healthcheck:", err)
			return 1
		}
		return 0
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "sluice", version)
		return 0
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "sluice: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
