package traffic

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
)

// windows is a Flusher that returns one message per known app, and an
// invalid one for the app "bad".
type windows struct {
	mu    sync.Mutex
	calls int
}

func (w *windows) Flush(now time.Time, known []string) []*msg.Metrics {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls++
	out := make([]*msg.Metrics, 0, len(known))
	for _, app := range known {
		m := &msg.Metrics{Node: "lb-1", App: app, WindowStart: now.Add(-time.Second), Window: spec.Duration(time.Second), Requests: int64(w.calls)}
		if app == "bad" {
			m.Requests = -1
		}
		out = append(out, m)
	}
	return out
}

var _ Flusher = (*windows)(nil)

func TestPublisherPublishesEveryWindow(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		routed []string
		want   map[string]bool // apps whose windows arrive
	}{
		{name: "one message per routed app", routed: []string{"web", "api"}, want: map[string]bool{"web": true, "api": true}},
		{name: "no apps, nothing published", routed: nil, want: map[string]bool{}},
		{name: "an invalid window is dropped, the others go", routed: []string{"bad", "web"}, want: map[string]bool{"web": true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			conn, err := bus.Connect(context.Background(), bus.Options{URL: testrig.NATS(t)}, zaptest.NewLogger(t))
			require.NoError(t, err)
			t.Cleanup(conn.Close)
			names, err := msg.NewNames("t")
			require.NoError(t, err)

			var mu sync.Mutex
			got := map[string][]int64{}
			sub, err := conn.Subscribe(names.MetricsSubject("*"), bus.Decoded(msg.DecodeAs[*msg.Metrics],
				func(subject string, m *msg.Metrics) {
					mu.Lock()
					defer mu.Unlock()
					if subject != names.MetricsSubject(m.App) {
						t.Errorf("window of %s on %s", m.App, subject)
					}
					got[m.App] = append(got[m.App], m.Requests)
				}, func(_ string, err error) { t.Errorf("undecodable window: %v", err) }))
			require.NoError(t, err)
			t.Cleanup(func() { _ = sub.Drain() })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			require.NoError(t, conn.Flush(ctx))

			agg := &windows{}
			p := New(conn, names, agg, func() []string { return tt.routed }, 20*time.Millisecond, zaptest.NewLogger(t))
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- p.Run(runCtx) }()
			require.Eventually(t, func() bool {
				agg.mu.Lock()
				calls := agg.calls
				agg.mu.Unlock()
				mu.Lock()
				defer mu.Unlock()
				for app := range tt.want {
					if len(got[app]) < 3 {
						return false
					}
				}
				return calls >= 3
			}, 5*time.Second, 5*time.Millisecond, "a window per period for every routed app")
			stop()
			require.NoError(t, <-done, "Run returns nil when its context ends")
			require.NoError(t, conn.Flush(ctx))

			mu.Lock()
			defer mu.Unlock()
			require.Len(t, got, len(tt.want))
			for app := range tt.want {
				for i := 1; i < len(got[app]); i++ {
					require.Greater(t, got[app][i], got[app][i-1], "windows in order")
				}
			}
		})
	}
}
