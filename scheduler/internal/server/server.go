package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/common/view"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/certs"
	"github.com/berthhq/berth/scheduler/internal/console"
	"github.com/berthhq/berth/scheduler/internal/controller"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/ejection"
	"github.com/berthhq/berth/scheduler/internal/fleet"
	"github.com/berthhq/berth/scheduler/internal/healthcheck"
	"github.com/berthhq/berth/scheduler/internal/hosts"
	"github.com/berthhq/berth/scheduler/internal/image"
	"github.com/berthhq/berth/scheduler/internal/leader"
	"github.com/berthhq/berth/scheduler/internal/logs"
	"github.com/berthhq/berth/scheduler/internal/nodekeys"
	"github.com/berthhq/berth/scheduler/internal/publish"
	"github.com/berthhq/berth/scheduler/internal/retention"
	"github.com/berthhq/berth/scheduler/internal/scaler"
	"github.com/berthhq/berth/scheduler/internal/secret"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// replica is one scheduler replica's parts, built by Run.
type replica struct {
	cfg     Config
	names   msg.Names
	logger  *zap.Logger
	secrets *secret.Box
	// live feeds the web console's browsers with events.
	live    *console.Hub
	st      *store.Store
	nats    *natsSide
	nodeDir *bus.NodeDirectory // nil without Berth's role credentials
	reg     *prometheus.Registry
	// events prunes the old events while this replica leads; nil keeps
	// every one.
	events *retention.Events

	el   *leader.Elector
	lead *leader.Group
	// checks are the docker and exec health checks (leader only).
	checks *healthcheck.Checker
	pub    *publish.Publisher

	dk        *docker.Client
	fl        *fleet.Fleet
	images    *image.Resolver
	healthTbl *view.Table[*msg.Health]
	agentsTbl *view.Table[*msg.Agent]
	// ejections records the lbagents' outlier ejections as events (leader).
	ejections *ejection.Recorder
	ctl       *controller.Controller
	sc        *scaler.Scaler
	cm        *certs.Manager      // nil without ACME
	nk        *nodekeys.Publisher // nil without a credentials directory

	keys    *auth.Keyring
	httpSrv *http.Server
	apiLn   net.Listener

	// changes carries the names of the apps that changed to the publish
	// loop; refresh asks it to publish everything (notifications may have
	// been lost); hostsChanged wakes the recording of the hosts' states.
	changes      chan string
	refresh      chan struct{}
	hostsChanged chan struct{}
}

