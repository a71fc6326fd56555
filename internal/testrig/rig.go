// Package testrig gives tests real components instead of mocks: a throwaway
// PostgreSQL server with a fresh database per test, an in-process NATS
// server with JetStream, a private nginx on 127.0.0.1 ports, and the Docker
// engine with the demo app image built FROM scratch from this module, and
// a headless Chromium (browser.go) for the web console's tests.
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
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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

// Test ports are picked outside the kernel's ephemeral range, where a
// port the kernel hands to an outgoing connection (a client of any test on
// the machine) could take one between its pick and its use (CI once: a
// NATS route port, "address already in use"), and each is held for the
// process's life by an exclusive lock on a file named after it, so two
// test processes never pick the same one.
var (
	portsMu   sync.Mutex
	heldPorts = map[int]*os.File{}
)

// portRange is where test ports are picked: below the ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range, 32768–60999 by default), or
// above it when it starts too low to leave room.
func portRange() (lo, hi int) {
	lo, hi = 20000, 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	var eLo, eHi int
	if _, err := fmt.Sscan(string(b), &eLo, &eHi); err != nil {
		return lo, hi
	}
	switch {
	case eLo-lo >= 2000:
		return lo, eLo
	case 65535-eHi >= 2000:
		return eHi + 1, 65536
	}
	return 10000, max(eLo, 12000)
}

func freePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	dir := filepath.Join(os.TempDir(), "berth-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return 0, err
	}
	lo, hi := portRange()
	for range 500 {
		port := lo + rand.IntN(hi-lo)
		if heldPorts[port] != nil {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			continue
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close() // another test process holds it
			continue
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			f.Close() // in use by something else
			continue
		}
		ln.Close()
		heldPorts[port] = f // released when the process exits
		return port, nil
	}
	return 0, fmt.Errorf("no free port in %d-%d after 500 tries", lo, hi-1)
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
