// Package testrig gives tests real components instead of mocks: a throwaway
// PostgreSQL server with a fresh database per test, an in-process NATS
// server with JetStream, a private nginx on 127.0.0.1 ports, and the Docker
// engine with the demo app image built FROM scratch from this module.
//
// It is imported only by tests. Where a component is missing, a test skips
// with a message saying what to install; with CI=true it fails instead, so
// CI can never pass by skipping.
//
// A package that uses Postgres must run its tests through Main:
//
//	func TestMain(m *testing.M) { testrig.Main(m) }
package testrig

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// mainCalled records that Main runs this test binary, so that shared
// servers started by tests are stopped when the tests end.
var mainCalled atomic.Bool

// Main runs the tests, stops the shared servers started for them and exits
// with the tests' code. Call it from TestMain.
func Main(m *testing.M) {
	mainCalled.Store(true)
	code := m.Run()
	stopPostgres()
	os.Exit(code)
}

// InCI reports whether the tests run in CI (CI=true), where a missing
// dependency is a failure rather than a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require stops the test when ok is false: a failure in CI, a skip elsewhere.
// what names the missing piece and hint says how to install it.
func Require(t testing.TB, ok bool, what, hint string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("%s (CI=true, so this fails instead of skipping): %s", what, hint)
	}
	t.Skipf("%s: %s", what, hint)
}

// Backend starts an HTTP server on 127.0.0.1 that answers every request
// with body, stopped when the test ends, and returns its "host:port".
func Backend(t testing.TB, body string) string {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) }))
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	return port
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// run runs name with args, bounded by timeout, and returns its combined
// output; configure, when not nil, adjusts the command before it starts. The
// error includes the command line and what it printed.
func run(timeout time.Duration, configure func(*exec.Cmd), name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := exec.CommandContext(ctx, name, args...)
	if configure != nil {
		configure(c)
	}
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}
