package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/nats-io/nats.go"
)

// Publish sends data on subject. While NATS is unreachable the message is
// buffered by the client (up to its reconnect buffer) and sent on reconnect.
func (c *Conn) Publish(ctx context.Context, subject string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	data, err := c.seals.seal(kindMsg, subject, "", opMsg, data)
	if err != nil {
		return err
	}
	if err := c.nc.Publish(subject, data); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// Flush waits until the server has everything published so far.
func (c *Conn) Flush(ctx context.Context) error {
	if err := c.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("nats flush: %w", err)
	}
	return nil
}

// MsgHandler handles one message. Calls for one subscription come one at a
// time, in order.
type MsgHandler func(subject string, data []byte)

// Subscription is an active subscription.
type Subscription struct {
	sub *nats.Subscription
}

// Subscribe calls handler for every message on subject, which may hold
// wildcards ("berth.v1.events.>"), with its seal removed. With Keys, a
// message its subject's owner did not seal is dropped, counted (Forged)
// and logged at most once per 10 s.
func (c *Conn) Subscribe(subject string, handler MsgHandler) (*Subscription, error) {
	sub, err := c.nc.Subscribe(subject, func(m *nats.Msg) {
		body, _, err := c.seals.open(kindMsg, m.Subject, "", opMsg, m.Data, time.Time{})
		if errors.Is(err, ErrNodesLoading) {
			// Perhaps a node's valid message, too early to tell: dropped
			// like one lost on the way, not counted as forged.
			if ce := c.logger.Check(zap.DebugLevel, "dropped a message before the node-key directory loaded"); ce != nil {
				ce.Write(zap.String("subject", m.Subject))
			}
			return
		}
		if err != nil {
			c.forged.Add(1)
			if n, ok := c.forgedLog.allow(10 * time.Second); ok {
				c.logger.Warn("dropped a message without its owner's seal", zap.String("subject", m.Subject), zap.Error(err), zap.Uint64("dropped_since_last_log", n))
			}
			return
		}
		handler(m.Subject, body)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject, err)
	}
	return &Subscription{sub: sub}, nil
}

// Drain stops new deliveries and lets the handler finish the messages
// already received.
func (s *Subscription) Drain() error {
	if err := s.sub.Drain(); err != nil {
		return fmt.Errorf("drain %s: %w", s.sub.Subject, err)
	}
	return nil
}

// Decoded adapts a typed handler to a MsgHandler: messages that fail decode
// go to onDrop (count and log them there) instead of the handler.
func Decoded[T any](decode func(data []byte) (T, error), handle func(subject string, v T), onDrop func(subject string, err error)) MsgHandler {
	return func(subject string, data []byte) {
		v, err := decode(data)
		if err != nil {
			onDrop(subject, err)
			return
		}
		handle(subject, v)
	}
}

// Forged returns how many values and messages this connection dropped
// because their owner had not sealed them.
func (c *Conn) Forged() uint64 { return c.forged.Load() }
