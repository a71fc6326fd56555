package testrig

import (
	"testing"

	"github.com/berthhq/berth/common/bus"
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
