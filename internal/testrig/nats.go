package testrig

import (
	"path/filepath"
	"testing"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
)

// NATS starts an in-process NATS server with JetStream on a random
// 127.0.0.1 port, stopped when the test ends, and returns its URL.
func NATS(t testing.TB) string {
	t.Helper()
	// Warnings only: the server's start-up banner and debug lines would
	// bury a verbose test's own output.
	s, err := bus.Embedded(bus.EmbeddedOptions{Port: -1, StoreDir: t.TempDir()}, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	if err != nil {
		t.Fatalf("start in-process NATS: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s.URL()
}

// NATSWithRoles starts an in-process NATS server for the test that requires
// Berth's role credentials for names (bus.AuthUsers), as a production
// NATS does, and returns its URL and each role's seed file.
func NATSWithRoles(t testing.TB, names msg.Names) (string, map[string]string) {
	t.Helper()
	seeds, err := bus.EnsureCredentials(filepath.Join(t.TempDir(), "nats-credentials"))
	if err != nil {
		t.Fatalf("NATS credentials: %v", err)
	}
	users, err := bus.AuthUsers(names, seeds)
	if err != nil {
		t.Fatalf("NATS users: %v", err)
	}
	s, err := bus.Embedded(bus.EmbeddedOptions{Port: -1, StoreDir: t.TempDir(), Users: users}, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	if err != nil {
		t.Fatalf("start in-process NATS: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s.URL(), seeds
}

// NATSWithNodeKeys is NATSWithRoles where each of nodes also has an
// lbagent key of its own, as `scheduler nats-credential lbagent --node`
// makes it: the seeds map each role to its credential and each node to
// its own, and dir is the credentials directory, which a scheduler
// publishes the node keys of with --nats-credentials.
func NATSWithNodeKeys(t testing.TB, names msg.Names, nodes ...string) (url string, seeds map[string]string, dir string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "nats-credentials")
	creds, err := bus.OpenCredentials(dir)
	for _, node := range nodes {
		if err == nil {
			creds, err = bus.AddNode(dir, node)
		}
	}
	if err != nil {
		t.Fatalf("NATS credentials: %v", err)
	}
	users, err := creds.Users(names)
	if err != nil {
		t.Fatalf("NATS users: %v", err)
	}
	s, err := bus.Embedded(bus.EmbeddedOptions{Port: -1, StoreDir: t.TempDir(), Users: users}, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	if err != nil {
		t.Fatalf("start in-process NATS: %v", err)
	}
	t.Cleanup(s.Shutdown)
	seeds = creds.Seeds()
	for _, node := range nodes {
		if _, seeds[node], err = creds.File(bus.RoleLBAgent, node); err != nil {
			t.Fatalf("NATS credential of node %s: %v", node, err)
		}
	}
	return s.URL(), seeds, dir
}
