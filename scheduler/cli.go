package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/alecthomas/kong"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/cmdline"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/certs"
	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/berthhq/berth/scheduler/internal/vault"
)

// Exit codes of every subcommand.
const (
	exitOK     = 0 // done
	exitFailed = 1 // the server, the database or the network refused or failed
	exitUsage  = 2 // bad flags, arguments or configuration
)

// cli is the scheduler's command line; every flag has a BERTH_SCHEDULER_… or BERTH_… env name.
type cli struct {
	LogLevel  string `name:"log-level" help:"debug, info, warn or error." default:"info" env:"BERTH_SCHEDULER_LOG_LEVEL"`
	LogFormat string `name:"log-format" help:"json or console." default:"json" env:"BERTH_SCHEDULER_LOG_FORMAT"`

	Run         runCmd      `cmd:"" help:"Run a scheduler replica: the API, leader election and publishing."`
	Migrate     migrateCmd  `cmd:"" help:"Apply database migrations (up), or show where the schema stands (status); with --secret-key-file, up also seals every stored env secret with it (key rotation)."`
	CheckConfig runCmd      `cmd:"" name:"check-config" help:"Check the flags of run, print what is wrong, exit 0 or 1."`
	Apply       applyCmd    `cmd:"" help:"Apply an app spec (YAML or JSON); prints the generation and what changed. --dry-run shows what it would do, changing nothing."`
	Scale       scaleCmd    `cmd:"" help:"Set a fixed-replica app's replica count."`
	Status      statusCmd   `cmd:"" help:"Show apps, or one app's instances."`
	Events      eventsCmd   `cmd:"" help:"Show lifecycle events; --follow streams them from NATS."`
	Logs        logsCmd     `cmd:"" help:"Show an app's logs, every instance's merged in time order; --follow streams them, new instances included."`
	Rm          rmCmd       `cmd:"" help:"Delete an app."`
	Rollback    rollbackCmd `cmd:"" help:"Roll an app back to its previous spec, or to any kept generation with --to."`
	Restart     restartCmd  `cmd:"" help:"Replace every instance of an app by a rolling update, with the same spec."`
	Redeploy    redeployCmd `cmd:"" help:"Resolve an app's image tag again: a new digest rolls out as a new generation of the same spec; otherwise unchanged."`
	Hosts       hostsCmd    `cmd:"" help:"The Docker hosts the scheduler places instances on: add, ls, drain, undrain, rm."`
	Tokens      tokensCmd   `cmd:"" help:"API tokens and their scopes (read, deploy, admin): create, ls, revoke."`
	History     historyCmd  `cmd:"" help:"Show an app's kept spec generations: image, who made each and what it changed; with a generation, its spec and its diff against the one before."`
	Edge        edgeCmd     `cmd:"" help:"Show every lbagent: its mode, applied revision and lag behind the instances bucket, latest reload and push, nginx version, errors, and when it last reported."`
	Certs       certsCmd    `cmd:"" help:"Show every app's ACME certificate: names, issuer, expiry and days left, last issuance, failures and the next retry."`

	NATSCredential natsCredentialCmd `cmd:"" name:"nats-credential" help:"Print one role's NATS credential of the embedded NATS (its nkey seed, and the roles' public keys that sealed records are checked against), for another daemon's --nats-nkey; creates the credentials if needed."`
	NATSConfig     natsConfigCmd     `cmd:"" name:"nats-config" help:"Print a nats-server config with Berth's roles (users and permissions) for an external NATS, from the credentials in --data-dir."`
	NATSKey        natsKeyCmd        `cmd:"" name:"nats-key" help:"List the NATS keys in --data-dir, rotate a role's or an lbagent node's key without an outage, or add or remove a node's key (docs/operations.md, Rotating NATS keys)."`
}

// natsAuthFlags locate the embedded NATS's role credentials.
type natsAuthFlags struct {
	DataDir string `name:"data-dir" help:"The scheduler's --data-dir: the credentials are in its nats-credentials directory." default:"/var/lib/berth/scheduler" env:"BERTH_SCHEDULER_DATA_DIR" type:"path"`
	Prefix  string `help:"Prefix of every NATS bucket and subject." default:"berth" env:"BERTH_SCHEDULER_PREFIX"`
}

