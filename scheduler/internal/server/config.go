// Package server owns one scheduler replica's wiring: it opens Postgres
// and NATS (or runs the embedded NATS), builds the API, the data plane and
// the leader-only services from a plain Config, and runs them: every
// replica serves the API, follows the hosts, the health and lbagent
// records and takes in the load samples; only the leader acts, through
// one leader.Group started and joined as leadership comes and goes.
package server

import (
	"crypto/tls"
	"net/netip"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/appenv"
	"github.com/berthhq/berth/scheduler/internal/hosts"
	"github.com/berthhq/berth/scheduler/internal/vault"
)

// Config is one replica's configuration, checked by the command line
// that fills it: Run assumes every value is valid.
type Config struct {
	// ID is this replica's holder id in the lease.
	ID string
	// Prefix prefixes every NATS bucket and subject, and names the lease.
	Prefix string
	// LeaseTTL is the leader lease's TTL; it is renewed every third of it.
	LeaseTTL time.Duration
	// Resync is how often, while leading, everything is republished and
	// reconciled in full.
	Resync time.Duration

	// DatabaseURL is the Postgres URL.
	DatabaseURL string
	// Migrate applies the migrations (and seals every env secret with
	// Secrets' current key) before starting; off, a schema behind refuses
	// to start.
	Migrate bool
	// Secrets are the keys of env secrets; nil without them.
	Secrets *vault.Ring
	// HistoryKeep is how many spec generations of each app are kept
	// (store.SetHistoryKeep); 0 keeps every one.
	HistoryKeep int
	// EventsKeep is how long events are kept (retention.Events); 0 keeps
	// every one.
	EventsKeep time.Duration

	NATS       NATS
	API        API
	Containers Containers
	Hosts      Hosts
	Autoscale  Autoscale
	// ACME orders certificates for apps with routing.tls.acme; nil refuses
	// such apps.
	ACME *ACME
}

// NATS says which NATS to use: an external one (Client.URL set) or the
// embedded one this replica runs.
type NATS struct {
	// Client is how this replica connects; without a URL, to the
	// embedded NATS, with Berth's scheduler credential when no other is
	// given.
	Client bus.Flags
	// Host and Port are where the embedded NATS listens.
	Host string
	Port int
	// StoreDir holds the embedded NATS's JetStream data.
	StoreDir string
	// ServerConfig, when set, is a nats-server config whose authorization
	// the embedded NATS uses instead of Berth's generated roles.
	ServerConfig string
	// CredentialsDir holds the embedded NATS's role credentials, made on
	// first start.
	CredentialsDir string
	// NodeCredentials is the credentials directory whose lbagent node keys
	// the leader publishes; empty: with the embedded NATS (and no
	// ServerConfig), CredentialsDir, else none.
	NodeCredentials string
}

// embedded says whether this replica runs the NATS server.
func (n NATS) embedded() bool { return n.Client.URL == "" }

// API is the HTTP API's listener and access.
type API struct {
	// Listen is its host:port.
	Listen string
	// Token is the bootstrap admin token; empty for none.
	Token string
	// Cert is the TLS key pair it serves HTTPS with; nil for HTTP.
	Cert *tls.Certificate
	// Open serves every request without a token (a loopback API with no
	// token file).
	Open bool
	// MaxRoutes caps the routes of every app together (0: no cap).
	MaxRoutes int
}

// Containers are how the leader runs containers.
type Containers struct {
	// MaxParallel is the container actions in flight at once.
	MaxParallel int
	// ExecChecksPerHost is the exec health checks (health.type exec) in
	// flight at once on one host.
	ExecChecksPerHost int
	// PublishAddress is the host address container ports are published
	// on, without Network.
	PublishAddress string
	// Network is the Docker network containers join and are reached on.
	Network string
	// NetworkPrefixes are the prefixes container addresses on Network lie in.
	NetworkPrefixes []netip.Prefix
	// PullTimeout, StartTimeout and StopTimeout bound one pull, one create
	// and start, and one stop.
	PullTimeout, StartTimeout, StopTimeout time.Duration
	// RegistryAuthFile is a Docker config.json with registry credentials;
	// empty for none.
	RegistryAuthFile string
	// ResolveTimeout bounds the resolution of an image tag to its digest
	// (scheduler/internal/image).
	ResolveTimeout time.Duration
	// DefaultCPU (cores) and DefaultMemory (bytes) limit the apps that set
	// none; 0 for no limit.
	DefaultCPU    float64
	DefaultMemory int64
	// Env is which of Environ is passed to every app.
	Env     appenv.Policy
	Environ []string
	// LogMaxSize and LogMaxFiles are the log limits of the containers of
	// apps whose spec sets none.
	LogMaxSize  spec.LogSize
	LogMaxFiles int
	// LogMaxTotal caps the log a container may keep (max size × files):
	// an apply over it is refused. 0: no cap.
	LogMaxTotal int64
}

// Hosts are the registered Docker hosts' rules.
type Hosts struct {
	// Timeout is how long a host's engine may not answer before it is down.
	Timeout time.Duration
	// Policy is what a host registration may name.
	Policy hosts.Policy
}

// Autoscale times the autoscaler.
type Autoscale struct {
	// Interval is how often the leader decides; StatsInterval how often it
	// reads Docker stats, StatsParallel of them at once.
	Interval, StatsInterval time.Duration
	StatsParallel           int
}

// ACME is where and how the leader orders certificates.
type ACME struct {
	// Directory is the ACME directory URL; Email the account's contact.
	Directory, Email string
	// CAFile holds PEM certificates trusted for Directory's TLS besides
	// the system's; empty for none.
	CAFile string
	// CertKeyFile is the key that encrypts certificate and account keys
	// in Postgres.
	CertKeyFile string
	// RenewBefore is how long before expiry a certificate is renewed.
	RenewBefore time.Duration
	// OrdersPerHour is the global order rate.
	OrdersPerHour int
}

// LeaseName is the one lease all scheduler replicas of a prefix compete for.
func LeaseName(prefix string) string { return prefix + "-scheduler" }
