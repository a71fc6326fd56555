// Package api is the scheduler's HTTP API: apply (or plan, changing
// nothing), inspect, scale, roll back and delete apps, read their history,
// list instances and events, stream apps' logs, register hosts, manage API
// tokens, show the lbagents (edge) and the ACME certificates, and the
// health, readiness and metrics endpoints. Every replica
// serves it, since writes go to Postgres. Every /v1/ route is registered
// with the token scope it needs (auth.Read, Deploy or Admin), and every
// change it makes is recorded as made by the token's name. Errors are JSON
// and name the field and what is allowed.
package api

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/autoscale"
	"github.com/berthhq/berth/scheduler/internal/image"
	"github.com/berthhq/berth/scheduler/internal/secret"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// MaxBody caps a request body.
const MaxBody = spec.MaxSpecSize

// AppReader reads the desired state of apps and their instances: GET of
// apps, instances and metrics. Its methods are called concurrently, one
// per request, in no particular order; errors wrapping store.ErrNotFound
// answer 404 and store.ErrUnavailable 503.
type AppReader interface {
	Get(ctx context.Context, name string) (store.App, error)
	List(ctx context.Context) ([]store.App, error)
	Instances(ctx context.Context, app string) ([]store.Instance, error)
}

// AppWriter changes the desired state of apps, each call in a transaction
// of its own: PUT, DELETE, scale and rollback. Its methods are called
// concurrently, also for the same app; the store serialises them.
type AppWriter interface {
	// ApplyPinned stores a spec with its image pinned to ref ("": not
	// pinned); seal seals its env secrets in the transaction.
	ApplyPinned(ctx context.Context, a *spec.App, ref string, seal store.Sealer) (store.App, bool, error)
	Scale(ctx context.Context, name string, replicas int) (store.App, error)
	Rollback(ctx context.Context, name string) (store.App, error)
	// RollbackTo makes an earlier generation's spec the app's again.
	RollbackTo(ctx context.Context, name string, generation int64) (store.App, error)
	// Restart makes a new generation of the same spec that replaces every
	// instance.
	Restart(ctx context.Context, name string) (store.App, error)
	// Redeploy makes a new generation of the same spec pinned to ref, if
	// the app is still at generation and ref differs (changed).
	Redeploy(ctx context.Context, name string, generation int64, ref string) (store.App, bool, error)
	Delete(ctx context.Context, name string) error
}

// HistoryReader reads an app's spec history for GET
// /v1/apps/{name}/history and /history/{generation}. Called concurrently.
type HistoryReader interface {
	History(ctx context.Context, name string, limit int) ([]store.Revision, error)
	// Generation returns one kept generation and the kept one before it;
	// an error wrapping store.ErrNoGeneration when it is not kept.
	Generation(ctx context.Context, name string, gen int64) (store.Revision, *store.Revision, error)
	// Images returns the image of each of an app's kept generations asked
	// for (those not kept are absent).
	Images(ctx context.Context, name string, generations []int64) (map[int64]string, error)
}

// EventReader reads the event log for GET /v1/events. Called concurrently.
type EventReader interface {
	Events(ctx context.Context, app string, after int64, limit int) ([]store.Event, error)
	// LatestEvents returns an app's newest events of some kinds, newest first.
	LatestEvents(ctx context.Context, app string, kinds []msg.EventKind, limit int) ([]store.Event, error)
	// LastEvents returns the newest events (of app, or all), oldest first.
	LastEvents(ctx context.Context, app string, limit int) ([]store.Event, error)
	// LastEventByApp and RolloutEventsByApp read, for every app (or app
	// alone), its newest event, and its newest events of some kinds at its
	// generation (newest first), each in one query: the summary of every
	// app costs the same queries for 10 apps as for 10,000.
	LastEventByApp(ctx context.Context, app string) (map[string]store.Event, error)
	RolloutEventsByApp(ctx context.Context, app string, kinds []msg.EventKind, perKind int) (map[string][]store.Event, error)
}

// DecisionReader reads an app's autoscaling decisions for its metrics.
// Called concurrently.
type DecisionReader interface {
	Decisions(ctx context.Context, app string, since time.Time, limit int) ([]store.Decision, error)
}

// Pinger checks that the database answers, for /readyz. Called concurrently.
type Pinger interface {
	Ping(ctx context.Context) error
}

