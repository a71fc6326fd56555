package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/cmdline"
	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/appenv"
	"github.com/berthhq/berth/scheduler/internal/secret"
	"github.com/berthhq/berth/scheduler/internal/server"
	"github.com/berthhq/berth/scheduler/internal/store"
)

func run(args []string, stdout, stderr *os.File) int {
	c, kctx, code, done := parse(args, stdout, stderr)
	if done {
		return code
	}
	if isClient(kctx.Command()) {
		// Ctrl-C stops what a client waits for (--wait, logs --follow),
		// quietly: its output is the user's, not a daemon's log. A second
		// Ctrl-C exits at once.
		ctx, release := lifecycle.SignalContext(context.Background(), zap.NewNop(), os.Exit)
		defer release()
		return runClient(ctx, c, kctx.Command(), stdout, stderr)
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

// isClient says whether a command talks to a scheduler's API (not run,
// migrate, check-config or the NATS commands, which log as daemons do).
func isClient(command string) bool {
	switch command {
	case "check-config", "run", "migrate", "migrate <action>", "nats-credential <role>", "nats-config":
		return false
	}
	return !strings.HasPrefix(command, "nats-key ")
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

// serve runs one scheduler replica until ctx ends, with run's flags
// (checked by runCmd.check).
func serve(ctx context.Context, r *runCmd, logger *zap.Logger) error {
	// Fail closed: never serve without the token or certificate given.
	if (r.APITokenFile != "" && r.apiToken == "") || (r.APITLSCert != "" && r.apiCert == nil) {
		return errors.New("--api-token-file or --api-tls-cert was not read: check run's flags (runCmd.check) before serve")
	}
	cfg, err := r.config()
	if err != nil {
		return err
	}
	return server.Run(ctx, cfg, logger)
}

// config maps run's flags into the replica's configuration.
func (r *runCmd) config() (server.Config, error) {
	ring, err := r.ring()
	if err != nil {
		return server.Config{}, err
	}
	prefixes, err := r.networkPrefixes()
	if err != nil {
		return server.Config{}, err
	}
	mem, _ := spec.ParseByteSize(r.DefaultMemory)
	logSize, _ := spec.ParseLogSize(r.LogMaxSize)
	logTotal, _ := spec.ParseByteSize(r.LogMaxTotal)
	host, port, _ := splitHostPort(r.NATSListen)
	apiHost, _, _ := net.SplitHostPort(r.APIListen)
	cfg := server.Config{ID: r.id(), Prefix: r.Prefix, LeaseTTL: r.LeaseTTL, Resync: r.Resync,
		DatabaseURL: r.DatabaseURL, Migrate: r.Migrate, Secrets: ring, HistoryKeep: r.HistoryKeep, EventsKeep: r.EventsKeep,
		NATS: server.NATS{Client: r.NATS, Host: host, Port: port, StoreDir: r.DataDir, ServerConfig: r.NATSConfig,
			CredentialsDir: credentialsDir(r.DataDir), NodeCredentials: r.NATSCreds},
		API: server.API{Listen: r.APIListen, Token: r.apiToken, Cert: r.apiCert, Open: r.APITokenFile == "" && loopback(apiHost), MaxRoutes: r.MaxRoutes},
		Containers: server.Containers{MaxParallel: r.MaxParallel, ExecChecksPerHost: r.ExecChecks, PublishAddress: r.PublishAddress, Network: r.Network, NetworkPrefixes: prefixes,
			PullTimeout: r.PullTimeout, StartTimeout: r.StartTimeout, StopTimeout: r.StopTimeout, RegistryAuthFile: r.RegistryAuth, ResolveTimeout: r.ResolveTimeout,
			DefaultCPU: r.DefaultCPU, DefaultMemory: int64(mem), Env: appenv.Policy{Prefix: r.AppEnvPrefix, Block: r.AppEnvBlock}, Environ: os.Environ(),
			LogMaxSize: logSize, LogMaxFiles: r.LogMaxFiles, LogMaxTotal: int64(logTotal)},
		Hosts:     server.Hosts{Timeout: r.HostTimeout, Policy: r.hostPolicy()},
		Autoscale: server.Autoscale{Interval: r.AutoscaleInterval, StatsInterval: r.StatsInterval, StatsParallel: r.StatsParallel},
	}
	if r.ACMEDirectory != "" {
		cfg.ACME = &server.ACME{Directory: r.ACMEDirectory, Email: r.ACMEEmail, CAFile: r.ACMECAFile, CertKeyFile: r.CertKeyFile,
			RenewBefore: r.ACMERenewBefore, OrdersPerHour: r.ACMEOrdersPerHour}
	}
	return cfg, nil
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	return host, port, err
}
