package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// Listen delivers notifications on channels to handle until ctx ends. It
// holds one connection, reconnects with backoff when it breaks, and calls
// handle(channel, "") for every channel after a reconnect, since
// notifications sent meanwhile are lost.
func (s *Store) Listen(ctx context.Context, channels []string, handle func(channel, payload string)) error {
	return s.ListenReady(ctx, channels, nil, handle)
}

// ListenReady is Listen that calls ready, when not nil, each time its
// LISTENs are in place: a notification sent after ready returns reaches
// handle.
func (s *Store) ListenReady(ctx context.Context, channels []string, ready func(), handle func(channel, payload string)) error {
	backoff := 100 * time.Millisecond
	for {
		err := s.listenOnce(ctx, channels, ready, handle)
		if ctx.Err() != nil {
			return nil
		}
		_ = err
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
		for _, ch := range channels {
			handle(ch, "")
		}
	}
}

func (s *Store) listenOnce(ctx context.Context, channels []string, ready func(), handle func(channel, payload string)) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	for _, ch := range channels {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return err
		}
	}
	if ready != nil {
		ready()
	}
	for {
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			// The connection is in an unknown state: close it rather than
			// return it to the pool still listening.
			_ = conn.Conn().Close(context.Background())
			return err
		}
		handle(n.Channel, n.Payload)
	}
}
