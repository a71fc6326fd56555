package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/cmdline"
	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/common/view"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/appenv"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/certs"
	"github.com/berthhq/berth/scheduler/internal/controller"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/fleet"
	"github.com/berthhq/berth/scheduler/internal/hosts"
	"github.com/berthhq/berth/scheduler/internal/leader"
	"github.com/berthhq/berth/scheduler/internal/nodekeys"
	"github.com/berthhq/berth/scheduler/internal/publish"
	"github.com/berthhq/berth/scheduler/internal/scaler"
	"github.com/berthhq/berth/scheduler/internal/secret"
	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/berthhq/berth/scheduler/internal/vault"
)

// leaseName is the one lease all scheduler replicas of a prefix compete for.
func leaseName(prefix string) string { return prefix + "-scheduler" }

func run(args []string, stdout, stderr *os.File) int {
	c, kctx, code, done := parse(args, stdout, stderr)
	if done {
		return code
	}
	ctx, logger, stop, err := cmdline.Start(stderr, c.LogLevel, c.LogFormat)
	if err != nil {
		fmt.Fprintf(stderr, "scheduler: %v\n", err)
		return exitUsage
	}
	defer stop()

	if command, ok := strings.CutPrefix(kctx.Command(), "nats-key "); ok {
		return natsKey(&c.NATSKey, command, stdout, stderr)
	}
	switch kctx.Command() {
	case "check-config":
		if err := c.CheckConfig.check(); err != nil {
			return cmdline.Invalid(stderr, "scheduler", err, true)
		}
		fmt.Fprintln(stdout, "scheduler: configuration is valid")
		return exitOK
	case "run":
		if err := c.Run.check(); err != nil {
			return cmdline.Invalid(stderr, "scheduler", err, false)
		}
		if err := serve(ctx, &c.Run, logger); err != nil {
			logger.Error("scheduler stopped", zap.Error(err))
			return exitFailed
		}
		return exitOK
	case "migrate", "migrate <action>":
		return migrate(ctx, &c.Migrate, stdout, stderr, logger)
	case "nats-credential <role>":
		return natsCredential(&c.NATSCredential, stdout, stderr)
	case "nats-config":
		return natsConfig(&c.NATSConfig, stdout, stderr)
	}
	return runClient(ctx, c, kctx.Command(), stdout, stderr)
}

// credentialsDir is where the embedded NATS keeps its role credentials.
func credentialsDir(dataDir string) string { return filepath.Join(dataDir, "nats-credentials") }

// natsCredential prints one role's credential, or one lbagent node's,
// creating the credentials (and the node's key) on first use.
func natsCredential(c *natsCredentialCmd, stdout, stderr *os.File) int {
	dir := credentialsDir(c.DataDir)
	var creds *bus.Credentials
	var err error
	switch {
	case c.Node != "" && c.Role != bus.RoleLBAgent:
		fmt.Fprintf(stderr, "scheduler: --node %s: only lbagent has keys per node, not %s\n", c.Node, c.Role)
		return exitUsage
	case c.Node != "":
		if err = msg.CheckToken(c.Node); err != nil {
			fmt.Fprintf(stderr, "scheduler: --node: %v (the lbagent's --node)\n", err)
			return exitUsage
		}
		creds, err = bus.AddNode(dir, c.Node)
	default:
		creds, err = bus.OpenCredentials(dir)
	}
	var file []byte
	var path string
	if err == nil {
		file, path, err = creds.File(c.Role, c.Node)
	}
	if err != nil {
		fmt.Fprintf(stderr, "scheduler: %v\n", err)
		return exitFailed
	}
	if c.Node != "" {
		fmt.Fprintf(stderr, "scheduler: the credential of lbagent node %s (%s, with the roles' public keys): its lbagent writes only this node's record "+
			"and opens the certificate keys sealed to it. Keep it mode 0600 and pass it as that lbagent's --nats-nkey. The scheduler with the embedded NATS "+
			"accepts it, and publishes it in the node-key directory, within 2 s; %s, and give the scheduler --nats-credentials %s\n", c.Node, path, externalNATS, dir)
	} else {
		fmt.Fprintf(stderr, "scheduler: the %s credential (%s, with the roles' public keys); keep it mode 0600 and pass it as the daemon's --nats-nkey\n", c.Role, path)
	}
	_, _ = stdout.Write(file)
	return exitOK
}