// Run runs one scheduler replica until ctx ends.
func Run(ctx context.Context, cfg Config, logger *zap.Logger) error {
	names, err := msg.NewNames(cfg.Prefix)
	if err != nil {
		return fmt.Errorf("prefix: %w", err)
	}
	logger = logger.With(zap.String("replica", cfg.ID))
	r := &replica{cfg: cfg, names: names, logger: logger, secrets: secret.New(cfg.Secrets, logger),
		changes: make(chan string, 256), refresh: make(chan struct{}, 1), hostsChanged: make(chan struct{}, 1)}
	if r.st, err = openStore(ctx, cfg, r.secrets, logger); err != nil {
		return err
	}
	defer r.st.Close()
	if r.nats, err = openNATS(ctx, cfg.NATS, cfg.ID, names, logger); err != nil {
		return err
	}
	defer r.nats.close()
	defer func() {
		if r.dk != nil {
			r.dk.Close()
		}
	}()
	if err := r.build(); err != nil {
		return err
	}
	err = r.run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// openStore opens Postgres, migrating it with cfg.Migrate (and sealing
// every env secret again with the current key), or checking that its
// schema is current.
func openStore(ctx context.Context, cfg Config, secrets *secret.Box, logger *zap.Logger) (*store.Store, error) {
	st, err := store.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	st.SetHistoryKeep(cfg.HistoryKeep)
	if err := prepare(ctx, st, cfg, secrets, logger); err != nil {
		st.Close()
		return nil, err
	}
	if cfg.Secrets != nil {
		logger.Info("env secrets are sealed in Postgres", zap.String("secret_key_id", cfg.Secrets.ID()))
	}
	if cfg.HistoryKeep > 0 {
		logger.Info("spec history is pruned as generations are written", zap.Int("history_keep", cfg.HistoryKeep))
	}
	return st, nil
}

func prepare(ctx context.Context, st *store.Store, cfg Config, secrets *secret.Box, logger *zap.Logger) error {
	if !cfg.Migrate {
		return st.CheckSchema(ctx)
	}
	s, err := st.Migrate(ctx)
	if err != nil {
		return err
	}
	logger.Info("database migrated", zap.Int32("version", s.Current))
	if cfg.Secrets == nil {
		return nil
	}
	// A value that does not open stays as it is: it is reported, and
	// stops nothing (scheduler migrate exits 1 on it instead).
	rep, err := st.Reseal(ctx, secrets)
	if err != nil {
		logger.Warn("some stored env secrets do not open and were left as they are: give the keys that sealed them as --secret-old-key-file",
			zap.Error(err))
	}
	logger.Info("env secrets sealed under the current key", zap.String("secret_key_id", cfg.Secrets.ID()), zap.Int("values", rep.Values), zap.Int("specs", rep.Specs))
	return nil
}

// build makes every part; nothing runs yet.
func (r *replica) build() error {
	conn := r.nats.conn
	// The node-key directory: which lbagent node keys seal which node's
	// records, and whom certificate keys are sealed to.
	nodeDir, err := bus.NewNodeDirectory(conn, r.names, r.logger)
	if err != nil {
		r.logger.Info("no node-key directory: without Berth's role credentials nothing is sealed or checked", zap.Error(err))
	} else {
		r.nodeDir = nodeDir
	}
	r.reg = prometheus.NewRegistry()
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_scheduler_unsealed_messages_total", Help: "NATS values and messages dropped because their owner had not sealed them: forgeries (docs/nats.md, Sealed records)."},
			func() float64 { return float64(conn.Forged()) }))
	r.el = leader.New(r.st, LeaseName(r.cfg.Prefix), r.cfg.ID, r.cfg.LeaseTTL, r.logger)
	r.lead = leader.NewGroup(r.logger)
	r.pub = publish.New(r.st, conn, r.names, r.logger)
	if err := r.buildDataPlane(); err != nil {
		return err
	}
	if r.cfg.ACME != nil {
		cm, err := certManager(*r.cfg.ACME, r.cfg.Resync, r.st, conn, r.names, r.pub, r.el.Leader, servedBy(r.agentsTbl), r.logger)
		if err != nil {
			return err
		}
		r.cm = cm
		r.reg.MustRegister(cm.Collectors()...)
	}
	if dir := r.nats.nodeCredentials; dir != "" {
		r.nk = nodeKeys(r.cfg.Resync, conn, r.names, dir, r.leading, r.nats.setUsers, r.logger)
		r.reg.MustRegister(r.nk.Collectors()...)
	}
	return r.buildAPI()
}

