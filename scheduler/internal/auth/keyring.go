package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/berthhq/berth/scheduler/internal/store"
)

// Source is where a Keyring loads the valid tokens and records their use:
// the scheduler's *store.Store. Safe for concurrent use.
type Source interface {
	ActiveTokens(ctx context.Context) ([]store.Token, error)
	TouchTokens(ctx context.Context, used map[string]time.Time) error
}

var _ Source = (*store.Store)(nil)

// Defaults of Config.
const (
	// DefaultRefresh bounds how long a revoked token still works on a
	// replica that missed the revoke's NOTIFY (its listening connection
	// broke unnoticed).
	DefaultRefresh = 10 * time.Second
	// DefaultMissInterval is the least time between two loads that
	// unknown tokens trigger: a flood of wrong tokens costs Postgres at
	// most one query per interval and replica.
	DefaultMissInterval = time.Second
	// DefaultMissWait bounds how long a request with an unknown token
	// waits for such a load before it is refused.
	DefaultMissWait = 3 * time.Second
	// DefaultTouchEvery is how often a replica writes when its tokens
	// were last used: at most one write per token and interval.
	DefaultTouchEvery = time.Minute
	// loadTimeout bounds one load of the tokens.
	loadTimeout = 5 * time.Second
)

// Config configures a Keyring; zero durations take the defaults.
type Config struct {
	// Bootstrap is the --api-token-file token, an admin named
	// store.ActorBootstrap; "" for none.
	Bootstrap    string
	Refresh      time.Duration
	MissInterval time.Duration
	MissWait     time.Duration
	TouchEvery   time.Duration
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Loaded, when set, is called after every load with the time it
	// started; for tests.
	Loaded func(start time.Time)
}

// ErrUnknown is a bearer token that is no valid token: never made,
// revoked, or mistyped.
var ErrUnknown = errors.New("auth: unknown or revoked token")

type entry struct {
	name  string
	scope Scope
	apps  []string
}

// Keyring checks bearer tokens against the hashes of every valid token,
// held in memory and reloaded from its Source when a token changes
// (Changed, from the store's TokensChannel), every Config.Refresh, and
// when a well-formed token is not found (at most every
// Config.MissInterval), so that a token made on another replica works at
// once. It is safe for concurrent use; Run keeps it fresh.
type Keyring struct {
	src    Source
	cfg    Config
	logger *zap.Logger

	bootstrap    [32]byte
	hasBootstrap bool
	changed      chan struct{}

	mu       sync.Mutex
	byHash   map[[32]byte]entry
	loadedAt time.Time     // when the last completed load started
	loading  chan struct{} // closed when the load in flight ends
	nextMiss time.Time     // when an unknown token may next trigger a load
	used     map[string]time.Time

	auths               *prometheus.CounterVec
	loads               *prometheus.CounterVec
	authOK, authUnknown prometheus.Counter
}

// NewKeyring returns a keyring that loads from src.
func NewKeyring(src Source, cfg Config, logger *zap.Logger) *Keyring {
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.MissInterval <= 0 {
		cfg.MissInterval = DefaultMissInterval
	}
	if cfg.MissWait <= 0 {
		cfg.MissWait = DefaultMissWait
	}
	if cfg.TouchEvery <= 0 {
		cfg.TouchEvery = DefaultTouchEvery
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	k := &Keyring{src: src, cfg: cfg, logger: logger.Named("auth"), changed: make(chan struct{}, 1),
		byHash: map[[32]byte]entry{}, used: map[string]time.Time{},
		auths: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_scheduler_api_auth_total",
			Help: "Bearer tokens checked by the API, by result: ok, unknown (never made, revoked or mistyped), error (the tokens could not be loaded)."}, []string{"result"}),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_scheduler_api_token_loads_total",
			Help: "Loads of the valid API tokens from Postgres, by result (ok, error)."}, []string{"result"}),
	}
	k.authOK, k.authUnknown = k.auths.WithLabelValues("ok"), k.auths.WithLabelValues("unknown")
	if cfg.Bootstrap != "" {
		k.bootstrap, k.hasBootstrap = Hash(cfg.Bootstrap), true
	}
	return k
}

// Collectors are the keyring's metrics.
func (k *Keyring) Collectors() []prometheus.Collector {
	return []prometheus.Collector{k.auths, k.loads}
}

// Changed says that a token was created or revoked: Run reloads at once.
// It never blocks.
func (k *Keyring) Changed() {
	select {
	case k.changed <- struct{}{}:
	default:
	}
}