// natsConfig prints a nats-server config with every role's user.
func natsConfig(c *natsConfigCmd, stdout, stderr *os.File) int {
	names, err := msg.NewNames(c.Prefix)
	if err != nil {
		return cmdline.Invalid(stderr, "scheduler", fmt.Errorf("--prefix: %w", err), false)
	}
	creds, err := bus.OpenCredentials(credentialsDir(c.DataDir))
	if err == nil {
		var conf string
		if conf, err = creds.ServerConfig(names); err == nil {
			if c.Out == "" {
				fmt.Fprint(stdout, conf)
				return exitOK
			}
			if err = os.WriteFile(c.Out, []byte(conf), 0o644); err == nil {
				fmt.Fprintf(stderr, "scheduler: wrote %s; the role credentials are in %s\n", c.Out, credentialsDir(c.DataDir))
				return exitOK
			}
		}
	}
	fmt.Fprintf(stderr, "scheduler: %v\n", err)
	return exitFailed
}

func migrate(ctx context.Context, m *migrateCmd, stdout, stderr *os.File, logger *zap.Logger) int {
	ring, err := m.ring()
	if err != nil {
		return cmdline.Invalid(stderr, "scheduler", err, false)
	}
	st, err := store.Open(ctx, m.DatabaseURL)
	if err != nil {
		fmt.Fprintf(stderr, "scheduler: %v\n", err)
		return exitFailed
	}
	defer st.Close()
	var s store.SchemaStatus
	if m.Action == "status" {
		s, err = st.Status(ctx)
	} else {
		s, err = st.Migrate(ctx)
	}
	if err != nil {
		fmt.Fprintf(stderr, "scheduler: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "schema version %d of %d\n", s.Current, s.Latest)
	if m.Action == "up" && ring != nil {
		rep, err := st.Reseal(ctx, secret.New(ring, logger))
		fmt.Fprintf(stdout, "secrets: %d values sealed again in %d stored specs of %d apps; every secret that opened is now under key id %s\n",
			rep.Values, rep.Specs, rep.Apps, ring.ID())
		if err != nil {
			fmt.Fprintf(stderr, "scheduler: some secrets were left as they are: %v\n"+
				"give the keys that sealed them as --secret-old-key-file and run scheduler migrate again\n", err)
			return exitFailed
		}
	}
	return exitOK
}

// serve runs one scheduler replica until ctx ends.
func serve(ctx context.Context, r *runCmd, logger *zap.Logger) error {
	// Fail closed: never serve without the token or certificate given.
	if (r.APITokenFile != "" && r.apiToken == "") || (r.APITLSCert != "" && r.apiCert == nil) {
		return errors.New("--api-token-file or --api-tls-cert was not read: check run's flags (runCmd.check) before serve")
	}
	id := r.id()
	logger = logger.With(zap.String("replica", id))
	names, _ := msg.NewNames(r.Prefix)
	ring, err := r.ring()
	if err != nil {
		return err
	}
	secrets := secret.New(ring, logger)
	st, err := store.Open(ctx, r.DatabaseURL)
	if err != nil {
		return err
	}
	defer st.Close()
	if r.Migrate {
		s, err := st.Migrate(ctx)
		if err != nil {
			return err
		}
		logger.Info("database migrated", zap.Int32("version", s.Current))
		if ring != nil {
			// A value that does not open stays as it is: it is reported,
			// and stops nothing (scheduler migrate exits 1 on it instead).
			rep, err := st.Reseal(ctx, secrets)
			if err != nil {
				logger.Warn("some stored env secrets do not open and were left as they are: give the keys that sealed them as --secret-old-key-file",
					zap.Error(err))
			}
			logger.Info("env secrets sealed under the current key", zap.String("secret_key_id", ring.ID()), zap.Int("values", rep.Values), zap.Int("specs", rep.Specs))
		}
	} else if err := st.CheckSchema(ctx); err != nil {
		return err
	}
	if ring != nil {
		logger.Info("env secrets are sealed in Postgres", zap.String("secret_key_id", ring.ID()))
	}

	natsURL := r.NATS.URL
	flags := r.NATS
	credsDir := r.NATSCreds // whose node keys the leader publishes
	var setUsers func(*bus.Credentials) error
	if natsURL == "" {
		host, port, _ := splitHostPort(r.NATSListen)
		eo := bus.EmbeddedOptions{Host: host, Port: port, StoreDir: r.DataDir, ConfigFile: r.NATSConfig}
		if r.NATSConfig == "" {
			// Auth on by default: one credential per role, made on first
			// start, and one per lbagent node that has its own.
			dir := credentialsDir(r.DataDir)
			creds, err := bus.OpenCredentials(dir)
			if err != nil {
				return fmt.Errorf("embedded NATS credentials: %w", err)
			}
			if eo.Users, err = creds.Users(names); err != nil {
				return fmt.Errorf("embedded NATS credentials: %w", err)
			}
			if flags.NKeyFile == "" && flags.CredsFile == "" && flags.TokenFile == "" {
				flags.NKeyFile = creds.Seeds()[bus.RoleScheduler]
			}
			if credsDir == "" {
				credsDir = dir
			}
			logger.Info("embedded NATS requires a role credential of every client", zap.String("credentials", dir),
				zap.String("give_another_daemon", "scheduler nats-credential <healthd|lbagent|reader> > seed.nk, then its --nats-nkey seed.nk"),
				zap.String("give_an_lbagent_its_own_key", "scheduler nats-credential lbagent --node <node> > node.nk"))
		}
		srv, err := bus.Embedded(eo, logger)
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		if len(eo.Users) > 0 {
			setUsers = func(c *bus.Credentials) error {
				users, err := c.Users(names)
				if err != nil {
					return err
				}
				return srv.SetUsers(users)
			}
		}
		natsURL = srv.URL()
		logger.Info("embedded NATS started", zap.String("url", natsURL))
	}
	flags.URL = natsURL
	conn, err := flags.Connect(ctx, "scheduler-"+id, names, logger)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.EnsureBuckets(ctx, bus.MustOwnedBuckets(names, bus.RoleScheduler)); err != nil {
		logger.Warn("could not ensure buckets yet", zap.Error(err))
	}
	// The node-key directory: which lbagent node keys seal which node's
	// records, and whom certificate keys are sealed to.
	nodeDir, err := bus.NewNodeDirectory(conn, names, logger)
	if err != nil {
		logger.Info("no node-key directory: without Berth's role credentials nothing is sealed or checked", zap.Error(err))
	}

	reg := prometheus.NewRegistry()
	isLeader := prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_scheduler_is_leader", Help: "1 while this replica leads."})
	term := prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_scheduler_leader_term", Help: "Lease term of this replica's leadership, 0 when following."})
	reg.MustRegister(isLeader, term, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_scheduler_unsealed_messages_total", Help: "NATS values and messages dropped because their owner had not sealed them: forgeries (docs/nats.md, Sealed records)."},
			func() float64 { return float64(conn.Forged()) }))

	var ctl *controller.Controller
	var cm *certs.Manager  // with --acme-directory
	var hostsGained func() // records every host's state on gaining leadership
	var nodesGained func() // publishes the node-key directory on gaining leadership
	wakeCtl := func() {
		if ctl != nil {
			ctl.Wake()
		}
	}
	gained := make(chan struct{}, 1)
	changes := make(chan string, 256)
	el := leader.New(st, leaseName(r.Prefix), id, r.LeaseTTL, logger)
	el.OnChange = func(l store.Lease, ok bool) {
		if ok {
			wakeCtl()
			if cm != nil {
				cm.Wake()
			}
			if hostsGained != nil {
				go hostsGained() // what this replica saw of the hosts while following
			}
			if nodesGained != nil {
				nodesGained()
			}
			isLeader.Set(1)
			term.Set(float64(l.Term))
			select {
			case gained <- struct{}{}:
			default:
			}
		} else {
			isLeader.Set(0)
			term.Set(0)
		}
	}
	leading := el.Leader
	pub := publish.New(st, conn, names, logger)

	// The data plane: Docker, health and agents, and the controller.
	auths, err := docker.LoadRegistryAuths(r.RegistryAuth)
	if err != nil {
		return err
	}
	prefixes, err := r.networkPrefixes()
	if err != nil {
		return err
	}
	// The local engine is the scheduler's own: it keeps every credential.
	dk, err := docker.New(docker.Options{Prefix: r.Prefix, PublishAddress: r.PublishAddress, Network: r.Network, NetworkPrefixes: prefixes,
		Allowed: hosts.Policy{}.CheckIP, RegistryAuths: auths}, logger)
	if err != nil {
		return err
	}
	defer dk.Close()
	// Every registered host's engine as one; the local engine alone while
	// none is registered.
	fl := fleet.New(fleet.Config{Timeout: r.HostTimeout}, st, fleet.DockerDial(fleet.DialOptions{Prefix: r.Prefix, Network: r.Network,
		NetworkPrefixes: prefixes, Policy: r.hostPolicy(), Auths: auths}, logger), dk, logger)
	reg.MustRegister(fl.Collectors()...)
	mem, _ := spec.ParseByteSize(r.DefaultMemory)
	healthTbl := view.NewTable(view.NoTerm[*msg.Health], wakeCtl)
	agentsTbl := view.NewTable(view.NoTerm[*msg.Agent], func() {
		if ctl != nil {
			ctl.AgentsChanged()
		}
	})
	ctl = controller.New(controller.Config{MaxParallel: r.MaxParallel, Resync: r.Resync, PullTimeout: r.PullTimeout, StartTimeout: r.StartTimeout, StopTimeout: r.StopTimeout,
		DefaultCPU: r.DefaultCPU, DefaultMemory: int64(mem), Env: appenv.Policy{Prefix: r.AppEnvPrefix, Block: r.AppEnvBlock}, Environ: os.Environ(),
		Secrets: secrets},
		controller.Deps{Desired: st, Records: pub, Routing: pub, Containers: fl, Runtime: fl, Images: fl, Hosts: fl, Lease: el.Leader, Health: healthTbl, Agents: agentsTbl},
		logger)
	reg.MustRegister(ctl.Collectors()...)
	sc := scaler.New(scaler.Config{Interval: r.AutoscaleInterval, StatsInterval: r.StatsInterval, StatsParallel: r.StatsParallel, DefaultCPU: r.DefaultCPU},
		st, fl, conn, pub, names, el.Leader, ctl.Wake, logger)
	reg.MustRegister(sc.Collectors()...)

	// Certificates: with --acme-directory, the leader orders and renews
	// them for apps with routing.tls.acme.
	if r.ACMEDirectory != "" {
		if cm, err = certManager(r, st, conn, names, pub, el.Leader, servedBy(agentsTbl), logger); err != nil {
			return err
		}
		reg.MustRegister(cm.Collectors()...)
	}
	wakeCerts := func() {
		if cm != nil {
			cm.Wake()
		}
	}

	// The API: scoped tokens from Postgres, and --api-token-file's as
	// the bootstrap admin, read once by check.
	apiHost, _, _ := net.SplitHostPort(r.APIListen)
	keys := auth.NewKeyring(st, auth.Config{Bootstrap: r.apiToken}, logger)
	reg.MustRegister(keys.Collectors()...)
	handler := api.New(api.Deps{Apps: st, Changes: st, Events: st, Decisions: st, DB: st, Hosts: api.HostRegistry{HostStore: st, Policy: r.hostPolicy()}, History: st, Tokens: st},
		api.Options{Keyring: keys, Open: r.APITokenFile == "" && loopback(apiHost), Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), Samples: sc.Samples,
			Role: func() (bool, uint64) { l, ok := leading(); return ok, l.Term }, Network: r.Network, MaxRoutes: r.MaxRoutes, ACME: cm != nil, DefaultCPU: r.DefaultCPU, DefaultMemory: int64(mem), Secrets: secrets}, logger)
	httpSrv := &http.Server{Addr: r.APIListen, Handler: handler, ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second, MaxHeaderBytes: 64 << 10,
		ErrorLog: zap.NewStdLog(logger.Named("api-http"))} // TLS handshake failures, among others
	apiLn, err := r.apiListener()
	if err != nil {
		return err
	}

	group := lifecycle.NewGroup(logger, 15*time.Second)
	// A host that changes state wakes the controller (a host down: its
	// instances are replaced at once), and the leader records it.
	recordHosts := func() {
		l, ok := leading()
		if !ok {
			return
		}
		now := time.Now()
		if err := st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
			var errs []error
			fl.Each(func(host, state, reason string, lastOK time.Time) {
				errs = append(errs, tx.SetHostState(ctx, host, state, reason, now, lastOK))
			})
			return errors.Join(errs...)
		}); err != nil {
			logger.Warn("could not record the hosts' states", zap.Error(err))
		}
	}
	fl.Changed = func(string, string) {
		wakeCtl()
		recordHosts()
	}
	hostsGained = recordHosts
	group.Add("fleet", fl)
	group.Add("leader", el)
	group.Add("listen", lifecycle.Func(func(ctx context.Context) error {
		return st.Listen(ctx, []string{store.LeaseChannel, store.AppsChannel, store.HostsChannel, store.TokensChannel}, func(ch, payload string) {
			switch {
			case ch == store.LeaseChannel:
				el.Wake()
			case ch == store.TokensChannel: // a token made or revoked (or notifications lost)
				keys.Changed()
			case ch == store.HostsChannel:
				if err := fl.Sync(ctx); err != nil {
					logger.Warn("could not read the host registry", zap.Error(err))
				}
				wakeCtl()
			case payload == "": // reconnected: notifications may be lost
				select {
				case gained <- struct{}{}:
				default:
				}
			default:
				wakeCtl()
				wakeCerts()
				select {
				case changes <- payload:
				default: // a full queue: the resync catches up
				}
			}
		})
	}))
	group.Add("watch-health", bus.NewWatcher(conn, names.HealthBucket(), bus.Message[*msg.Health], healthTbl.Handler(), logger))
	// lbagent never deletes its record (it expires, and drains age it by
	// its updated_at): a delete can only come from another NATS client, and
	// believing it would let a drain skip an nginx that still routes.
	agents := view.KeepOnDelete(agentsTbl.Handler(), func(key string) {
		logger.Warn("ignored the delete of an lbagent's record: lbagents never delete theirs", zap.String("node", key))
	})
	group.Add("watch-agents", bus.NewWatcher(conn, names.AgentsBucket(), bus.Message[*msg.Agent], agents, logger))
	group.Add("controller", ctl)
	group.Add("scaler", sc)
	group.Add("publish", lifecycle.Func(func(ctx context.Context) error {
		return pub.Loop(ctx, leading, gained, changes, r.Resync)
	}))
	group.Add("publish-guard", lifecycle.Func(func(ctx context.Context) error {
		return pub.Guard(ctx, leading, publish.BusWatch(conn, logger))
	}))
	if cm != nil {
		group.Add("certificates", lifecycle.Func(cm.Run))
		group.Add("certificates-guard", lifecycle.Func(func(ctx context.Context) error {
			return publish.BusWatch(conn, logger)(ctx, names.CertificatesBucket(), func(key string) {
				logger.Warn("a certificate the scheduler had not sealed: putting every certificate again", zap.String("key", key))
				cm.Repair()
			})
		}))
	}
	if nodeDir != nil {
		nodeDir.OnChange = wakeCertsRepair(&cm)
		group.Add("node-directory", nodeDir)
	}
	if credsDir != "" {
		nk := nodeKeys(r, conn, names, credsDir, func() bool { _, ok := leading(); return ok }, setUsers, logger)
		reg.MustRegister(nk.Collectors()...)
		nodesGained = nk.Repair
		group.Add("node-keys", nk)
		group.Add("node-keys-guard", lifecycle.Func(func(ctx context.Context) error {
			return publish.BusWatch(conn, logger)(ctx, names.NodesBucket(), func(key string) {
				logger.Warn("a node-key directory entry the scheduler had not sealed: publishing the directory again", zap.String("node", key))
				nk.Repair()
			})
		}))
	}
	group.Add("api-tokens", lifecycle.Func(keys.Run))
	group.Add("api", lifecycle.Serve(httpSrv, apiLn))
	logger.Info("scheduler started", zap.String("api", r.APIListen), zap.Bool("api_tls", r.apiCert != nil),
		zap.Bool("api_open_without_token", r.APITokenFile == "" && loopback(apiHost)), zap.String("database", store.Redact(r.DatabaseURL)))
	err = group.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// apiListener listens on --api-listen, with TLS when check read
