package bus

import (
	"context"
	"fmt"
	"time"
)

// ConsumerIdle is the longest any consumer of a Berth bucket outlives its
// last subscriber: the stream's consumer limit (inactive_threshold), which
// the server applies to every consumer created on it, durable or not. So
// no credential, the reader's included, can leave a consumer behind that
// outlives its connection and holds the stream's consumer slots. NATS
// subject permissions cannot refuse durable consumers alone: since NATS
// 2.9 a KV watch (an ordered consumer) is created on
// $JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>, the same subject as a
// durable of that name, whose durable_name is only in the request body.
//
// It is the server's own default for consumers that are not durable, so
// watches behave as before. A tool that asks a consumer of a Berth bucket
// for a longer inactive_threshold (the jetstream package's OrderedConsumer
// asks 5 minutes unless told) is refused by the server: ask 5 s or less.
const ConsumerIdle = 5 * time.Second

// limitConsumers sets the consumer limit of a bucket's stream, which
// creating or updating the bucket resets (the KV API knows no such
// setting).
func (c *Conn) limitConsumers(ctx context.Context, bucket string) error {
	s := kvStream(bucket)
	gctx, stop := c.refusals.guard(ctx, jsAPI+"STREAM.INFO."+s, jsAPI+"STREAM.UPDATE."+s)
	defer stop()
	st, err := c.js.Stream(gctx, s)
	if err != nil {
		return fmt.Errorf("consumer limits of bucket %s: %w", bucket, denial(gctx, err))
	}
	cfg := st.CachedInfo().Config
	if cfg.ConsumerLimits.InactiveThreshold == ConsumerIdle {
		return nil
	}
	cfg.ConsumerLimits.InactiveThreshold = ConsumerIdle
	if _, err := c.js.UpdateStream(gctx, cfg); err != nil {
		return fmt.Errorf("consumer limits of bucket %s (a consumer that asked a longer inactive_threshold is named here: delete it): %w", bucket, denial(gctx, err))
	}
	return nil
}