// buildDataPlane makes the Docker engines, the health and lbagent tables,
// the controller and the scaler.
func (r *replica) buildDataPlane() error {
	c := r.cfg.Containers
	auths, err := docker.LoadRegistryAuths(c.RegistryAuthFile)
	if err != nil {
		return err
	}
	// The local engine is the scheduler's own: it keeps every credential.
	r.dk, err = docker.New(docker.Options{Prefix: r.cfg.Prefix, PublishAddress: c.PublishAddress, Network: c.Network, NetworkPrefixes: c.NetworkPrefixes,
		Allowed: hosts.Policy{}.CheckIP, RegistryAuths: auths, LogMaxSize: c.LogMaxSize, LogMaxFiles: c.LogMaxFiles}, r.logger)
	if err != nil {
		return err
	}
	// Every registered host's engine as one; the local engine alone while
	// none is registered.
	r.fl = fleet.New(fleet.Config{Timeout: r.cfg.Hosts.Timeout}, r.st, fleet.DockerDial(fleet.DialOptions{Prefix: r.cfg.Prefix, Network: c.Network,
		NetworkPrefixes: c.NetworkPrefixes, Policy: r.cfg.Hosts.Policy, Auths: auths, LogMaxSize: c.LogMaxSize, LogMaxFiles: c.LogMaxFiles}, r.logger), r.dk, r.logger)
	r.reg.MustRegister(r.fl.Collectors()...)
	// Every replica pins at apply: the registry with the scheduler's
	// credentials, and its own fleet's view of the engines.
	r.images = &image.Resolver{Timeout: c.ResolveTimeout, Engines: r.fl, Credentials: auths}
	// A host that changes state wakes the controller (a host down: its
	// instances are replaced at once), and the leader records it.
	r.fl.Changed = func(string, string) {
		r.ctl.Wake()
		signal(r.hostsChanged)
	}
	r.healthTbl = view.NewTable(view.NoTerm[*msg.Health], func() { r.ctl.Wake() })
	// The docker and exec health checks: the leader runs them, as it alone
	// holds the Docker API, and seals their health itself.
	r.checks = healthcheck.New(healthcheck.Config{ExecsPerHost: c.ExecChecksPerHost, Refresh: r.cfg.Resync, Report: checkEvents{r}}, r.fl,
		&healthcheck.BusSink{Conn: r.nats.conn, Names: r.names}, r.logger)
	r.agentsTbl = view.NewTable(view.NoTerm[*msg.Agent], func() {
		r.ctl.AgentsChanged()
		r.ejections.Wake()
	})
	r.ejections = ejection.New(func() map[string]*msg.Agent { rows, _ := r.agentsTbl.Rows(); return rows }, r.pub, r.el.Leader, r.logger)
	r.ctl = controller.New(controller.Config{MaxParallel: c.MaxParallel, Resync: r.cfg.Resync, PullTimeout: c.PullTimeout, StartTimeout: c.StartTimeout,
		StopTimeout: c.StopTimeout, DefaultCPU: c.DefaultCPU, DefaultMemory: c.DefaultMemory, Env: c.Env, Environ: c.Environ, Secrets: r.secrets},
		controller.Deps{Desired: r.st, Records: r.pub, Routing: r.pub, Releases: r.pub, Containers: r.fl, Runtime: r.fl, Images: r.fl, Logs: r.fl, Hosts: r.fl, Lease: r.el.Leader,
			Checks: r.checks, Health: r.healthTbl, Agents: r.agentsTbl},
		r.logger)
	r.reg.MustRegister(r.ctl.Collectors()...)
	a := r.cfg.Autoscale
	r.sc = scaler.New(scaler.Config{Interval: a.Interval, StatsInterval: a.StatsInterval, StatsParallel: a.StatsParallel, DefaultCPU: c.DefaultCPU},
		r.st, r.fl, r.nats.conn, r.pub, r.names, r.el.Leader, r.ctl.Wake, r.logger)
	r.reg.MustRegister(r.sc.Collectors()...)
	if r.cfg.EventsKeep > 0 {
		r.events = retention.NewEvents(r.st, r.cfg.EventsKeep, r.logger)
		r.reg.MustRegister(r.events.Collectors()...)
		r.logger.Info("events older than --events-keep are deleted every hour by the leader", zap.Duration("events_keep", r.cfg.EventsKeep))
	}
	return nil
}