var (
	_ AppReader      = (*store.Store)(nil)
	_ AppWriter      = (*store.Store)(nil)
	_ EventReader    = (*store.Store)(nil)
	_ HistoryReader  = (*store.Store)(nil)
	_ DecisionReader = (*store.Store)(nil)
	_ Pinger         = (*store.Store)(nil)
)

// Deps are what the API reads and writes through; every field must be
// set. The scheduler gives its *store.Store for each.
type Deps struct {
	Apps      AppReader
	Changes   AppWriter
	Events    EventReader
	Decisions DecisionReader
	DB        Pinger
	Claims    ClaimReader
	Hosts     HostStore
	History   HistoryReader
	Tokens    TokenStore
	// Certificates reads the ACME certificates, without their keys.
	Certificates CertificateReader
}

// UnavailableMessage is the error of every answer (503) given while
// Postgres cannot be reached.
const UnavailableMessage = "postgres is unreachable: check that Postgres is running and that the scheduler's " +
	"--database-url (BERTH_SCHEDULER_DATABASE_URL) points at it, then retry"

// Options configure the API.
type Options struct {
	// Keyring checks the bearer token ("Authorization: Bearer <token>")
	// that every /v1/ route requires; nil knows no token.
	Keyring *auth.Keyring
	// Open lets a request without an Authorization header act as
	// store.ActorAnonymous with the admin scope: for an API on loopback
	// without --api-token-file (development). A request with a token is
	// checked and scoped all the same.
	Open bool
	// Role reports whether this replica leads and under which term; nil
	// reports a follower. It is called concurrently.
	Role func() (leader bool, term uint64)
	// Metrics serves /metrics; nil serves 404.
	Metrics http.Handler
	// Samples returns an autoscaled app's samples in its window; nil
	// serves none.
	Samples func(app string, now time.Time) ([]autoscale.Traffic, []autoscale.Usage, autoscale.Policy, bool)
	// Traffic returns an app's traffic over every lbagent's last window,
	// for any app; ok is false when no lbagent reported it lately. nil
	// shows none.
	Traffic func(app string, now time.Time) (TrafficView, bool)
	// Ejected returns the instances of an app that live lbagents have
	// ejected for failing real traffic (health.outlier) at now; nil
	// shows none.
	Ejected func(app string, now time.Time) []EjectionView
	// Network is the scheduler's --network. Without one, containers are
	// reached on the host port published for their app port alone, so a
	// health.port other than port could only be probed on the host
	// itself: such a spec is refused.
	Network string
	// MaxRoutes caps the routes of every app together (spec.Routing.Routes):
	// every nginx renders them all. 0: no cap.
	MaxRoutes int
	// ACME says whether this scheduler orders certificates (--acme-directory):
	// without it, routing.tls.acme is refused at apply.
	ACME bool
	// DefaultCPU (cores) and DefaultMemory (bytes) are what an instance of
	// an app that sets no limit reserves on its host.
	DefaultCPU    float64
	DefaultMemory int64
	// Secrets seals the env secrets of applied specs (--secret-key-file);
	// nil refuses every spec with a secret, naming the flag.
	Secrets store.Sealer
	// LogLimits cap the log an app's container may keep on its host.
	LogLimits LogLimits
	// SpecHash is the hash of an app's container-relevant spec, as its
	// instances carry it: status tells the desired spec's instances from
	// the others by it. nil: by generation alone.
	SpecHash func(store.App) string
	// Logs reads apps' logs from their hosts' engines; nil answers 503.
	Logs LogStreamer
	// Resolve pins a spec's image (image.Resolver.Resolve), on whichever
	// replica takes the request; nil pins nothing (and redeploy answers
	// 503).
	Resolve func(ctx context.Context, image string) (image.Pin, error)
	// Health returns the health value healthd last published for an
	// instance (the replica's view of the health bucket), for GET of one
	// instance; nil shows none. It is called concurrently.
	Health func(app, instance string) (*msg.Health, bool)
	// Agents returns the lbagents' records as this replica's watch of the
	// agents bucket holds them (a record outlives its TTL there: the edge
	// view shows it stale), for GET /v1/edge; nil shows none. It is called
	// concurrently; the records are read, never changed.
	Agents func() []*msg.Agent
	// InstancesRevision returns the newest revision of the instances
	// bucket (NATS), which each lbagent's lag counts from; nil, or an
	// error, shows no lag. It is called concurrently.
	InstancesRevision func(ctx context.Context) (uint64, error)
	// RenewBefore is --acme-renew-before: a certificate that close to
	// expiry shows as renewing. 0 shows none so.
	RenewBefore time.Duration
}