type natsCredentialCmd struct {
	natsAuthFlags `embed:""`
	Role          string `arg:"" help:"scheduler, healthd, lbagent or reader." enum:"scheduler,healthd,lbagent,reader"`
	Node          string `help:"With lbagent: the credential of this node's own key (its lbagent's --node; created if needed), which writes only this node's record and opens the certificate keys sealed to it. Without it: the lbagent role's shared key, the fallback." default:""`
}

type natsConfigCmd struct {
	natsAuthFlags `embed:""`
	Out           string `help:"Write the config to this file (mode 0644: it holds public keys only) instead of standard output." default:"" type:"path"`
}

type runCmd struct {
	DatabaseURL  string        `name:"database-url" help:"Postgres URL (postgres://user:pass@host/db)." env:"BERTH_SCHEDULER_DATABASE_URL" default:""`
	APIListen    string        `name:"api-listen" help:"Address of the HTTP API." default:"127.0.0.1:7070" env:"BERTH_SCHEDULER_API_LISTEN"`
	APITokenFile string        `name:"api-token-file" help:"File holding the API's admin token, named bootstrap (scheduler tokens create makes scoped ones); required unless --api-listen is loopback. Read once at start: unreadable or empty refuses to start." default:"" env:"BERTH_SCHEDULER_API_TOKEN_FILE" type:"path"`
	APITLSCert   string        `name:"api-tls-cert" help:"PEM certificate (chain) the API serves HTTPS with; needs --api-tls-key. Read at start: restart a replica to rotate it." default:"" env:"BERTH_SCHEDULER_API_TLS_CERT" type:"path"`
	APITLSKey    string        `name:"api-tls-key" help:"PEM private key of --api-tls-cert." default:"" env:"BERTH_SCHEDULER_API_TLS_KEY" type:"path"`
	PlainAPI     bool          `name:"allow-unencrypted-api" help:"Let the API listen off loopback without TLS (--api-tls-cert): every bearer token and spec crosses the network in clear." default:"false" env:"BERTH_SCHEDULER_ALLOW_UNENCRYPTED_API"`
	Migrate      bool          `help:"Apply database migrations before starting." default:"false" env:"BERTH_SCHEDULER_MIGRATE"`
	NATS         bus.Flags     `embed:"" envprefix:"BERTH_SCHEDULER_"`
	NATSListen   string        `name:"nats-listen" help:"With no --nats-url: where the embedded NATS listens for the other daemons." default:"127.0.0.1:4222" env:"BERTH_SCHEDULER_NATS_LISTEN"`
	DataDir      string        `name:"data-dir" help:"With no --nats-url: the embedded NATS's JetStream data, and its role credentials (nats-credentials/, mode 0600)." default:"/var/lib/berth/scheduler" env:"BERTH_SCHEDULER_DATA_DIR" type:"path"`
	NATSCreds    string        `name:"nats-credentials" help:"The NATS credentials directory (--data-dir/nats-credentials of the host where nats-credential and nats-key run) whose lbagent node keys the leader publishes in the node-key directory, read only. Default: with the embedded NATS, its own; with --nats-url, none (the leader then leaves the directory as it is)." default:"" env:"BERTH_SCHEDULER_NATS_CREDENTIALS" type:"path"`
	NATSConfig   string        `name:"nats-server-config" help:"With no --nats-url: a nats-server config file whose authorization the embedded NATS uses instead of Berth's generated roles (give this scheduler's own credential with --nats-nkey or --nats-creds)." default:"" env:"BERTH_SCHEDULER_NATS_SERVER_CONFIG" type:"path"`
	Unencrypted  bool          `name:"allow-unencrypted-nats" help:"Let the embedded NATS listen off loopback, where it has no TLS: every credential and message crosses the network in clear." default:"false" env:"BERTH_SCHEDULER_ALLOW_UNENCRYPTED_NATS"`
	Prefix       string        `help:"Prefix of every NATS bucket and subject." default:"berth" env:"BERTH_SCHEDULER_PREFIX"`
	ID           string        `help:"This replica's id in the lease (default: host name and pid)." default:"" env:"BERTH_SCHEDULER_ID"`
	LeaseTTL     time.Duration `name:"lease-ttl" help:"Leader lease TTL; renewed every third of it." default:"10s" env:"BERTH_SCHEDULER_LEASE_TTL"`
	Resync       time.Duration `help:"Republish every app and run a full reconcile this often while leading." default:"30s" env:"BERTH_SCHEDULER_RESYNC"`

	MaxParallel    int           `name:"max-parallel" help:"Container actions in flight at once." default:"4" env:"BERTH_SCHEDULER_MAX_PARALLEL"`
	ExecChecks     int           `name:"exec-checks-per-host" help:"Exec health checks (health.type exec) running at once on one host; the others wait their turn." default:"8" env:"BERTH_SCHEDULER_EXEC_CHECKS_PER_HOST"`
	PublishAddress string        `name:"publish-address" help:"Host address container ports are published on (Docker picks the port)." default:"127.0.0.1" env:"BERTH_SCHEDULER_PUBLISH_ADDRESS"`
	Network        string        `help:"Docker network to attach containers to and reach them on, instead of publishing ports." default:"" env:"BERTH_SCHEDULER_NETWORK"`
	PullTimeout    time.Duration `name:"pull-timeout" help:"Bound on one image pull." default:"5m" env:"BERTH_SCHEDULER_PULL_TIMEOUT"`
	ResolveTimeout time.Duration `name:"resolve-timeout" help:"Bound on resolving an image tag to its digest at apply and redeploy (the registry's answer, and the engines' for a local image); past it the image is applied unpinned." default:"10s" env:"BERTH_SCHEDULER_RESOLVE_TIMEOUT"`
	StartTimeout   time.Duration `name:"start-timeout" help:"Bound on creating and starting a container; older creating/starting instances are stale." default:"1m" env:"BERTH_SCHEDULER_START_TIMEOUT"`
	StopTimeout    time.Duration `name:"stop-timeout" help:"Bound on stopping a container (signal, then grace); past it the container is removed by force." default:"2m" env:"BERTH_SCHEDULER_STOP_TIMEOUT"`
	RegistryAuth   string        `name:"registry-auth-file" help:"Docker config.json with registry credentials (never logged); a pull sends only its image registry's entry, none when nothing matches." default:"" env:"BERTH_SCHEDULER_REGISTRY_AUTH_FILE" type:"path"`
	DefaultCPU     float64       `name:"default-cpu" help:"CPU limit (cores) for apps that set none; 0 for none." default:"1" env:"BERTH_SCHEDULER_DEFAULT_CPU"`
	DefaultMemory  string        `name:"default-memory" help:"Memory limit for apps that set none (256Mi, 1Gi); 0 for none." default:"512Mi" env:"BERTH_SCHEDULER_DEFAULT_MEMORY"`
	LogMaxSize     string        `name:"log-max-size" help:"Docker log limit of every container whose spec sets no logging.max_size: its json-file log is rotated at this size (1m to 1g)." default:"10m" env:"BERTH_SCHEDULER_LOG_MAX_SIZE"`
	LogMaxFiles    int           `name:"log-max-files" help:"Docker log limit of every container whose spec sets no logging.max_files: the json-file log files kept, the current one included (1 to 20)." default:"3" env:"BERTH_SCHEDULER_LOG_MAX_FILES"`
	LogMaxTotal    string        `name:"log-max-total" help:"The most log a container may keep on its host (logging.max_size x logging.max_files, with the defaults above for what a spec leaves out): an apply over it is refused, so no team's app can fill a host's disk (1m to 20g)." default:"1g" env:"BERTH_SCHEDULER_LOG_MAX_TOTAL"`
	AppEnvPrefix   string        `name:"app-env-prefix" help:"Pass the scheduler's env vars with this prefix (stripped) to every app." default:"" env:"BERTH_SCHEDULER_APP_ENV_PREFIX"`
	AppEnvBlock    []string      `name:"app-env-block" help:"Name patterns never passed through (PATH, HOME, HOSTNAME and BERTH_SCHEDULER_* always are)." default:"" env:"BERTH_SCHEDULER_APP_ENV_BLOCK"`

	HostTimeout   time.Duration `name:"host-timeout" help:"A registered host whose Docker engine has not answered for this long is down: its instances leave every nginx and are replaced on other hosts." default:"15s" env:"BERTH_SCHEDULER_HOST_TIMEOUT"`
	HostTLSDir    string        `name:"host-tls-dir" help:"The directory every registered host's TLS files (tls.ca, tls.cert, tls.key) must lie in, symbolic links resolved; empty refuses TLS files, and so tcp:// engines off loopback." default:"" env:"BERTH_SCHEDULER_HOST_TLS_DIR" type:"path"`
	LoopbackHosts bool          `name:"allow-loopback-hosts" help:"Let a registered host's address and docker_url be loopback (127.0.0.0/8, ::1): only for several engines on one machine in a test; link-local, unspecified and multicast are never allowed." default:"false" env:"BERTH_SCHEDULER_ALLOW_LOOPBACK_HOSTS"`
	NetworkCIDR   []string      `name:"network-cidr" help:"With --network: the prefixes (CIDR, repeatable) that container addresses on that network lie in; an address an engine reports outside them is refused. Required for registered hosts with --network." default:"" env:"BERTH_SCHEDULER_NETWORK_CIDR"`

	EventsKeep time.Duration `name:"events-keep" help:"How long events are kept: the leader deletes older ones every hour (0 keeps every event; otherwise 24h, the window the restart budget and failed rollouts read, to 87600h)." default:"720h" env:"BERTH_SCHEDULER_EVENTS_KEEP"`

	HistoryKeep int `name:"history-keep" help:"Spec generations kept per app for scheduler history and rollback --to (2 to 10000): each new generation prunes the older ones, except a generation an instance still runs." default:"50" env:"BERTH_SCHEDULER_HISTORY_KEEP"`

	MaxRoutes int `name:"max-routes" help:"Cap on the routes (hosts x paths) of every app together, which each nginx renders as locations; an apply past it is refused (0: no cap)." default:"20000" env:"BERTH_SCHEDULER_MAX_ROUTES"`

	AutoscaleInterval time.Duration `name:"autoscale-interval" help:"How often the leader decides the replicas of every autoscaled app." default:"15s" env:"BERTH_SCHEDULER_AUTOSCALE_INTERVAL"`
	StatsInterval     time.Duration `name:"stats-interval" help:"How often the leader reads Docker stats of autoscaled apps with a CPU or memory target." default:"5s" env:"BERTH_SCHEDULER_STATS_INTERVAL"`
	StatsParallel     int           `name:"stats-parallel" help:"Docker stats readings in flight at once." default:"4" env:"BERTH_SCHEDULER_STATS_PARALLEL"`

	ACMEDirectory   string        `name:"acme-directory" help:"ACME directory URL the leader orders certificates from for apps with routing.tls.acme (https://acme-v02.api.letsencrypt.org/directory); empty refuses such apps." default:"" env:"BERTH_SCHEDULER_ACME_DIRECTORY"`
	ACMEEmail       string        `name:"acme-email" help:"Contact address of the ACME account (expiry notices from the CA)." default:"" env:"BERTH_SCHEDULER_ACME_EMAIL"`
	ACMECAFile      string        `name:"acme-ca-file" help:"PEM certificates to trust for the ACME directory's TLS besides the system's (a private CA)." default:"" env:"BERTH_SCHEDULER_ACME_CA_FILE" type:"path"`
	CertKeyFile     string        `name:"cert-key-file" help:"With --acme-directory: 32 random bytes in base64 (openssl rand -base64 32), mode 0600, that encrypt the certificate and account keys stored in Postgres. Every scheduler replica needs the same file." default:"" env:"BERTH_SCHEDULER_CERT_KEY_FILE" type:"path"`
	ACMERenewBefore time.Duration `name:"acme-renew-before" help:"Renew a certificate this long before it expires." default:"720h" env:"BERTH_SCHEDULER_ACME_RENEW_BEFORE"`

	// ACMEOrdersPerHour is the global order rate (issue 24).
	ACMEOrdersPerHour int `name:"acme-orders-per-hour" help:"Global ACME order rate: at most this many orders start in any hour, across every app, so that no tenant can spend the account's limits (Let's Encrypt: 300 new orders per 3 hours); renewals closest to expiry go first. 1-10000." default:"30" env:"BERTH_SCHEDULER_ACME_ORDERS_PER_HOUR"`

	secretFlags `embed:""`

	// apiToken is --api-token-file's token and apiCert --api-tls-cert's
	// key pair, read once by check: serve uses these, never the files.
	apiToken string
	apiCert  *tls.Certificate
}