// --api-tls-cert and --api-tls-key.
func (r *runCmd) apiListener() (net.Listener, error) {
	ln, err := net.Listen("tcp", r.APIListen)
	if err != nil {
		return nil, fmt.Errorf("--api-listen %s: %w", r.APIListen, err)
	}
	if r.apiCert != nil {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*r.apiCert}, MinVersion: tls.VersionTLS12})
	}
	return ln, nil
}

// certManager builds the certificate manager of --acme-directory.
func certManager(r *runCmd, st *store.Store, conn *bus.Conn, names msg.Names, pub *publish.Publisher, leader func() (store.Lease, bool), served certs.Served, logger *zap.Logger) (*certs.Manager, error) {
	keys, err := vault.Load(r.CertKeyFile, "--cert-key-file")
	if err != nil {
		return nil, err
	}
	client, err := certs.HTTPClient(r.ACMECAFile)
	if err != nil {
		return nil, err
	}
	// The keys go to the lbagents sealed to their role's keys (and each
	// node's): without Berth's role credentials there is nothing to seal to.
	if _, err := conn.Keys().SealTo(bus.RoleLBAgent, []byte("probe")); err != nil {
		return nil, fmt.Errorf("--acme-directory needs Berth's role credentials (--nats-nkey with the roles' trust lines, or the embedded NATS), "+
			"so that certificate keys reach the lbagents only: %w", err)
	}
	shelf := &certs.BusShelf{Conn: conn, Names: names, Logger: logger, Settle: 250 * time.Millisecond}
	issuer := &certs.ACME{Directory: r.ACMEDirectory, Email: r.ACMEEmail, HTTP: client, Vault: keys, Accounts: st, Solver: shelf, Logger: logger}
	logger.Info("ordering certificates for apps with routing.tls.acme", zap.String("directory", r.ACMEDirectory), zap.String("cert_key_id", keys.ID()))
	return certs.New(certs.Config{RenewBefore: r.ACMERenewBefore, Resync: r.Resync, Served: served, OrdersPerHour: r.ACMEOrdersPerHour},
		st, pub, issuer, shelf, keys, leader, logger), nil
}