// New returns the API handler.
func New(d Deps, o Options, logger *zap.Logger) http.Handler {
	if o.Secrets == nil {
		o.Secrets = secret.New(nil, logger)
	}
	a := &api{d: d, o: o, logger: logger.Named("api")}
	rt := &router{mux: http.NewServeMux(), guard: a.guard}
	a.register(rt)
	return rt.mux
}

// Routes lists every route of the API with the scope it needs.
func Routes() []Route {
	a := &api{logger: zap.NewNop()}
	rt := &router{mux: http.NewServeMux(), guard: a.guard}
	a.register(rt)
	return rt.routes
}

// register adds every route: each /v1/ route with the scope it needs.
func (a *api) register(rt *router) {
	rt.handleApp("PUT /v1/apps/{name}", auth.Deploy, a.apply)
	rt.handle("GET /v1/apps", auth.Read, a.list)
	rt.handle("GET /v1/apps/{name}", auth.Read, a.get)
	rt.handleApp("DELETE /v1/apps/{name}", auth.Deploy, a.delete)
	rt.handleApp("POST /v1/apps/{name}/scale", auth.Deploy, a.scale)
	rt.handleApp("POST /v1/apps/{name}/rollback", auth.Deploy, a.rollback)
	rt.handleApp("POST /v1/apps/{name}/restart", auth.Deploy, a.restart)
	rt.handleApp("POST /v1/apps/{name}/redeploy", auth.Deploy, a.redeploy)
	// A plan is checked as an apply is, so it needs what an apply needs.
	rt.handleApp("POST /v1/apps/{name}/plan", auth.Deploy, a.plan)
	rt.handle("GET /v1/apps/{name}/instances", auth.Read, a.instances)
	rt.handle("GET /v1/apps/{name}/instances/{id}", auth.Read, a.instance)
	rt.handle("GET /v1/apps/{name}/metrics", auth.Read, a.metrics)
	rt.handle("GET /v1/apps/{name}/history", auth.Read, a.history)
	rt.handle("GET /v1/apps/{name}/wait", auth.Read, a.wait)
	rt.handle("GET /v1/apps/{name}/history/{generation}", auth.Read, a.generation)
	// A deploy token limited to some apps reads only their logs.
	rt.handleApp("GET /v1/apps/{name}/logs", auth.Read, a.logs)
	rt.handle("GET /v1/events", auth.Read, a.events)
	rt.handle("GET /v1/edge", auth.Read, a.edge)
	rt.handle("GET /v1/certificates", auth.Read, a.certificates)
	a.registerHosts(rt)
	a.registerTokens(rt)
	rt.public("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	rt.public("GET /readyz", a.ready)
	rt.public("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if a.o.Metrics == nil {
			http.NotFound(w, r)
			return
		}
		a.o.Metrics.ServeHTTP(w, r)
	})
}

type api struct {
	d      Deps
	o      Options
	logger *zap.Logger
}

// LogLimits are the scheduler's log limits (--log-max-size,
// --log-max-files, --log-max-total).
type LogLimits struct {
	DefaultSize  spec.LogSize
	DefaultFiles int
	// MaxTotal caps max_size × max_files of a container (the defaults for
	// what a spec leaves out); 0: no cap.
	MaxTotal int64
}

// check refuses a spec whose containers would keep more log than the cap:
// two teams share the hosts, and one may not fill their disks.
func (l LogLimits) check(app *spec.App) error {
	if l.MaxTotal <= 0 || app.Logging.IsZero() {
		return nil
	}
	size, files := cmp.Or(app.Logging.MaxSize, l.DefaultSize), cmp.Or(app.Logging.MaxFiles, l.DefaultFiles)
	if total := int64(size) * int64(files); total > l.MaxTotal {
		return spec.Errors{{Path: "logging", Message: fmt.Sprintf("max_size %s × max_files %d keeps up to %s of log per container; this scheduler allows %s (--log-max-total)",
			size, files, spec.LogSize(total), spec.LogSize(l.MaxTotal))}}
	}
	return nil
}

