package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// SummaryView is what GET /v1/apps?summary=true adds to each app, beside
// observed_replicas, lost_replicas, rollout, breaker and traffic, which
// it fills as GET /v1/apps/{name} does.
type SummaryView struct {
	// ReadyReplicas are the desired spec's instances that run and are
	// healthy: those the rollout counts as serving it (RolloutView).
	ReadyReplicas int `json:"ready_replicas"`
	// Health tallies the health of the observed replicas (running, on a
	// host not down): the three counts sum to observed_replicas.
	Health HealthTally `json:"health"`
	// LastEvent is the app's newest event; absent when it has none.
	LastEvent *LastEventView `json:"last_event,omitempty"`
}

// HealthTally counts instances by the health the leader last recorded.
type HealthTally struct {
	Healthy   int `json:"healthy"`
	Unhealthy int `json:"unhealthy"`
	// Unknown are those not probed yet, or whose health is not known.
	Unknown int `json:"unknown"`
}

// String says the tally as the CLI and the console show it, the counts
// that are not 0 alone: "2 healthy, 1 unhealthy"; "-" when all are 0.
func (h HealthTally) String() string {
	var parts []string
	for _, c := range []struct {
		n    int
		what string
	}{{h.Healthy, msg.StatusHealthy}, {h.Unhealthy, msg.StatusUnhealthy}, {h.Unknown, msg.StatusUnknown}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

// LastEventView is an app's newest event, in short: GET /v1/events has it
// whole.
type LastEventView struct {
	ID      int64         `json:"id"`
	Kind    msg.EventKind `json:"kind"`
	Message string        `json:"message"`
	At      time.Time     `json:"at"`
}

// rolloutEventsPerKind is how many of each app's newest events of each
// of rolloutKinds the summary reads: the desired generation's are the
// newest of their kinds, and the rest are skipped.
const rolloutEventsPerKind = 4

// SummariesFunc returns every app that is not deleted, by name, each as
// GET /v1/apps?summary=true shows it: read with five queries whatever the
// number of apps. It is safe to call concurrently.
type SummariesFunc func(ctx context.Context, now time.Time) ([]AppView, error)

// Summaries returns the SummariesFunc of the API that d and o make: the
// web console's overview shows every app by one call of it.
func Summaries(d Deps, o Options) SummariesFunc {
	a := &api{d: d, o: o}
	return func(ctx context.Context, now time.Time) ([]AppView, error) {
		apps, err := d.Apps.List(ctx)
		if err != nil {
			return nil, err
		}
		return a.summaries(ctx, apps, now)
	}
}

// summaries summarises apps, every app that is not deleted. It reads the
// instances, the hosts and the events of them all with one query each.
func (a *api) summaries(ctx context.Context, apps []store.App, now time.Time) ([]AppView, error) {
	const name = "" // every app's rows
	insts, err := a.d.Apps.Instances(ctx, name)
	if err != nil {
		return nil, err
	}
	byApp := groupByApp(insts)
	hs, err := a.d.Hosts.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	down := downHosts(hs)
	evs, err := a.d.Events.RolloutEventsByApp(ctx, name, rolloutKinds, rolloutEventsPerKind)
	if err != nil {
		return nil, err
	}
	last, err := a.d.Events.LastEventByApp(ctx, name)
	if err != nil {
		return nil, err
	}
	out := make([]AppView, 0, len(apps))
	for _, app := range apps {
		v := view(app, false)
		r := countReplicas(app, byApp[app.Name], a.desiredHash(app), down, false)
		v.ObservedReplicas, v.LostReplicas = r.observed, r.lost
		v.Rollout, v.Breaker = decideRollout(app, r, evs[app.Name], now)
		if a.o.Traffic != nil {
			if t, ok := a.o.Traffic(app.Name, now); ok {
				v.Traffic = &t
			}
		}
		s := &SummaryView{ReadyReplicas: r.ready, Health: HealthTally{Healthy: r.healthy, Unhealthy: r.unhealthy, Unknown: r.unknown}}
		if e, ok := last[app.Name]; ok {
			s.LastEvent = &LastEventView{ID: e.ID, Kind: e.Kind, Message: e.Message, At: e.At}
		}
		v.Summary = s
		out = append(out, v)
	}
	return out, nil
}

// list answers GET /v1/apps: every app, by name; with ?summary=true each
// with its replicas, rollout, health, traffic and last event.
func (a *api) list(w http.ResponseWriter, r *http.Request) {
	summary := false
	switch q := r.URL.Query().Get("summary"); q {
	case "", "false":
	case "true":
		summary = true
	default:
		a.fail(w, spec.Errors{{Path: "summary", Message: fmt.Sprintf("%q must be true or false", q)}})
		return
	}
	apps, err := a.d.Apps.List(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	if summary {
		out, err := a.summaries(r.Context(), apps, time.Now())
		if err != nil {
			a.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	out := make([]AppView, 0, len(apps))
	for _, app := range apps {
		out = append(out, view(app, false))
	}
	writeJSON(w, http.StatusOK, out)
}

// groupByApp groups insts by app, in their order, in one backing array:
// appending each app's to a slice of its own copied and grew them over
// again (a fifth of the summary's time at 10,000 apps).
func groupByApp(insts []store.Instance) map[string][]store.Instance {
	counts := map[string]int{}
	for i := range insts {
		counts[insts[i].App]++
	}
	backing := make([]store.Instance, len(insts))
	out := make(map[string][]store.Instance, len(counts))
	off := 0
	for app, n := range counts {
		out[app] = backing[off : off : off+n]
		off += n
	}
	for i := range insts {
		out[insts[i].App] = append(out[insts[i].App], insts[i])
	}
	return out
}

// desiredHash is the hash of app's desired spec as its instances carry
// it; "" when the API has no SpecHash (instances are then told apart by
// generation).
func (a *api) desiredHash(app store.App) string {
	if a.o.SpecHash == nil || app.Spec == nil {
		return ""
	}
	return a.o.SpecHash(app)
}

// downHosts says which of hs are recorded down.
func downHosts(hs []store.Host) map[string]bool {
	down := map[string]bool{}
	for _, h := range hs {
		down[h.Name] = h.State == store.HostDown
	}
	return down
}