// secretFlags are the keys of env secrets, for run and migrate.
type secretFlags struct {
	SecretKeyFile     string   `name:"secret-key-file" help:"32 random bytes in base64 (openssl rand -base64 32), mode 0600, that encrypt env values marked secret in Postgres; may be the --cert-key-file. Every scheduler replica needs the same file. Without it a spec with a secret is refused." default:"" env:"BERTH_SCHEDULER_SECRET_KEY_FILE" type:"path"`
	SecretOldKeyFiles []string `name:"secret-old-key-file" help:"Earlier --secret-key-file keys, during a rotation: they open the secrets they sealed (nothing is sealed with them) until scheduler migrate has sealed every secret with --secret-key-file. Repeatable." default:"" env:"BERTH_SCHEDULER_SECRET_OLD_KEY_FILE" type:"path" sep:","`
}

// ring loads the keys of env secrets: nil without --secret-key-file.
func (f *secretFlags) ring() (*vault.Ring, error) {
	if f.SecretKeyFile == "" {
		if len(f.SecretOldKeyFiles) > 0 {
			return nil, errors.New("--secret-old-key-file needs --secret-key-file: the old keys only open what they sealed, and the current key seals")
		}
		return nil, nil
	}
	cur, err := vault.Load(f.SecretKeyFile, "--secret-key-file")
	if err != nil {
		return nil, err
	}
	var old []*vault.Vault
	for _, p := range f.SecretOldKeyFiles {
		v, err := vault.Load(p, "--secret-old-key-file")
		if err != nil {
			return nil, err
		}
		old = append(old, v)
	}
	return vault.NewRing(cur, old...), nil
}