// Authenticate returns the identity of a bearer token: the bootstrap
// token is compared in constant time; any other is looked up by its
// SHA-256, which tells a timing observer nothing about any valid token.
// It returns ErrUnknown for no valid token, and another error when the
// tokens could not be loaded to check a token not yet known here.
func (k *Keyring) Authenticate(ctx context.Context, secret string) (Identity, error) {
	h := Hash(secret)
	if k.hasBootstrap && subtle.ConstantTimeCompare(h[:], k.bootstrap[:]) == 1 {
		k.authOK.Inc()
		return Identity{Name: store.ActorBootstrap, Scope: Admin}, nil
	}
	if !WellFormed(secret) {
		k.authUnknown.Inc()
		return Identity{}, ErrUnknown
	}
	if id, ok := k.lookup(h); ok {
		return id, nil
	}
	// Perhaps made on another replica a moment ago: wait for a load that
	// starts after now.
	wctx, cancel := context.WithTimeout(ctx, k.cfg.MissWait)
	defer cancel()
	err := k.loadAfter(wctx, k.cfg.Now(), true)
	if id, ok := k.lookup(h); ok {
		return id, nil
	}
	if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		k.auths.WithLabelValues("error").Inc()
		return Identity{}, err
	}
	k.authUnknown.Inc()
	return Identity{}, ErrUnknown
}

func (k *Keyring) lookup(h [32]byte) (Identity, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e, ok := k.byHash[h]
	if !ok {
		return Identity{}, false
	}
	k.used[e.name] = k.cfg.Now()
	k.authOK.Inc()
	return Identity{Name: e.name, Scope: e.scope, Apps: e.apps}, true
}

// Reload loads the valid tokens now (once a load in flight is done, a new
// one that starts after this call).
func (k *Keyring) Reload(ctx context.Context) error {
	return k.loadAfter(ctx, k.cfg.Now(), false)
}

// loadAfter returns once a load that started at or after t has completed:
// it waits for the load in flight, or starts one. Loads for unknown
// tokens (miss) start at most every MissInterval.
func (k *Keyring) loadAfter(ctx context.Context, t time.Time, miss bool) error {
	for {
		k.mu.Lock()
		if !k.loadedAt.IsZero() && !k.loadedAt.Before(t) {
			k.mu.Unlock()
			return nil
		}
		if ch := k.loading; ch != nil {
			k.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		now := k.cfg.Now()
		if wait := k.nextMiss.Sub(now); miss && wait > 0 {
			k.mu.Unlock()
			timer := time.NewTimer(wait)
			select {
			case <-timer.C:
				continue
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			}
		}
		ch := make(chan struct{})
		k.loading = ch
		if miss {
			k.nextMiss = now.Add(k.cfg.MissInterval)
		}
		k.mu.Unlock()
		err := k.load(ctx, now)
		k.mu.Lock()
		k.loading = nil
		close(ch)
		k.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// load replaces the tokens with the source's. It runs detached from the
// request that asked for it, which other requests may be waiting on too.
func (k *Keyring) load(ctx context.Context, start time.Time) error {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
	defer cancel()
	tokens, err := k.src.ActiveTokens(lctx)
	if err != nil {
		k.loads.WithLabelValues("error").Inc()
		return fmt.Errorf("load the API tokens: %w", err)
	}
	next := make(map[[32]byte]entry, len(tokens))
	for _, t := range tokens {
		s, err := ParseScope(t.Scope)
		if err != nil {
			k.logger.Warn("ignored a token with an unknown scope", zap.String("token", t.Name), zap.Error(err))
			continue
		}
		next[t.Hash] = entry{name: t.Name, scope: s, apps: t.Apps}
	}
	k.mu.Lock()
	k.byHash, k.loadedAt = next, start
	k.mu.Unlock()
	k.loads.WithLabelValues("ok").Inc()
	if k.cfg.Loaded != nil {
		k.cfg.Loaded(start)
	}
	return nil
}

// Run loads the tokens, then reloads them on Changed and every Refresh,
// and writes when they were last used every TouchEvery, until ctx ends.
func (k *Keyring) Run(ctx context.Context) error {
	if err := k.Reload(ctx); err != nil && ctx.Err() == nil {
		k.logger.Warn("could not load the API tokens yet: only --api-token-file's token works until they load", zap.Error(err))
	}
	refresh := time.NewTicker(k.cfg.Refresh)
	defer refresh.Stop()
	touch := time.NewTicker(k.cfg.TouchEvery)
	defer touch.Stop()
	for {
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
			k.Touch(cctx)
			cancel()
			return nil
		case <-k.changed:
		case <-refresh.C:
		case <-touch.C:
			k.Touch(ctx)
			continue
		}
		if err := k.Reload(ctx); err != nil && ctx.Err() == nil {
			k.logger.Warn("could not reload the API tokens: revoked tokens may still work here until a reload succeeds", zap.Error(err))
		}
	}
}

// Touch writes when each token was last used, since the last Touch, in
// one statement. A failure is logged: the times are kept for the next.
func (k *Keyring) Touch(ctx context.Context) {
	k.mu.Lock()
	used := k.used
	k.used = map[string]time.Time{}
	k.mu.Unlock()
	if len(used) == 0 {
		return
	}
	if err := k.src.TouchTokens(ctx, used); err != nil {
		k.logger.Warn("could not record when API tokens were last used", zap.Int("tokens", len(used)), zap.Error(err))
		k.mu.Lock()
		for n, at := range used {
			if cur, ok := k.used[n]; !ok || cur.Before(at) {
				k.used[n] = at
			}
		}
		k.mu.Unlock()
	}
}