// Error is the JSON body of every error response.
type Error struct {
	Error  string            `json:"error"`
	Fields []spec.FieldError `json:"fields,omitempty"`
	// NeededScope and TokenScope are set on a 403: the scope the route
	// needs, and the scope of the token that was refused.
	NeededScope string `json:"needed_scope,omitempty"`
	TokenScope  string `json:"token_scope,omitempty"`
}

// AppView is an app as the API shows it: its env secrets read
// spec.RedactedValue.
type AppView struct {
	Name            string `json:"name"`
	Generation      int64  `json:"generation"`
	Status          string `json:"status"`
	DesiredReplicas int    `json:"desired_replicas"`
	// ObservedReplicas are the instances recorded running, except on a
	// host recorded down; only on GET of one app (and with ?summary=true).
	ObservedReplicas int `json:"observed_replicas"`
	// LostReplicas are the instances lost with their host (down, or
	// unreachable with their container dead), whose records are kept
	// while they may still run there; only on GET of one app (and with
	// ?summary=true).
	LostReplicas int       `json:"lost_replicas,omitempty"`
	Spec         *spec.App `json:"spec,omitempty"`
	// ImageRef is what every host runs for this generation: the spec's
	// image pinned to repo@sha256:… or to an image ID sha256:…; absent
	// when not pinned. PreviousImageRef is the one before the last change.
	ImageRef         string `json:"image_ref,omitempty"`
	PreviousImageRef string `json:"previous_image_ref,omitempty"`
	// ImageNote, on an apply or redeploy, says how the image was pinned,
	// or why it was not.
	ImageNote string `json:"image_note,omitempty"`
	Changed   *bool  `json:"changed,omitempty"`
	// Conflicts are the routes the app does not get (spec.Claims), each
	// saying why; only on GET of one app.
	Conflicts []string  `json:"conflicts,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
	// UpdatedBy made the last change: a token's name, or the scheduler or
	// its autoscaler.
	UpdatedBy string `json:"updated_by,omitempty"`
	// Rollout is the state of the desired generation, Serving what
	// actually serves (running and healthy, by spec), Breaker an open
	// restart breaker, and Failures the latest failure of each instance
	// that failed, newest first; only on GET of one app (Rollout and
	// Breaker also with ?summary=true).
	Rollout  *RolloutView  `json:"rollout,omitempty"`
	Serving  []ServingView `json:"serving,omitempty"`
	Breaker  *BreakerView  `json:"breaker,omitempty"`
	Failures []FailureView `json:"failures,omitempty"`

	// Traffic is what nginx served the app over each lbagent's last
	// window; only on GET of one app (and with ?summary=true), absent when
	// no lbagent reported it lately.
	Traffic *TrafficView `json:"traffic,omitempty"`
	// Ejected are the app's instances that lbagents took out of their
	// nginx's rotation for failing real traffic (health.outlier), one
	// entry per lbagent and instance; only on GET of one app.
	Ejected []EjectionView `json:"ejected,omitempty"`
	// Summary is the app's ready replicas, health tally and last event;
	// only on GET /v1/apps?summary=true, which also fills
	// ObservedReplicas, LostReplicas, Rollout, Breaker and Traffic.
	Summary *SummaryView `json:"summary,omitempty"`
}

// EjectionView is one instance one lbagent ejected (health.outlier).
type EjectionView struct {
	Node     string    `json:"node"`
	Instance string    `json:"instance"`
	Reason   string    `json:"reason"`
	Since    time.Time `json:"since"`
	Until    time.Time `json:"until"`
	Times    int       `json:"times"`
}

// TrafficView is an app's traffic over the last window of every lbagent
// that reported it lately (docs/scheduler.md).
type TrafficView struct {
	// RPS sums the lbagents' request rates.
	RPS float64 `json:"rps"`
	// ErrorRate is the share of 5xx answers, 0 to 1.
	ErrorRate float64 `json:"error_rate"`
	// P95MS is the 95th percentile upstream response time over every
	// lbagent's window merged; 0 when no request reached an instance.
	P95MS float64 `json:"p95_ms"`
	// Requests counts the requests of those windows.
	Requests int64 `json:"requests"`
	// Nodes is the lbagents whose window counts.
	Nodes int `json:"nodes"`
	// Window is the longest of their windows; At, when the latest ended.
	Window spec.Duration `json:"window"`
	At     time.Time     `json:"at"`
}

func view(a store.App, withSpec bool) AppView {
	v := AppView{Name: a.Name, Generation: a.Generation, Status: a.Status, DesiredReplicas: a.DesiredReplicas, UpdatedAt: a.UpdatedAt, UpdatedBy: a.UpdatedBy,
		ImageRef: a.ImageRef, PreviousImageRef: a.PreviousImageRef}
	if withSpec && a.Spec != nil {
		v.Spec = a.Spec.Redacted()
	}
	return v
}

func (a *api) apply(w http.ResponseWriter, r *http.Request) {
	app, ok := a.checked(w, r)
	if !ok {
		return
	}
	pin, err := a.pin(r.Context(), app)
	if err != nil {
		a.fail(w, err)
		return
	}
	stored, changed, err := a.d.Changes.ApplyPinned(r.Context(), app, pin.Ref, a.o.Secrets)
	if err != nil {
		a.fail(w, err)
		return
	}
	v := view(stored, false)
	v.Changed = &changed
	v.ImageNote = pinNote(app.Image, pin, stored.ImageRef)
	writeJSON(w, http.StatusOK, v)
}

// checked reads and checks the spec in the body of an apply (or a plan)
// of the app the URL names, as apply checks it: the spec, what this
// scheduler allows, and the route table. It answers the error and
// returns false when the spec is refused.
func (a *api) checked(w http.ResponseWriter, r *http.Request) (*spec.App, bool) {
	name := r.PathValue("name")
	body, ok := readBody(w, r)
	if !ok {
		return nil, false
	}
	app, err := spec.Load(body)
	if err == nil && app.Name != name {
		err = spec.Errors{{Path: "name", Message: fmt.Sprintf("%q must match the app in the URL (%q)", app.Name, name)}}
	}
	if err == nil && a.o.Network == "" && app.Health != nil && app.Health.Port != 0 && app.Health.Port != app.Port {
		err = spec.Errors{{Path: "health.port", Message: fmt.Sprintf(
			"%d differs from port (%d): this scheduler publishes only the app's port on the host (no --network), so no other port of the instance is reachable; check port %d, or run the scheduler with --network",
			app.Health.Port, app.Port, app.Port)}}
	}
	if err == nil && !a.o.ACME && app.Routing.TLS != nil && app.Routing.TLS.ACME {
		err = spec.Errors{{Path: "routing.tls.acme", Message: "this scheduler orders no certificates: start it with --acme-directory (and --cert-key-file), or use self_signed or certificate files"}}
	}
	if err == nil {
		err = a.o.LogLimits.check(app)
	}
	if err == nil {
		err = a.checkTenancy(r.Context(), app)
	}
	if err != nil {
		a.fail(w, err)
		return nil, false
	}
	return app, true
}

// checkRoutes refuses app when its routes would bring every app's
// together (the locations of each nginx) past MaxRoutes. Apps that were
// applied before the cap, or under a higher one, stay; only growth is
// refused. apps holds app's stored self, if any (its routes before).
func (a *api) checkRoutes(ctx context.Context, app *spec.App, apps []store.App) error {
	before := 0
	for _, o := range apps {
		if o.Name == app.Name && o.Spec != nil {
			before = o.Spec.Routing.Routes()
		}
	}
	if app.Routing.Routes() <= before {
		return nil
	}
	others, err := a.d.Claims.RoutesBesides(ctx, app.Name)
	if err != nil {
		return err
	}
	if total := others + app.Routing.Routes(); total > a.o.MaxRoutes {
		return spec.Errors{{Path: "routing", Message: fmt.Sprintf(
			"its %d routes would bring the routes of every app to %d, which each nginx renders as locations; this scheduler allows at most %d (--max-routes)",
			app.Routing.Routes(), total, a.o.MaxRoutes)}}
	}
	return nil
}

func (a *api) get(w http.ResponseWriter, r *http.Request) {
	v, err := a.status(r.Context(), r.PathValue("name"), time.Now())
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// status is an app's whole status, as GET /v1/apps/{name} shows it to the
// caller of ctx (failures' last lines only to a caller who may read the
// app's logs).
func (a *api) status(ctx context.Context, name string, now time.Time) (AppView, error) {
	app, err := a.d.Apps.Get(ctx, name)
	if err != nil {
		return AppView{}, err
	}
	insts, err := a.d.Apps.Instances(ctx, app.Name)
	if err != nil {
		return AppView{}, err
	}
	v := view(app, true)
	if v.Conflicts, err = a.conflicts(ctx, app); err != nil {
		return AppView{}, err
	}
	hs, err := a.d.Hosts.Hosts(ctx)
	if err != nil {
		return AppView{}, err
	}
	r := countReplicas(app, insts, a.desiredHash(app), downHosts(hs), true)
	v.ObservedReplicas, v.LostReplicas = r.observed, r.lost
	if err := a.rollout(ctx, &v, app, r, mayReadLogs(ctx, app.Name), now); err != nil {
		return AppView{}, err
	}
	if a.o.Traffic != nil {
		if t, ok := a.o.Traffic(app.Name, now); ok {
			v.Traffic = &t
		}
	}
	if a.o.Ejected != nil {
		v.Ejected = a.o.Ejected(app.Name, now)
	}
	return v, nil
}

func (a *api) delete(w http.ResponseWriter, r *http.Request) {
	if err := a.d.Changes.Delete(r.Context(), r.PathValue("name")); err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"name": r.PathValue("name"), "deleted": true})
}

// ScaleRequest is the body of POST /v1/apps/{name}/scale.
type ScaleRequest struct {
	Replicas *int `json:"replicas"`
}

func (a *api) scale(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var req ScaleRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.Replicas == nil {
		a.fail(w, spec.Errors{{Path: "replicas", Message: "must be given as a whole number, e.g. {\"replicas\": 3}"}})
		return
	}
	app, err := a.d.Changes.Scale(r.Context(), r.PathValue("name"), *req.Replicas)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, view(app, false))
}

// restart rolls every instance of an app with the same spec, as a new
// generation (the rolling update's rules apply).
func (a *api) restart(w http.ResponseWriter, r *http.Request) {
	app, err := a.d.Changes.Restart(r.Context(), r.PathValue("name"))
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, view(app, true))
}

// RollbackRequest is the body of POST /v1/apps/{name}/rollback, which may
// be empty: then the newest earlier spec that differs comes back.
type RollbackRequest struct {
	// To is the generation whose spec comes back (scheduler history).
	To *int64 `json:"to,omitempty"`
}

func (a *api) rollback(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var req RollbackRequest
	if len(strings.TrimSpace(string(body))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || (req.To != nil && *req.To < 1) {
			a.fail(w, spec.Errors{{Path: "to", Message: "must be a generation of the app (a whole number from 1), e.g. {\"to\": 3}: scheduler history APP lists them"}})
			return
		}
	}
	var app store.App
	var err error
	if req.To != nil {
		app, err = a.d.Changes.RollbackTo(r.Context(), r.PathValue("name"), *req.To)
	} else {
		app, err = a.d.Changes.Rollback(r.Context(), r.PathValue("name"))
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, view(app, true))
}

// InstanceView is an instance as the API shows it.
type InstanceView struct {
	ID          string    `json:"id"`
	Generation  int64     `json:"generation"`
	State       string    `json:"state"`
	Health      string    `json:"health"`
	Address     string    `json:"address,omitempty"`
	Host        string    `json:"host,omitempty"`
	ContainerID string    `json:"container_id,omitempty"`
	Restarts    int       `json:"restarts"`
	CreatedAt   time.Time `json:"created_at"`
	// Desired says whether it runs the app's desired spec: its spec hash
	// is the desired one's (an instance of an earlier generation with
	// the same spec, as after a rollback to it, is); by generation where
	// the hash is not known.
	Desired bool `json:"desired"`
}

func (a *api) instances(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	app, err := a.d.Apps.Get(r.Context(), name)
	if err != nil {
		a.fail(w, err)
		return
	}
	insts, err := a.d.Apps.Instances(r.Context(), name)
	if err != nil {
		a.fail(w, err)
		return
	}
	out := make([]InstanceView, 0, len(insts))
	hash := a.desiredHash(app)
	for _, i := range insts {
		out = append(out, InstanceView{ID: i.ID, Generation: i.Generation, State: i.State, Health: i.Health, Address: i.Address, Host: i.Host,
			ContainerID: i.ContainerID, Restarts: i.Restarts, CreatedAt: i.CreatedAt, Desired: hash == "" && i.Generation == app.Generation || hash != "" && i.SpecHash == hash})
	}
	writeJSON(w, http.StatusOK, out)
}

// MetricsView is an app's autoscaling state: its policy, the samples in
// its window and its recent decisions (oldest first; the last one carries
// the current value of each metric against its target).
type MetricsView struct {
	App             string           `json:"app"`
	Autoscaled      bool             `json:"autoscaled"`
	DesiredReplicas int              `json:"desired_replicas"`
	Scaling         *spec.Scaling    `json:"scaling,omitempty"`
	Traffic         []TrafficSample  `json:"traffic"`
	Usage           []UsageSample    `json:"usage"`
	Decisions       []store.Decision `json:"decisions"`
}

// TrafficSample is one lbagent's window of the app's traffic.
type TrafficSample struct {
	Node     string    `json:"node"`
	At       time.Time `json:"at"`
	RPS      float64   `json:"rps"`
	Requests int64     `json:"requests"`
	P95MS    float64   `json:"p95_ms"`
}

// UsageSample is one CPU and memory reading of an instance.
type UsageSample struct {
	Instance      string    `json:"instance"`
	At            time.Time `json:"at"`
	CPUPercent    float64   `json:"cpu_percent"`
	MemoryPercent float64   `json:"memory_percent"`
}

// MaxDecisions caps ?decisions= of GET /v1/apps/{name}/metrics.
const MaxDecisions = 1000

func (a *api) metrics(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	app, err := a.d.Apps.Get(r.Context(), name)
	if err != nil {
		a.fail(w, err)
		return
	}
	limit := 20
	if v := r.URL.Query().Get("decisions"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxDecisions {
			writeJSON(w, http.StatusBadRequest, Error{Error: fmt.Sprintf("decisions: %q must be a whole number from 0 to %d", v, MaxDecisions)})
			return
		}
		limit = n
	}
	out := MetricsView{App: name, DesiredReplicas: app.DesiredReplicas, Traffic: []TrafficSample{}, Usage: []UsageSample{}, Decisions: []store.Decision{}}
	if app.Spec != nil && app.Spec.Scaling != nil {
		s := *app.Spec
		s.Default()
		out.Autoscaled, out.Scaling = true, s.Scaling
	}
	if out.Autoscaled && a.o.Samples != nil {
		traffic, usage, _, _ := a.o.Samples(name, time.Now())
		for _, t := range traffic {
			ts := TrafficSample{Node: t.Node, At: t.At, RPS: t.RPS}
			if t.Latency != nil {
				ts.P95MS = t.Latency.Quantile(0.95)
				ts.Requests = int64(t.Latency.Count())
			}
			out.Traffic = append(out.Traffic, ts)
		}
		for _, u := range usage {
			out.Usage = append(out.Usage, UsageSample{Instance: u.Instance, At: u.At, CPUPercent: u.CPUPercent, MemoryPercent: u.MemoryPercent})
		}
	}
	if limit > 0 {
		ds, err := a.d.Decisions.Decisions(r.Context(), name, time.Time{}, limit)
		if err != nil {
			a.fail(w, err)
			return
		}
		out.Decisions = append(out.Decisions, ds...)
	}
	writeJSON(w, http.StatusOK, out)
}

// MaxEvents caps the events of one GET /v1/events: the oldest after
// ?since= (page on with the last id), or the newest ?last=.
const MaxEvents = 500

// EventView is an event as the API shows it.
type EventView struct {
	ID       int64             `json:"id"`
	App      string            `json:"app"`
	Instance string            `json:"instance,omitempty"`
	Kind     msg.EventKind     `json:"kind"`
	Message  string            `json:"message"`
	Details  map[string]string `json:"details,omitempty"`
	// Actor made it happen: a token's name, or the scheduler on its own
	// ("scheduler", "autoscaler"); empty for events from before actors
	// were recorded.
	Actor string    `json:"actor,omitempty"`
	Term  uint64    `json:"term"`
	At    time.Time `json:"at"`
	// LogTail is the last lines of a failed instance's container
	// (instance_exited, rollout_rolled_back, rollout_failed): kept in
	// Postgres for this view only, never published on NATS.
	LogTail []string `json:"log_tail,omitempty"`
}

func (a *api) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after int64
	if s := q.Get("since"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			a.fail(w, spec.Errors{{Path: "since", Message: fmt.Sprintf("%q must be an event id (a whole number >= 0)", s)}})
			return
		}
		after = v
	}
	if app := q.Get("app"); app != "" {
		if err := spec.CheckName(app); err != nil {
			a.fail(w, spec.Errors{{Path: "app", Message: err.Error()}})
			return
		}
	}
	var evs []store.Event
	var err error
	if v := q.Get("last"); v != "" {
		// The newest n, oldest first: what an operator asks first.
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > MaxEvents || q.Get("since") != "" {
			a.fail(w, spec.Errors{{Path: "last", Message: fmt.Sprintf("%q must be a whole number from 1 to %d, without since", v, MaxEvents)}})
			return
		}
		evs, err = a.d.Events.LastEvents(r.Context(), q.Get("app"), n)
	} else {
		evs, err = a.d.Events.Events(r.Context(), q.Get("app"), after, MaxEvents)
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	out := make([]EventView, 0, len(evs))
	for _, e := range evs {
		v := EventView{ID: e.ID, App: e.App, Instance: e.Instance, Kind: e.Kind, Message: e.Message, Details: e.Details, Actor: e.Actor, Term: e.Term, At: e.At}
		if mayReadLogs(r.Context(), e.App) {
			v.LogTail = e.LogTail
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, out)
}

// Readiness is the body of /readyz.
type Readiness struct {
	Ready bool   `json:"ready"`
	Role  string `json:"role"`
	Term  uint64 `json:"term,omitempty"`
	Error string `json:"error,omitempty"`
}

func (a *api) ready(w http.ResponseWriter, r *http.Request) {
	rd := Readiness{Ready: true, Role: "follower"}
	if a.o.Role != nil {
		if leader, term := a.o.Role(); leader {
			rd.Role, rd.Term = "leader", term
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := a.d.DB.Ping(ctx); err != nil {
		a.logger.Warn("not ready", zap.Error(err))
		rd.Ready, rd.Error = false, UnavailableMessage
		if !errors.Is(err, store.ErrUnavailable) {
			rd.Error = "postgres refused the scheduler; see the scheduler's log"
		}
		writeJSON(w, http.StatusServiceUnavailable, rd)
		return
	}
	writeJSON(w, http.StatusOK, rd)
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeJSON(w, http.StatusRequestEntityTooLarge, Error{Error: fmt.Sprintf("request body is over %d bytes", MaxBody)})
		return nil, false
	case err != nil:
		writeJSON(w, http.StatusBadRequest, Error{Error: "could not read the request body"})
		return nil, false
	}
	return body, true
}

// fail maps an error to its status and JSON body; an unreachable Postgres
// and unexpected errors are logged and answered without their details,
// which could name the database.
func (a *api) fail(w http.ResponseWriter, err error) {
	var fields spec.Errors
	switch {
	case errors.As(err, &fields):
		writeJSON(w, http.StatusBadRequest, Error{Error: "invalid spec", Fields: fields})
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrTokenNotFound):
		writeJSON(w, http.StatusNotFound, Error{Error: err.Error()})
	case errors.Is(err, errUnresolved):
		writeJSON(w, http.StatusBadGateway, Error{Error: err.Error()})
	case errors.Is(err, store.ErrAutoscaled), errors.Is(err, store.ErrNoHistory), errors.Is(err, store.ErrHostInUse), errors.Is(err, store.ErrTokenExists),
		errors.Is(err, store.ErrChanged), errors.Is(err, image.ErrAmbiguous):
		writeJSON(w, http.StatusConflict, Error{Error: err.Error()})
	case errors.Is(err, store.ErrUnavailable):
		a.logger.Warn("postgres unreachable", zap.Error(err))
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: UnavailableMessage})
	default:
		a.logger.Error("request failed", zap.Error(err))
		writeJSON(w, http.StatusInternalServerError, Error{Error: "internal error; see the scheduler's log"})
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