type migrateCmd struct {
	Action      string `arg:"" help:"up or status." default:"up" enum:"up,status"`
	DatabaseURL string `name:"database-url" help:"Postgres URL." env:"BERTH_SCHEDULER_DATABASE_URL" required:""`
	secretFlags `embed:""`
}

// clientFlags are shared by the commands that talk to the API.
type clientFlags struct {
	Server    string `help:"Scheduler API URL." default:"http://127.0.0.1:7070" env:"BERTH_SERVER"`
	TokenFile string `name:"token-file" help:"File holding the API token (or set BERTH_TOKEN)." default:"" env:"BERTH_TOKEN_FILE" type:"path"`
	ServerCA  string `name:"server-ca" help:"PEM CA certificates to trust for an https:// --server besides the system's (the CA of its --api-tls-cert)." default:"" env:"BERTH_SERVER_CA" type:"path"`
	Output    string `short:"o" help:"table or json." default:"table" enum:"table,json"`
}

type applyCmd struct {
	clientFlags `embed:""`
	waitFlags   `embed:""`
	File        string `short:"f" help:"Spec file, or - for standard input." required:""`
	DryRun      bool   `name:"dry-run" help:"Change nothing: show the spec's diff against the current one and what an apply would do (replace instances, scale, reload, new certificate, unplaceable instances)." default:"false"`
}

