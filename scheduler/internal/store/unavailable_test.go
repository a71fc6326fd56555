package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/internal/testrig"
	"github.com/stretchr/testify/require"
)

// proxy forwards TCP connections to target until cut, which closes its
// listener and every connection: Postgres going away under the store.
type proxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln}
	t.Cleanup(p.cut)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) cut() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// via returns dbURL with its host replaced by addr and a password added,
// which must never show in an error.
func via(t *testing.T, dbURL, addr string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	u.Host = addr
	u.User = url.UserPassword(u.User.Username(), "hunter2")
	return u.String()
}

// silent accepts connections and never answers, like a host that drops
// packets after the handshake.
func silent(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return ln.Addr().String()
}

func TestUnavailable(t *testing.T) {
	t.Parallel()
	db := testrig.Postgres(t)
	closed := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	tests := []struct {
		name string
		url  string
		// op runs against the store; it may first prepare it.
		op          func(ctx context.Context, t *testing.T, s *Store) error
		unavailable bool
	}{
		{"connection refused", via(t, db, closed), func(ctx context.Context, _ *testing.T, s *Store) error {
			_, err := s.List(ctx)
			return err
		}, true},
		{"connection refused, in a transaction", via(t, db, closed), func(ctx context.Context, _ *testing.T, s *Store) error {
			_, err := s.Scale(ctx, "web", 3)
			return err
		}, true},
		{"connect timeout", via(t, db, silent(t)) + "&connect_timeout=1", func(ctx context.Context, _ *testing.T, s *Store) error {
			_, err := s.Events(ctx, "", 0, 10)
			return err
		}, true},
		{"no connection before the deadline", via(t, db, silent(t)), func(ctx context.Context, _ *testing.T, s *Store) error {
			ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			_, _, err := s.Holder(ctx, "scheduler")
			return err
		}, true},
		{"no such database", strings.Replace(db, "/t", "/missing_t", 1), func(ctx context.Context, _ *testing.T, s *Store) error {
			return s.Ping(ctx)
		}, false},
		{"caller gave up", via(t, db, silent(t)), func(ctx context.Context, _ *testing.T, s *Store) error {
			ctx, cancel := context.WithCancel(ctx)
			cancel()
			_, err := s.List(ctx)
			return err
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := Open(context.Background(), tt.url)
			require.NoError(t, err)
			t.Cleanup(s.Close)
			err = tt.op(context.Background(), t, s)
			require.Error(t, err)
			require.Equal(t, tt.unavailable, errors.Is(err, ErrUnavailable), "%v", err)
			require.NotContains(t, err.Error(), "hunter2")
		})
	}
}

func TestUnavailableWhenPostgresGoesAway(t *testing.T) {
	t.Parallel()
	db := testrig.Postgres(t)
	u, err := url.Parse(db)
	require.NoError(t, err)
	p := newProxy(t, u.Host)
	s, err := Open(context.Background(), via(t, db, p.ln.Addr().String()))
	require.NoError(t, err)
	t.Cleanup(s.Close)
	ctx := context.Background()
	_, err = s.Migrate(ctx)
	require.NoError(t, err)
	_, err = s.Get(ctx, "web")
	require.ErrorIs(t, err, ErrNotFound)
	require.NotErrorIs(t, err, ErrUnavailable, "a missing app is not a missing database")

	p.cut()
	// The first call may meet the broken pooled connection, the next a
	// refused new one: both are unavailability.
	for i := range 2 {
		_, err = s.List(ctx)
		require.ErrorIs(t, err, ErrUnavailable, "call %d", i)
		require.NotContains(t, err.Error(), "hunter2")
	}
	require.ErrorIs(t, s.Ping(ctx), ErrUnavailable)
}
