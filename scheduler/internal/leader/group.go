package leader

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// DefaultRestart is how long a Group waits before it runs again a
// service that failed while this replica still leads.
const DefaultRestart = 5 * time.Second

// joinReport is how often a Group that waits for its services to stop
// names those still running.
const joinReport = 5 * time.Second

// Group runs the leader-only services as one: on gaining leadership it
// starts every service under one context; on losing it (or when the term
// changes) it cancels that context and waits until every service has
// returned before it starts any again, so no two terms' services ever run
// at once on this replica. A service that fails is logged and run again
// after Restart while the leadership lasts; it stops neither the others
// nor the process. A service that returns nil before its context ends is
// done for this term.
//
// Services still fence their writes with the lease and check it at each
// step: a Group stops them as soon as the elector says the lease is lost,
// and the fencing covers the moment in between.
//
// Add every service before Run. Lead may be called from any goroutine,
// and never blocks.
type Group struct {
	// Restart is the wait before a failed service runs again; zero means
	// DefaultRestart.
	Restart time.Duration

	logger   *zap.Logger
	services []service
	changed  chan struct{}

	mu   sync.Mutex
	term uint64 // the term to lead in; 0 while following
}

type service struct {
	name string
	c    lifecycle.Component
}

// NewGroup returns an empty group.
func NewGroup(logger *zap.Logger) *Group {
	return &Group{logger: logger.Named("leader-group"), changed: make(chan struct{}, 1)}
}

// Add registers a leader-only service under a name used in logs.
func (g *Group) Add(name string, c lifecycle.Component) {
	g.services = append(g.services, service{name: name, c: c})
}

// Lead says whether this replica leads (ok) and under which lease: the
// Elector's OnChange. It only records the state; Run starts or stops the
// services.
func (g *Group) Lead(l store.Lease, ok bool) {
	g.mu.Lock()
	if ok {
		g.term = l.Term
	} else {
		g.term = 0
	}
	g.mu.Unlock()
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

func (g *Group) wanted() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.term
}

// Run starts and stops the services as leadership comes and goes, until
// ctx ends; then it stops them and returns once every one has returned.
func (g *Group) Run(ctx context.Context) error {
	var cur *running
	for {
		want := g.wanted()
		if cur != nil && cur.term != want {
			g.stop(cur, "leadership lost")
			cur = nil
		}
		if cur == nil && want != 0 {
			cur = g.start(ctx, want)
		}
		select {
		case <-ctx.Done():
			if cur != nil {
				g.stop(cur, "stopping")
			}
			return nil
		case <-g.changed:
		}
	}
}

// running is the services of one term.
type running struct {
	term   uint64
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	left map[string]bool // the services that have not returned
}

func (g *Group) start(ctx context.Context, term uint64) *running {
	cctx, cancel := context.WithCancel(ctx)
	r := &running{term: term, cancel: cancel, left: map[string]bool{}}
	g.logger.Info("starting the leader's services", zap.Uint64(logging.KeyTerm, term), zap.Int("services", len(g.services)))
	for _, s := range g.services {
		r.left[s.name] = true
		r.wg.Go(func() {
			g.serve(cctx, s, term)
			r.mu.Lock()
			delete(r.left, s.name)
			r.mu.Unlock()
		})
	}
	return r
}

// serve runs one service until ctx ends, again after each failure.
func (g *Group) serve(ctx context.Context, s service, term uint64) {
	log := g.logger.With(zap.String("service", s.name), zap.Uint64(logging.KeyTerm, term))
	restart := g.Restart
	if restart <= 0 {
		restart = DefaultRestart
	}
	for {
		err := s.c.Run(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			log.Info("leader's service returned: done for this term")
			return
		case errors.Is(err, context.Canceled):
			log.Warn("leader's service was cancelled while leading: running it again", zap.Duration("in", restart))
		default:
			log.Error("leader's service failed: running it again", zap.Error(err), zap.Duration("in", restart))
		}
		t := time.NewTimer(restart)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// stop cancels r's services and waits until every one has returned.
func (g *Group) stop(r *running, why string) {
	r.cancel()
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	t := time.NewTicker(joinReport)
	defer t.Stop()
	for {
		select {
		case <-done:
			g.logger.Info("the leader's services stopped", zap.Uint64(logging.KeyTerm, r.term), zap.String("reason", why))
			return
		case <-t.C:
			r.mu.Lock()
			left := slices.Sorted(maps.Keys(r.left))
			r.mu.Unlock()
			g.logger.Warn("waiting for the leader's services to stop before leading again", zap.Strings("services", left))
		}
	}
}

// Campaign runs the elector and the group together until ctx ends, the
// group following the elector's leadership (Campaign sets el.OnChange to
// g.Lead). On a stop the group's services are joined first, while the
// elector still renews the lease that fences their last writes, and only
// then does the elector stop and resign: a follower never takes over
// while this replica's services still act.
func Campaign(ctx context.Context, el *Elector, g *Group) error {
	el.OnChange = g.Lead
	// The elector's context keeps ctx's values (the stop deadline its
	// resign uses), not its end.
	ectx, stopElector := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElector()
	elected := make(chan error, 1)
	go func() { elected <- el.Run(ectx) }()
	err := g.Run(ctx)
	stopElector()
	return errors.Join(err, <-elected)
}