// buildAPI makes the API: scoped tokens from Postgres, and the
// configured token as the bootstrap admin.
func (r *replica) buildAPI() error {
	a, c := r.cfg.API, r.cfg.Containers
	r.keys = auth.NewKeyring(r.st, auth.Config{Bootstrap: a.Token}, r.logger)
	r.reg.MustRegister(r.keys.Collectors()...)
	isLeader := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_scheduler_is_leader", Help: "1 while this replica leads."},
		func() float64 {
			if _, ok := r.el.Leader(); ok {
				return 1
			}
			return 0
		})
	term := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_scheduler_leader_term", Help: "Lease term of this replica's leadership, 0 when following."},
		func() float64 { l, _ := r.el.Leader(); return float64(l.Term) })
	r.reg.MustRegister(isLeader, term)
	st := r.st
	deps := api.Deps{Apps: st, Changes: st, Events: st, Decisions: st, DB: st, Claims: st, Hosts: api.HostRegistry{HostStore: st, Policy: r.cfg.Hosts.Policy},
		History: st, Tokens: st, Certificates: st}
	apiOpts := api.Options{Keyring: r.keys, Open: a.Open, Metrics: promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{}), Samples: r.sc.Samples, Traffic: trafficOf(r.sc), Ejected: ejectedBy(r.agentsTbl),
		Role: func() (bool, uint64) { l, ok := r.el.Leader(); return ok, l.Term }, Network: c.Network, MaxRoutes: a.MaxRoutes, ACME: r.cm != nil,
		DefaultCPU: c.DefaultCPU, DefaultMemory: c.DefaultMemory, Secrets: r.secrets, SpecHash: r.ctl.SpecHash,
		LogLimits: api.LogLimits{DefaultSize: c.LogMaxSize, DefaultFiles: c.LogMaxFiles, MaxTotal: c.LogMaxTotal},
		Logs:      &logs.Reader{Instances: st, Engines: r.fl}, Resolve: r.images.Resolve,
		Health: func(app, inst string) (*msg.Health, bool) { return r.healthTbl.Get(app + "." + inst) },
		Agents: agentsOf(r.agentsTbl), InstancesRevision: instancesRevision(r.nats.conn, r.names.InstancesBucket())}
	if r.cfg.ACME != nil {
		apiOpts.RenewBefore = r.cfg.ACME.RenewBefore
	}
	handler := api.New(deps, apiOpts, r.logger)
	r.live = console.NewHub()
	ui, err := console.New(console.Options{Keyring: r.keys, API: handler, Live: r.live, Registerer: r.reg}, r.logger)
	if err != nil {
		return fmt.Errorf("build the web console: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ui/", ui)
	mux.Handle("/", handler)
	r.httpSrv = &http.Server{Addr: a.Listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second, MaxHeaderBytes: 64 << 10,
		ErrorLog: zap.NewStdLog(r.logger.Named("api-http"))} // TLS handshake failures, among others
	r.apiLn, err = APIListener(a)
	return err
}

// leading reports whether this replica leads.
func (r *replica) leading() bool {
	_, ok := r.el.Leader()
	return ok
}

// wakeCerts makes the certificate manager look again, if there is one.
func (r *replica) wakeCerts() {
	if r.cm != nil {
		r.cm.Wake()
	}
}

// repairCerts makes the certificate manager put every certificate again,
// if there is one.
func (r *replica) repairCerts() {
	if r.cm != nil {
		r.cm.Repair()
	}
}

// signal sends on a channel of one that may be full already.
func signal(c chan<- struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// trafficOf shows the scaler's merged last windows of an app in the API.
func trafficOf(sc *scaler.Scaler) func(app string, now time.Time) (api.TrafficView, bool) {
	return func(app string, now time.Time) (api.TrafficView, bool) {
		t, ok := sc.Traffic(app, now)
		if !ok {
			return api.TrafficView{}, false
		}
		return api.TrafficView{RPS: t.RPS, ErrorRate: t.ErrorRate(), P95MS: t.P95MS, Requests: t.Requests, Nodes: t.Nodes,
			Window: spec.Duration(t.Window), At: t.At.UTC()}, true
	}
}
