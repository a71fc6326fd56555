package lifecycle

import (
	"context"
	"errors"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// waiter runs until its context ends, then takes cleanup to stop.
func waiter(cleanup time.Duration, stopped *atomic.Int32) Component {
	return Func(func(ctx context.Context) error {
		<-ctx.Done()
		cctx, cancel := CleanupContext(ctx)
		defer cancel()
		select {
		case <-time.After(cleanup):
			stopped.Add(1)
		case <-cctx.Done():
		}
		return nil
	})
}

func TestGroup(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	tests := []struct {
		name        string
		components  []Component
		cancelAfter time.Duration
		timeout     time.Duration
		wantErr     error
		wantStopped int32
	}{
		{
			name:        "parent cancel stops all softly",
			components:  nil, // only the two waiters every case has
			cancelAfter: 20 * time.Millisecond,
			timeout:     time.Second,
			wantStopped: 2,
		},
		{
			name:        "a failing component stops the others and its error wins",
			components:  []Component{Func(func(context.Context) error { return boom })},
			timeout:     time.Second,
			wantErr:     boom,
			wantStopped: 2,
		},
		{
			name: "a component that ignores the stop hits the deadline",
			// The behaviour under test: a component that never returns.
			components:  []Component{Func(func(context.Context) error { time.Sleep(time.Hour); return nil })},
			cancelAfter: 10 * time.Millisecond,
			timeout:     100 * time.Millisecond,
			wantErr:     ErrStopTimeout,
			wantStopped: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stopped atomic.Int32
			g := NewGroup(zaptest.NewLogger(t), tt.timeout)
			g.Add("a", waiter(5*time.Millisecond, &stopped))
			g.Add("b", waiter(5*time.Millisecond, &stopped))
			for i, c := range tt.components {
				g.Add("extra"+string(rune('0'+i)), c)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancelAfter > 0 {
				time.AfterFunc(tt.cancelAfter, cancel)
			}
			err := g.Run(ctx)
			if tt.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tt.wantErr)
			}
			require.Equal(t, tt.wantStopped, stopped.Load())
		})
	}
}

func TestCleanupContextEndsAtDeadline(t *testing.T) {
	t.Parallel()
	var cleanupLeft time.Duration
	g := NewGroup(zap.NewNop(), 300*time.Millisecond)
	g.Add("c", Func(func(ctx context.Context) error {
		<-ctx.Done()
		cctx, cancel := CleanupContext(ctx)
		defer cancel()
		require.NoError(t, cctx.Err(), "cleanup context must outlive the run context")
		dl, ok := cctx.Deadline()
		require.True(t, ok)
		cleanupLeft = time.Until(dl)
		return nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, g.Run(ctx))
	require.InDelta(t, 300*time.Millisecond, cleanupLeft, float64(100*time.Millisecond))
}

func TestSignalContext(t *testing.T) {
	// Not parallel: it sends real signals to this process. SIGUSR1 keeps it
	// independent of the go test runner's own SIGINT/SIGTERM handling.
	exited := make(chan int, 1)
	ctx, stop := signalContext(context.Background(), zaptest.NewLogger(t), func(code int) { exited <- code }, syscall.SIGUSR1)
	defer stop()

	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGUSR1))
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("first signal did not cancel the context")
	}
	select {
	case <-exited:
		t.Fatal("hard exit after only one signal")
	default:
	}
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGUSR1))
	select {
	case code := <-exited:
		require.Equal(t, 1, code)
	case <-time.After(5 * time.Second):
		t.Fatal("second signal did not hard exit")
	}
}

func TestSignalContextStopReleases(t *testing.T) {
	ctx, stop := SignalContext(context.Background(), zap.NewNop(), func(int) { t.Error("unexpected exit") })
	stop()
	stop() // idempotent
	require.Error(t, ctx.Err())
}

func TestEveryRunsUntilTheContextEnds(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var n atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		Every(ctx, 5*time.Millisecond, func() {
			if n.Add(1) == 3 {
				cancel()
			}
		})
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Every did not return when its context ended")
	}
	require.Equal(t, int32(3), n.Load())
}
