package testrig

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// NATSProcess is a nats-server with JetStream run as its own process on a
// fixed 127.0.0.1 port, for tests that kill it and start it again: the
// in-process server of NATS cannot be killed the way a crash kills one.
// Its methods are for the test's goroutine only.
type NATSProcess struct {
	t       testing.TB
	bin     string
	port    int
	monitor int
	// Name is the server's name: "berth-test", or a cluster node's.
	Name string
	// StoreDir is the JetStream store of the running server.
	StoreDir string
	// Log is the server's output, appended to across restarts.
	Log string
	// config, when set, is the server's config file (a cluster node's),
	// which names its ports and store; StoreDir then never changes.
	config string

	cmd  *exec.Cmd
	done chan struct{}
}

var natsServerBin struct {
	once sync.Once
	path string
	err  error
}

// NATSServerBinary returns the path of nats-server built from the
// module's own dependency (github.com/nats-io/nats-server/v2), built once
// per test binary: to check a config file with it (-t), say.
func NATSServerBinary(t testing.TB) string {
	t.Helper()
	bin, err := natsServerBinary()
	if err != nil {
		t.Fatalf("build nats-server: %v", err)
	}
	return bin
}

// natsServerBinary builds nats-server from the module's own dependency once
// per test binary.
func natsServerBinary() (string, error) {
	b := &natsServerBin
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "berth-nats-server-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, "nats-server")
		_, b.err = run(3*time.Minute, func(c *exec.Cmd) { c.Env = append(os.Environ(), "CGO_ENABLED=0") },
			"go", "build", "-o", b.path, "github.com/nats-io/nats-server/v2")
	})
	return b.path, b.err
}

// StartNATSProcess builds nats-server (github.com/nats-io/nats-server/v2, a
// dependency of the module), starts it with JetStream and an empty store in
// a temporary directory on a free 127.0.0.1 port, waits until JetStream is
// ready, and kills it when the test ends.
func StartNATSProcess(t testing.TB) *NATSProcess {
	t.Helper()
	bin, err := natsServerBinary()
	if err != nil {
		t.Fatalf("build nats-server: %v", err)
	}
	n := &NATSProcess{t: t, bin: bin, port: FreePort(t), monitor: FreePort(t), Name: "berth-test", Log: filepath.Join(t.TempDir(), "nats-server.log")}
	t.Cleanup(n.Kill)
	n.Restart(t.TempDir())
	return n
}

// URL is the client URL; it stays the same across restarts.
func (n *NATSProcess) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// Monitor is the base URL of the server's HTTP monitoring
// (/healthz, /jsz, /connz).
func (n *NATSProcess) Monitor() string { return fmt.Sprintf("http://127.0.0.1:%d", n.monitor) }

// Running reports whether the server process is alive.
func (n *NATSProcess) Running() bool {
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Kill ends the server with SIGKILL, as a crash would, and waits for it.
func (n *NATSProcess) Kill() {
	if !n.Running() {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.done
}

// Restart starts the server (killing a running one first) on the same
// port with storeDir as its JetStream store — a new empty directory loses
// every bucket — and waits until JetStream is ready. A cluster node keeps
// its store: use Start.
func (n *NATSProcess) Restart(storeDir string) {
	n.t.Helper()
	if n.config != "" {
		n.t.Fatalf("nats-server %s is a cluster node, whose store is in its config: use Start", n.Name)
	}
	n.Kill()
	n.StoreDir = storeDir
	n.launch()
	// /healthz answers 200 once the server accepts clients and JetStream is up.
	n.WaitHealthy(20 * time.Second)
}

// Start starts the server again (killing a running one first) on the same
// ports and store, and returns at once: a cluster node then catches up
// with its peers (WaitHealthy, NATSCluster.CaughtUp).
func (n *NATSProcess) Start() {
	n.t.Helper()
	n.Kill()
	n.launch()
}

// WaitHealthy waits until the server's /healthz answers 200: it accepts
// clients and, in a cluster, its JetStream is current with the meta
// leader and every stream and consumer it holds a replica of.
// A server that exits meanwhile (a port taken, a bad config) fails the
// test at once, with what it printed.
func (n *NATSProcess) WaitHealthy(timeout time.Duration) {
	n.t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		if !n.Running() {
			n.t.Fatalf("nats-server %s exited: %s", n.Name, lastLines(n.Output(), 30))
		}
		resp, err := client.Get(n.Monitor() + "/healthz")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("status %d: %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.t.Fatalf("nats-server %s: not healthy within %s: %s\n%s", n.Name, timeout, last, lastLines(n.Output(), 30))
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (n *NATSProcess) launch() {
	n.t.Helper()
	f, err := os.OpenFile(n.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.t.Fatalf("nats-server log: %v", err)
	}
	args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-m", strconv.Itoa(n.monitor), "-js", "-sd", n.StoreDir, "-n", n.Name}
	if n.config != "" {
		args = []string{"-c", n.config}
	}
	n.cmd = exec.Command(n.bin, args...)
	n.cmd.Stdout, n.cmd.Stderr = f, f
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := n.cmd.Start(); err != nil {
		f.Close()
		n.t.Fatalf("start nats-server %s: %v", n.Name, err)
	}
	done := make(chan struct{})
	cmd := n.cmd
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(done)
	}()
	n.done = done
}

// Output returns what the server printed so far, for a failing test's log.
func (n *NATSProcess) Output() string {
	b, _ := os.ReadFile(n.Log)
	return string(b)
}