type scaleCmd struct {
	clientFlags `embed:""`
	App         string `arg:"" help:"App name."`
	Replicas    int    `arg:"" help:"Replica count."`
}

type statusCmd struct {
	clientFlags `embed:""`
	App         string `arg:"" optional:"" help:"App name (all apps when absent)."`
	Instance    string `help:"One instance of APP (an id scheduler status APP shows): its record, its last health check results and its failures by kind." default:""`
}

type eventsCmd struct {
	clientFlags `embed:""`
	App         string `help:"Only this app's events." default:""`
	Last        int    `help:"How many of the newest events to show (1 to 500)." default:"100"`
	Follow      bool   `help:"Keep streaming new events from NATS." default:"false"`
	NATSURL     string `name:"nats-url" help:"NATS for --follow: its URL, or every member of a NATS cluster, comma-separated." default:"nats://127.0.0.1:4222" env:"BERTH_NATS_URL"`
	NKey        string `name:"nats-nkey" help:"With --follow: the reader role's credential (scheduler nats-credential reader): its NATS nkey seed, and the public keys events' seals are checked against." default:"" env:"BERTH_NATS_NKEY" type:"path"`
	Prefix      string `help:"Prefix of the NATS subjects." default:"berth" env:"BERTH_PREFIX"`
}

type logsCmd struct {
	clientFlags `embed:""`
	App         string `arg:"" help:"App name."`
	Instance    string `help:"Only this instance (an id scheduler status shows)." default:""`
	Follow      bool   `short:"f" help:"Keep streaming new lines, and the lines of the instances a rollout starts, until interrupted." default:"false"`
	Since       string `help:"Only lines since then: a Go duration back from now (10m, 1h30m) or an RFC 3339 time." default:""`
	Tail        string `help:"Only each instance's last N lines (0 to 100000), or all." default:"all"`
	Timestamps  bool   `short:"t" help:"Start each line with the time Docker received it (RFC 3339)." default:"false"`
}

type historyCmd struct {
	clientFlags `embed:""`
	App         string `arg:"" help:"App name."`
	Generation  string `arg:"" optional:"" help:"One generation: its spec (YAML, secrets redacted) and its diff against the kept generation before it."`
	Limit       int    `help:"How many generations, newest first." default:"20"`
}

