package healthcheck

import (
	"context"
	"sync"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
)

// BusSink publishes health values to the health bucket, sealed by the
// scheduler's key: the bucket takes the scheduler's seal beside healthd's,
// and its readers take it for the apps whose check the scheduler runs
// (bus.HealthTrusted). It opens the bucket on first use, creating it when
// missing (the scheduler manages it, so that docker and exec checks work
// without healthd). Safe for concurrent use.
type BusSink struct {
	Conn  bus.BucketOpener
	Names msg.Names

	mu sync.Mutex
	kv *bus.KV
}

var _ Sink = (*BusSink)(nil)

func (s *BusSink) bucket(ctx context.Context) (*bus.KV, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kv != nil {
		return s.kv, nil
	}
	kv, err := bus.OwnedKV(ctx, s.Conn, s.Names, bus.RoleScheduler, s.Names.HealthBucket())
	if err != nil {
		return nil, err
	}
	s.kv = kv
	return kv, nil
}

// Put writes key's health.
func (s *BusSink) Put(ctx context.Context, key string, h *msg.Health) error {
	b, err := msg.Encode(h)
	if err != nil {
		return err
	}
	kv, err := s.bucket(ctx)
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, key, b)
	return err
}

// Delete deletes key's health.
func (s *BusSink) Delete(ctx context.Context, key string) error {
	kv, err := s.bucket(ctx)
	if err != nil {
		return err
	}
	return kv.Delete(ctx, key)
}