// nodeScan is how often the scheduler reads its NATS credentials directory
// again: how soon a new lbagent node, or a key rotation step, takes effect.
const nodeScan = 2 * time.Second

// nodeKeys builds the publisher of the node-key directory from the
// credentials in dir, which also gives the embedded NATS its users
// (setUsers, nil without one).
func nodeKeys(r *runCmd, conn *bus.Conn, names msg.Names, dir string, leading func() bool, setUsers func(*bus.Credentials) error, logger *zap.Logger) *nodekeys.Publisher {
	deps := nodekeys.Deps{
		Read:    func() (*bus.Credentials, error) { return bus.ReadCredentials(dir) },
		Leading: leading,
		Users:   setUsers,
		Open: func(ctx context.Context) (nodekeys.Bucket, error) {
			kv, err := conn.KV(ctx, names.NodesBucket())
			if errors.Is(err, bus.ErrBucketNotFound) {
				if err := conn.EnsureBuckets(ctx, bus.MustOwnedBuckets(names, bus.RoleScheduler)); err != nil {
					return nil, err
				}
				kv, err = conn.KV(ctx, names.NodesBucket())
			}
			return kv, err
		},
	}
	return nodekeys.New(nodekeys.Config{Scan: nodeScan, Resync: r.Resync}, deps, logger)
}

// wakeCertsRepair returns what to do when a node's keys change: seal every
// certificate key again, to the directory's keys as they are now.
func wakeCertsRepair(cm **certs.Manager) func() {
	return func() {
		if *cm != nil {
			(*cm).Repair()
		}
	}
}

// servedBy reports from the lbagents' records whether every live lbagent
// (one at least) serves an app at a generation or later.
func servedBy(agents *view.Table[*msg.Agent]) certs.Served {
	return func(app string, gen int64) bool {
		live, all := 0, true
		agents.Read(func(rows map[string]*msg.Agent, _ uint64) {
			for _, a := range rows {
				if time.Since(a.UpdatedAt) > msg.AgentTTL {
					continue
				}
				live++
				all = all && a.Apps[app] >= gen
			}
		})
		return live > 0 && all
	}
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	return host, port, err
}