type rmCmd struct {
	clientFlags `embed:""`
	App         string `arg:"" help:"App name."`
}

type redeployCmd struct {
	clientFlags `embed:""`
	waitFlags   `embed:""`
	App         string `arg:"" help:"App name."`
}

type restartCmd struct {
	clientFlags `embed:""`
	waitFlags   `embed:""`
	App         string `arg:"" help:"App name."`
}

type rollbackCmd struct {
	clientFlags `embed:""`
	waitFlags   `embed:""`
	App         string `arg:"" help:"App name."`
	To          int64  `help:"The generation whose spec comes back (scheduler history APP lists them); by default the newest earlier spec that differs." default:"0"`
}

// check returns every problem with run's flags at once.
func (r *runCmd) check() error {
	var errs []error
	if r.DatabaseURL == "" {
		errs = append(errs, errors.New("--database-url: must be set (postgres://user:pass@host:5432/berth)"))
	}
	errs = append(errs, r.checkAPI()...)
	if _, err := msg.NewNames(r.Prefix); err != nil {
		errs = append(errs, fmt.Errorf("--prefix: %w", err))
	}
	if r.ID != "" {
		if err := msg.CheckToken(r.ID); err != nil {
			errs = append(errs, fmt.Errorf("--id: %w", err))
		}
	}
	if r.LeaseTTL < time.Second || r.LeaseTTL > 5*time.Minute {
		errs = append(errs, fmt.Errorf("--lease-ttl (%s): must be between 1s and 5m", r.LeaseTTL))
	}
	if r.Resync < time.Second {
		errs = append(errs, fmt.Errorf("--resync (%s): must be at least 1s", r.Resync))
	}
	if r.HostTimeout < 2*time.Second || r.HostTimeout > 10*time.Minute {
		errs = append(errs, fmt.Errorf("--host-timeout (%s): must be between 2s and 10m", r.HostTimeout))
	}
	if r.EventsKeep != 0 && (r.EventsKeep < MinEventsKeep || r.EventsKeep > MaxEventsKeep) {
		errs = append(errs, fmt.Errorf("--events-keep (%s): must be 0 (keep every event) or between %s (the window the restart budget and failed rollouts read) and %s", r.EventsKeep, MinEventsKeep, MaxEventsKeep))
	}
	if r.HistoryKeep < store.MinHistoryKeep || r.HistoryKeep > MaxHistoryKeep {
		errs = append(errs, fmt.Errorf("--history-keep (%d): must be between %d (the current generation and the one rollback returns to) and %d", r.HistoryKeep, store.MinHistoryKeep, MaxHistoryKeep))
	}
	if r.MaxParallel < 1 || r.MaxParallel > 256 {
		errs = append(errs, fmt.Errorf("--max-parallel (%d): must be between 1 and 256", r.MaxParallel))
	}
	if r.ExecChecks < 1 || r.ExecChecks > 256 {
		errs = append(errs, fmt.Errorf("--exec-checks-per-host (%d): must be between 1 and 256", r.ExecChecks))
	}
	if r.AutoscaleInterval < 100*time.Millisecond || r.AutoscaleInterval > 10*time.Minute ||
		r.StatsInterval < 100*time.Millisecond || r.StatsInterval > 10*time.Minute {
		errs = append(errs, fmt.Errorf("--autoscale-interval (%s) and --stats-interval (%s): must be between 100ms and 10m", r.AutoscaleInterval, r.StatsInterval))
	}
	if r.StatsParallel < 1 || r.StatsParallel > 256 {
		errs = append(errs, fmt.Errorf("--stats-parallel (%d): must be between 1 and 256", r.StatsParallel))
	}
	if _, err := netip.ParseAddr(r.PublishAddress); err != nil {
		errs = append(errs, fmt.Errorf("--publish-address %q: must be an IP address", r.PublishAddress))
	}
	if r.PullTimeout <= 0 || r.StartTimeout <= 0 || r.StopTimeout <= 0 || r.ResolveTimeout <= 0 {
		errs = append(errs, errors.New("--pull-timeout, --resolve-timeout, --start-timeout and --stop-timeout must be positive"))
	}
	if _, err := spec.ParseByteSize(r.DefaultMemory); err != nil {
		errs = append(errs, fmt.Errorf("--default-memory: %w", err))
	}
	if r.DefaultCPU < 0 {
		errs = append(errs, errors.New("--default-cpu must not be negative"))
	}
	if size, err := spec.ParseLogSize(r.LogMaxSize); err != nil {
		errs = append(errs, fmt.Errorf("--log-max-size: %w", err))
	} else if err := spec.CheckLogMaxSize(size); err != nil {
		errs = append(errs, fmt.Errorf("--log-max-size: %w", err))
	}
	if err := spec.CheckLogMaxFiles(r.LogMaxFiles); err != nil {
		errs = append(errs, fmt.Errorf("--log-max-files %w", err))
	} else if total, err := spec.ParseByteSize(r.LogMaxTotal); err != nil || int64(total) < int64(spec.MinLogMaxSize) || int64(total) > 20<<30 {
		errs = append(errs, fmt.Errorf("--log-max-total %q: must be a size such as 1g, from 1m to 20g", r.LogMaxTotal))
	} else if size, err := spec.ParseLogSize(r.LogMaxSize); err == nil && int64(size)*int64(r.LogMaxFiles) > int64(total) {
		errs = append(errs, fmt.Errorf("--log-max-total %s is less than the defaults allow (--log-max-size %s x --log-max-files %d)", r.LogMaxTotal, r.LogMaxSize, r.LogMaxFiles))
	}
	errs = append(errs, r.checkACME()...)
	if _, err := r.ring(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, r.checkHosts()...)
	if r.NATS.URL == "" && r.NATSConfig == "" && r.NATSCreds != "" && filepath.Clean(r.NATSCreds) != credentialsDir(r.DataDir) {
		errs = append(errs, fmt.Errorf("--nats-credentials %s: the embedded NATS uses its own, %s (--data-dir): leave the flag out", r.NATSCreds, credentialsDir(r.DataDir)))
	}
	if r.NATS.URL != "" {
		if _, err := r.NATS.Options("scheduler"); err != nil {
			errs = append(errs, err)
		}
	} else if r.NATS.Replicas != 1 {
		if slices.Contains(bus.ValidReplicas, r.NATS.Replicas) {
			errs = append(errs, fmt.Errorf("--nats-replicas %d: the embedded NATS is one server, whose buckets have 1 replica: give --nats-url with every member of a NATS cluster, or leave the flag out", r.NATS.Replicas))
		} else {
			errs = append(errs, fmt.Errorf("--nats-replicas %d: must be 1, 3 or 5", r.NATS.Replicas))
		}
	} else if host, _, err := net.SplitHostPort(r.NATSListen); err != nil {
		errs = append(errs, fmt.Errorf("--nats-listen %q: must be host:port", r.NATSListen))
	} else if !loopback(host) && !r.Unencrypted {
		errs = append(errs, fmt.Errorf("--nats-listen %s is off loopback, and the embedded NATS has no TLS: every credential and message would cross the network in clear; listen on loopback (the other daemons on this host), run NATS yourself with TLS (--nats-url), or accept the risk with --allow-unencrypted-nats", r.NATSListen))
	}
	return errors.Join(errs...)
}

// checkAPI checks the API's flags, and reads its token and TLS key pair
// once: run serves with these, so a file that changes or vanishes after
// the check cannot leave the API without auth (it fails closed).
func (r *runCmd) checkAPI() []error {
	var errs []error
	r.apiToken, r.apiCert = "", nil
	host, _, err := net.SplitHostPort(r.APIListen)
	if err != nil {
		errs = append(errs, fmt.Errorf("--api-listen %q: must be host:port", r.APIListen))
	} else if !loopback(host) {
		if r.APITokenFile == "" {
			errs = append(errs, fmt.Errorf("--api-listen %s is not loopback: give --api-token-file so the API requires a token", r.APIListen))
		}
		if r.APITLSCert == "" && !r.PlainAPI {
			errs = append(errs, fmt.Errorf("--api-listen %s is off loopback without TLS: every bearer token and spec would cross the network in clear; give --api-tls-cert and --api-tls-key, listen on loopback behind a TLS proxy, or accept the risk with --allow-unencrypted-api", r.APIListen))
		}
	}
	if r.APITokenFile != "" {
		if t, err := readToken("--api-token-file", r.APITokenFile); err != nil {
			errs = append(errs, err)
		} else {
			r.apiToken = t
		}
	}
	switch {
	case (r.APITLSCert == "") != (r.APITLSKey == ""):
		errs = append(errs, errors.New("--api-tls-cert and --api-tls-key: give both, or neither"))
	case r.APITLSCert != "":
		cert, err := tls.LoadX509KeyPair(r.APITLSCert, r.APITLSKey)
		if err != nil {
			errs = append(errs, fmt.Errorf("--api-tls-cert %s and --api-tls-key %s: %w (both PEM, the key matching the certificate)", r.APITLSCert, r.APITLSKey, err))
		} else {
			r.apiCert = &cert
		}
	}
	return errs
}

// checkACME checks the certificate flags: each is needed with, or
// useless without, --acme-directory.
func (r *runCmd) checkACME() []error {
	if r.ACMEDirectory == "" {
		if r.ACMEEmail != "" || r.ACMECAFile != "" || r.CertKeyFile != "" {
			return []error{errors.New("--acme-email, --acme-ca-file and --cert-key-file need --acme-directory")}
		}
		return nil
	}
	var errs []error
	if u, err := url.Parse(r.ACMEDirectory); err != nil || u.Scheme != "https" || u.Host == "" {
		errs = append(errs, fmt.Errorf("--acme-directory %q: must be an https:// URL", r.ACMEDirectory))
	}
	if r.ACMEEmail != "" {
		if a, err := mail.ParseAddress(r.ACMEEmail); err != nil || a.Address != r.ACMEEmail {
			errs = append(errs, fmt.Errorf("--acme-email %q: must be a plain address (ops@example.com)", r.ACMEEmail))
		}
	}
	if r.CertKeyFile == "" {
		errs = append(errs, errors.New("--acme-directory needs --cert-key-file: the key that encrypts certificate keys in Postgres (openssl rand -base64 32 > cert.key; chmod 600 cert.key)"))
	} else if _, err := vault.Load(r.CertKeyFile, "--cert-key-file"); err != nil {
		errs = append(errs, err)
	}
	if r.ACMECAFile != "" {
		if _, err := certs.HTTPClient(r.ACMECAFile); err != nil {
			errs = append(errs, err)
		}
	}
	if r.ACMEOrdersPerHour < 1 || r.ACMEOrdersPerHour > 10000 {
		errs = append(errs, fmt.Errorf("--acme-orders-per-hour (%d): must be between 1 and 10000", r.ACMEOrdersPerHour))
	}
	if r.ACMERenewBefore < time.Hour || r.ACMERenewBefore > 60*24*time.Hour {
		errs = append(errs, fmt.Errorf("--acme-renew-before (%s): must be between 1h and 1440h (60 days)", r.ACMERenewBefore))
	}
	return errs
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// readToken reads the token in the file of flag, refusing an unreadable
// or empty file (or one too big to be a token).
func readToken(flag, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	switch {
	case err != nil:
		return "", fmt.Errorf("%s: read %s: %w", flag, path, err)
	case len(b) > maxTokenFile:
		return "", fmt.Errorf("%s: %s is over %d bytes: not a token file", flag, path, maxTokenFile)
	}
	t := strings.TrimSpace(string(b))
	switch {
	case t == "":
		return "", fmt.Errorf("%s: %s is empty: write a token into it (head -c 32 /dev/urandom | base64 > %s)", flag, path, path)
	case strings.ContainsAny(t, "\r\n"):
		return "", fmt.Errorf("%s: %s holds more than one line: a token file holds one token", flag, path)
	}
	return t, nil
}

// Bounds of --events-keep (but 0): the leader reads a day of restarts and
// failed rollouts from the events.
const (
	MinEventsKeep = 24 * time.Hour
	MaxEventsKeep = 87600 * time.Hour
)

// MaxHistoryKeep caps --history-keep.
const MaxHistoryKeep = 10000

// maxTokenFile caps a token file: a token is a line of a few dozen bytes.
const maxTokenFile = 4096

func (r *runCmd) id() string {
	if r.ID != "" {
		return r.ID
	}
	h, _ := os.Hostname()
	return msg.NodeID(fmt.Sprintf("%s-%d", h, os.Getpid()))
}

func parse(args []string, stdout, stderr *os.File) (*cli, *kong.Context, int, bool) {
	return cmdline.Parse[cli]("scheduler",
		"Berth scheduler. Exit codes: 0 done, 1 the server, database or network failed, 2 bad usage or configuration.",
		kong.Vars{"nats_url_default": "", "nats_url_help": "NATS server URL(s); empty runs an embedded NATS for the other daemons."},
		args, stdout, stderr)
}
