package msg

import (
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth/common/spec"
)

// Message types, the "type" field of every message.
const (
	TypeApp          = "berth.app.v1"
	TypeInstance     = "berth.instance.v1"
	TypeHealth       = "berth.health.v1"
	TypeHealthChange = "berth.health_change.v1"
	TypeAgent        = "berth.agent.v1"
	TypeChecker      = "berth.checker.v1"
	TypeEvent        = "berth.event.v1"
	TypeMetrics      = "berth.metrics.v1"
	TypeReload       = "berth.reload.v1"
	TypeUsage        = "berth.usage.v1"
	TypeCertificate  = "berth.certificate.v1"
	TypeChallenge    = "berth.challenge.v1"
	TypeNode         = "berth.node.v1"
)

// Message is one v1 message. The set is closed: only this package's types
// implement it.
type Message interface {
	// MessageType returns the Type… constant of the message.
	MessageType() string
	// Validate returns every problem with the message as spec.Errors.
	Validate() error
	header() *Header
}

// Header is the part every message shares.
type Header struct {
	// Type names the message and its version.
	Type string `json:"type"`
}

func (h *Header) header() *Header { return h }

// MaxTextLen caps free-text fields (messages, errors) in bytes.
const MaxTextLen = 1024

// Instance states, in lifecycle order.
const (
	StatePending  = "pending"
	StateCreating = "creating"
	StateStarting = "starting"
	StateRunning  = "running"
	StateDraining = "draining"
	StateStopping = "stopping"
	StateStopped  = "stopped"
	StateFailed   = "failed"
)

// States lists every instance state.
var States = []string{StatePending, StateCreating, StateStarting, StateRunning, StateDraining, StateStopping, StateStopped, StateFailed}

// Health statuses.
const (
	StatusUnknown   = "unknown"
	StatusHealthy   = "healthy"
	StatusUnhealthy = "unhealthy"
)

// Failure kinds of a probe.
const (
	FailureNone              = ""
	FailureTimeout           = "timeout"
	FailureConnectionRefused = "connection_refused"
	FailureConnectionReset   = "connection_reset"
	FailureDNS               = "dns"
	FailureTLS               = "tls"
	FailureHTTPStatus        = "http_status"
	FailureBodyMismatch      = "body_mismatch"
	FailureProtocol          = "protocol"
	// FailureSlow is a probe that passed but took longer than the check's
	// max_response_time.
	FailureSlow = "slow"
	// FailureExitCode is a command that exited non-zero: Docker's
	// HEALTHCHECK (health.type docker) or an exec check (exec). Added
	// within v1.
	FailureExitCode = "exit_code"
)

// Failures lists every failure kind but none.
var Failures = []string{FailureTimeout, FailureConnectionRefused, FailureConnectionReset, FailureDNS, FailureTLS, FailureHTTPStatus, FailureBodyMismatch, FailureProtocol, FailureSlow, FailureExitCode}

// Reload results.
const (
	ReloadApplied  = "applied"  // new config tested, swapped, reloaded and confirmed
	ReloadSkipped  = "skipped"  // rendered config equal to the applied one
	ReloadRejected = "rejected" // some apps failed nginx -t and kept their last good config
	ReloadFailed   = "failed"   // nothing was applied
)

// App is the routing and health view of one app's spec (bucket apps, key <app>).
type App struct {
	Header
	// Name is the app name.
	Name string `json:"name"`
	// Generation is the spec generation this view comes from.
	Generation int64 `json:"generation"`
	// Term is the scheduler leader term that wrote it.
	Term uint64 `json:"term"`
	// Port is the container port traffic goes to.
	Port int `json:"port"`
	// Health is the health check; absent means none.
	Health *spec.Health `json:"health,omitempty"`
	// LB is the nginx upstream configuration.
	LB spec.LB `json:"lb"`
	// Routing is the hosts, paths and TLS.
	Routing spec.Routing `json:"routing"`
	// Drain is how long an instance stays out of nginx before it is stopped.
	Drain spec.Duration `json:"drain"`
	// UpdatedAt is when the leader wrote it.
	UpdatedAt time.Time `json:"updated_at"`
	// CreatedAt is when the app was first created (optional, added within
	// v1): when two apps claim one route, the one created first keeps it.
	CreatedAt time.Time `json:"created_at,omitzero"`
	// HostClaims is when the app first claimed each of its hosts (lower
	// case; "" for the default server) (optional, added within v1): a host
	// belongs to the app that claimed it first (spec.Claims). Absent: every
	// host at CreatedAt.
	HostClaims map[string]time.Time `json:"host_claims,omitempty"`
}

// Claimant is a as the route table sees it (spec.Claims).
func (a *App) Claimant() spec.Claimant {
	return spec.Claimant{Name: a.Name, Created: a.CreatedAt, Claimed: a.HostClaims, Routing: &a.Routing}
}

// Instance is one container of an app (bucket instances, key <app>.<instance>).
type Instance struct {
	Header
	// App is the app name.
	App string `json:"app"`
	// ID is the instance id.
	ID string `json:"id"`
	// Generation is the spec generation the instance runs.
	Generation int64 `json:"generation"`
	// Term is the leader term that wrote this state.
	Term uint64 `json:"term"`
	// Address is where nginx and healthd reach it, "host:port"; empty
	// until the container has one.
	Address string `json:"address,omitempty"`
	// State is one of the State… constants.
	State string `json:"state"`
	// Weight is the nginx server weight, 1–1000.
	Weight int `json:"weight"`
	// Backup makes nginx use it only when no other server is available.
	Backup bool `json:"backup,omitempty"`
	// ContainerID is the Docker container id, when created.
	ContainerID string `json:"container_id,omitempty"`
	// StartedAt is when the container started, when it has.
	StartedAt *time.Time `json:"started_at,omitempty"`
	// UpdatedAt is when the leader wrote it.
	UpdatedAt time.Time `json:"updated_at"`
}

// Health is an instance's current health (bucket health, key <app>.<instance>).
type Health struct {
	Header
	// App is the app name.
	App string `json:"app"`
	// Instance is the instance id.
	Instance string `json:"instance"`
	// Status is healthy, unhealthy or unknown.
	Status string `json:"status"`
	// Failure is the kind of the last failure, empty after a pass.
	Failure string `json:"failure,omitempty"`
	// Message says what the last probe saw, briefly.
	Message string `json:"message,omitempty"`
	// ConsecutiveSuccesses counts passes in a row.
	ConsecutiveSuccesses int `json:"consecutive_successes"`
	// ConsecutiveFailures counts failures in a row.
	ConsecutiveFailures int `json:"consecutive_failures"`
	// LatencyMS is the last probe's duration in milliseconds.
	LatencyMS float64 `json:"latency_ms"`
	// Checker is the healthd that probed it.
	Checker string `json:"checker"`
	// InstanceTerm is the term of the instance record the probe used.
	InstanceTerm uint64 `json:"instance_term"`
	// Generation is the instance's spec generation.
	Generation int64 `json:"generation"`
	// CheckedAt is when the last probe finished.
	CheckedAt time.Time `json:"checked_at"`
	// History is the checker's latest probes of the instance, newest
	// first: at most MaxHealthHistory, and at most MaxHealthHistoryBytes
	// encoded (BoundHistory). Optional: absent from older checkers.
	History []HealthResult `json:"history,omitempty"`
	// FailureCounts counts the instance's failed probes by failure kind
	// since HistorySince. Optional.
	FailureCounts map[string]int64 `json:"failure_counts,omitempty"`
	// Probes counts the instance's probes since HistorySince. Optional.
	Probes int64 `json:"probes,omitempty"`
	// HistorySince is when this checker started the instance's history
	// and counts: its first probe of the instance since it took it (a
	// restart or a shard takeover starts them afresh). Optional.
	HistorySince time.Time `json:"history_since,omitzero"`

	// Sealer is the role whose key sealed this value (bus.Event.Sealer),
	// set by the reader, never from the wire: healthd, or the scheduler
	// for the docker and exec checks it runs (bus.HealthTrusted).
	Sealer string `json:"-"`
}

// HealthResult is one probe in a health value's history.
type HealthResult struct {
	// At is when the probe finished, to the millisecond.
	At time.Time `json:"at"`
	// LatencyMS is the probe's duration in milliseconds, retries included.
	LatencyMS float64 `json:"latency_ms"`
	// Failure is the failure kind, empty for a pass.
	Failure string `json:"failure,omitempty"`
	// Message says what the probe saw, at most MaxHealthResultMessage
	// bytes; older entries may have lost theirs to the byte bound.
	Message string `json:"message,omitempty"`
}

// HealthChange is a health transition (subject health.<app>.<instance>).
type HealthChange struct {
	Header
	// App is the app name.
	App string `json:"app"`
	// Instance is the instance id.
	Instance string `json:"instance"`
	// From is the previous status.
	From string `json:"from"`
	// To is the new status.
	To string `json:"to"`
	// Failure is the failure kind when To is unhealthy.
	Failure string `json:"failure,omitempty"`
	// Message says what the probe saw.
	Message string `json:"message,omitempty"`
	// LatencyMS is the probe's duration in milliseconds.
	LatencyMS float64 `json:"latency_ms"`
	// Checker is the healthd that saw it.
	Checker string `json:"checker"`
	// At is when it happened.
	At time.Time `json:"at"`
}

// Agent is an lbagent's applied state (bucket agents, key <node>, TTL).
type Agent struct {
	Header
	// Node is the agent's node id.
	Node string `json:"node"`
	// AppliedRevision is the highest instances-bucket revision that the
	// running nginx config is confirmed to reflect.
	AppliedRevision uint64 `json:"applied_revision"`
	// Apps maps each app to the generation its served config reflects.
	Apps map[string]int64 `json:"apps"`
	// Errors maps apps whose latest config was refused to why.
	Errors map[string]string `json:"errors,omitempty"`
	// LastError is the last error that was not an app's.
	LastError string `json:"last_error,omitempty"`
	// NginxVersion is what nginx -v reports.
	NginxVersion string `json:"nginx_version,omitempty"`
	// Ejected are the instances this lbagent has taken out of its nginx's
	// rotation for failing real traffic (health.outlier) (optional, added
	// within v1), at most MaxEjected.
	Ejected []Ejection `json:"ejected,omitempty"`
	// Mode is how this lbagent changes nginx's upstreams (optional, added
	// within v1): ModeDynamic or ModeReload. Absent from older lbagents:
	// unknown.
	Mode string `json:"mode,omitempty"`
	// LastReload is its latest nginx reload, or attempt at one that failed
	// (optional, added within v1); absent before the first.
	LastReload *ConfigChange `json:"last_reload,omitempty"`
	// LastPush is its latest endpoint push into nginx (dynamic mode;
	// optional, added within v1); absent before the first.
	LastPush *ConfigChange `json:"last_push,omitempty"`
	// UpdatedAt is when it was written.
	UpdatedAt time.Time `json:"updated_at"`
}

// Agent modes (Agent.Mode).
const (
	// ModeDynamic pushes endpoint changes into the running nginx and
	// reloads only for a change of apps, routes, hosts, TLS or lb settings.
	ModeDynamic = "dynamic"
	// ModeReload renders and reloads nginx for every change.
	ModeReload = "reload"
)

// ConfigChange is one change an lbagent made to its nginx, or tried to:
// a reload (render to confirm) or an endpoint push.
type ConfigChange struct {
	// At is when it finished.
	At time.Time `json:"at"`
	// DurationMS is how long it took, in milliseconds.
	DurationMS float64 `json:"duration_ms"`
	// Revision is the instances-bucket revision it was for.
	Revision uint64 `json:"revision,omitempty"`
	// Error is why it failed; empty when it succeeded.
	Error string `json:"error,omitempty"`
}

// MaxEjected bounds Agent.Ejected.
const MaxEjected = 256

// Ejection is one instance an lbagent ejected (health.outlier): why, since
// when, until when, and how many times in a row.
type Ejection struct {
	App      string    `json:"app"`
	Instance string    `json:"instance"`
	Reason   string    `json:"reason"`
	Since    time.Time `json:"since"`
	Until    time.Time `json:"until"`
	Times    int       `json:"times"`
}

// Certificate is an app's ACME certificate (bucket certificates, key
// <app>), written by the scheduler leader. The chain is public; the
// private key is sealed to each key of the lbagent role (Keys), so that
// only an lbagent can open it: not healthd, not the reader, not NATS.
type Certificate struct {
	Header
	// App is the app the certificate is for.
	App string `json:"app"`
	// Names are the DNS names it covers: the app's hosts, sorted.
	Names []string `json:"names"`
	// Chain is the PEM certificate chain, the leaf first.
	Chain string `json:"chain"`
	// Keys are the PEM private key, sealed once to each lbagent key.
	Keys []SealedKey `json:"keys"`
	// Serial is the leaf's serial number, in hex.
	Serial string `json:"serial"`
	// NotBefore and NotAfter bound the leaf's validity.
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// Term is the scheduler leader term that wrote it.
	Term uint64 `json:"term"`
	// UpdatedAt is when the leader wrote it.
	UpdatedAt time.Time `json:"updated_at"`
}

// SealedKey is a private key sealed to one public key (an anonymous NaCl
// box to the X25519 form of an Ed25519 nkey: docs/nats.md).
type SealedKey struct {
	// To is the recipient's public nkey ("U…").
	To string `json:"to"`
	// Box is the sealed box, in standard base64.
	Box string `json:"box"`
}

// Challenge is one HTTP-01 answer every lbagent serves at
// /.well-known/acme-challenge/<token> for Host (bucket challenges, key
// <token>), while the scheduler leader's ACME order is open.
type Challenge struct {
	Header
	// App is the app whose certificate is being ordered.
	App string `json:"app"`
	// Host is the DNS name the CA is validating.
	Host string `json:"host"`
	// Token is the last path segment the CA asks for.
	Token string `json:"token"`
	// KeyAuthorization is the body to answer with.
	KeyAuthorization string `json:"key_authorization"`
	// Term is the scheduler leader term that wrote it.
	Term uint64 `json:"term"`
	// At is when it was written.
	At time.Time `json:"at"`
}

// Checker is a healthd's heartbeat (bucket checkers, key <checker>, TTL).
type Checker struct {
	Header
	// ID is the checker id.
	ID string `json:"id"`
	// Targets is how many instances it probes.
	Targets int `json:"targets"`
	// StartedAt is when it started.
	StartedAt time.Time `json:"started_at"`
	// HeartbeatAt is when it wrote this.
	HeartbeatAt time.Time `json:"heartbeat_at"`
}

// Node is an lbagent node's public keys (bucket nodes, key <node>), which
// the scheduler leader publishes, sealed with its own key, from the node
// credentials it holds (`scheduler nats-credential lbagent --node`). A
// reader trusts a value of the agents bucket under key <node>, or a
// message on reloads.<node>, sealed by one of these keys, and a metrics
// message sealed by any node's; the scheduler seals certificate keys to
// every key listed.
type Node struct {
	Header
	// Node is the node id, as lbagent's --node.
	Node string `json:"node"`
	// Keys are the node's public nkeys ("U…"): one, or two while its key
	// is rotated (docs/operations.md, Rotating NATS keys).
	Keys []string `json:"keys"`
	// UpdatedAt is when the leader wrote it.
	UpdatedAt time.Time `json:"updated_at"`
}

// Event is a lifecycle event of an app (subject events.<app>.<kind>).
type Event struct {
	Header
	// ID identifies the event (the store's event id).
	ID string `json:"id"`
	// App is the app name.
	App string `json:"app"`
	// Instance is the instance id, when the event is about one.
	Instance string `json:"instance,omitempty"`
	// Kind says what happened.
	Kind EventKind `json:"kind"`
	// Message says it for people.
	Message string `json:"message"`
	// Details are machine-readable specifics.
	Details map[string]string `json:"details,omitempty"`
	// Actor made it happen: the name of the API token whose change it
	// follows, or the scheduler on its own ("scheduler", "autoscaler").
	// Optional: absent from events of schedulers before it.
	Actor string `json:"actor,omitempty"`
	// Term is the leader term that acted.
	Term uint64 `json:"term"`
	// At is when it happened.
	At time.Time `json:"at"`
}

// StatusCounts counts responses by status class.
type StatusCounts struct {
	S1xx int64 `json:"1xx"`
	S2xx int64 `json:"2xx"`
	S3xx int64 `json:"3xx"`
	S4xx int64 `json:"4xx"`
	S5xx int64 `json:"5xx"`
}

// Metrics is one lbagent's traffic to one app over one window (subject metrics.<app>).
type Metrics struct {
	Header
	// Node is the lbagent's node id.
	Node string `json:"node"`
	// App is the app name.
	App string `json:"app"`
	// WindowStart is when the window began.
	WindowStart time.Time `json:"window_start"`
	// Window is the window's length.
	Window spec.Duration `json:"window"`
	// Requests is the number of requests in the window.
	Requests int64 `json:"requests"`
	// RPS is Requests per second of the window.
	RPS float64 `json:"rps"`
	// Status counts responses by class.
	Status StatusCounts `json:"status"`
	// P50MS, P95MS and P99MS are upstream response time quantiles in milliseconds.
	P50MS float64 `json:"p50_ms"`
	P95MS float64 `json:"p95_ms"`
	P99MS float64 `json:"p99_ms"`
	// UpstreamErrors counts requests nginx could not pass to any upstream.
	UpstreamErrors int64 `json:"upstream_errors"`
	// LatencyHistogram is the window's upstream response time distribution
	// (optional, added within v1): unlike the quantiles above, histograms of
	// several lbagents merge into the app's true quantiles.
	LatencyHistogram *Histogram `json:"latency_histogram,omitempty"`
}

// MaxUsageInstances caps the instances of one Usage message.
const MaxUsageInstances = 1000

// Usage is the leader's CPU and memory reading of an app's instances
// (subject usage.<app>), from one-shot Docker stats, once per stats
// interval. Every scheduler replica keeps these for the autoscaler, so a new
// leader starts with the window its predecessor had.
type Usage struct {
	Header
	// App is the app name.
	App string `json:"app"`
	// Instances are the readings, one per running instance.
	Instances []InstanceUsage `json:"instances"`
	// Term is the leader term that read them.
	Term uint64 `json:"term"`
	// At is when the readings were taken.
	At time.Time `json:"at"`
}

// InstanceUsage is one instance's reading.
type InstanceUsage struct {
	// Instance is the instance id.
	Instance string `json:"instance"`
	// CPUPercent is CPU use since the previous reading in percent of the
	// container's CPU limit (or of one core without a limit); it can exceed
	// 100 briefly.
	CPUPercent float64 `json:"cpu_percent"`
	// MemoryPercent is memory in use (page cache excluded) in percent of the
	// container's memory limit; MemoryBytes is the same in bytes.
	MemoryPercent float64 `json:"memory_percent"`
	MemoryBytes   uint64  `json:"memory_bytes"`
}

// Reload is the result of one lbagent config change (subject reloads.<node>).
type Reload struct {
	Header
	// Node is the lbagent's node id.
	Node string `json:"node"`
	// Result is one of the Reload… constants.
	Result string `json:"result"`
	// DurationMS is render to confirm, in milliseconds.
	DurationMS float64 `json:"duration_ms"`
	// Revision is the instances-bucket revision the config reflects.
	Revision uint64 `json:"revision"`
	// Error is why it failed, for failed results.
	Error string `json:"error,omitempty"`
	// FailedApps maps apps left on their last good config to why.
	FailedApps map[string]string `json:"failed_apps,omitempty"`
	// At is when it finished.
	At time.Time `json:"at"`
}

// MessageType returns TypeApp.
func (*App) MessageType() string { return TypeApp }

// MessageType returns TypeInstance.
func (*Instance) MessageType() string { return TypeInstance }

// MessageType returns TypeHealth.
func (*Health) MessageType() string { return TypeHealth }

// MessageType returns TypeHealthChange.
func (*HealthChange) MessageType() string { return TypeHealthChange }

// MessageType returns TypeAgent.
func (*Agent) MessageType() string { return TypeAgent }

// MessageType returns TypeChecker.
func (*Checker) MessageType() string { return TypeChecker }

// MessageType returns TypeEvent.
func (*Event) MessageType() string { return TypeEvent }

// MessageType returns TypeMetrics.
func (*Metrics) MessageType() string { return TypeMetrics }

// MessageType returns TypeUsage.
func (*Usage) MessageType() string { return TypeUsage }

// MessageType returns TypeReload.
func (*Reload) MessageType() string { return TypeReload }

// MessageType implements Message.
func (*Certificate) MessageType() string { return TypeCertificate }

// MessageType implements Message.
func (*Challenge) MessageType() string { return TypeChallenge }

// MessageType returns TypeNode.
func (*Node) MessageType() string { return TypeNode }

// Validate re-checks every string that will reach nginx with the spec's
// grammars, so a value that slipped past the API still cannot inject
// directives.
func (m *App) Validate() error {
	var es spec.Errors
	es.Check("name", spec.CheckName(m.Name))
	positive(&es, "generation", m.Generation)
	if m.Port < 1 || m.Port > 65535 {
		es.Add("port", "(%d) must be between 1 and 65535", m.Port)
	}
	if m.Health != nil {
		es = append(es, m.Health.Validate("health")...)
	}
	es = append(es, m.LB.Validate("lb")...)
	es = append(es, m.Routing.Validate("routing")...)
	if len(m.Routing.Paths) == 0 && len(m.Routing.Rules) == 0 {
		es.Add("routing.paths", "must list at least one path, or routing.rules one rule")
	}
	if m.Drain < 0 {
		es.Add("drain", "must not be negative")
	}
	when(&es, "updated_at", m.UpdatedAt)
	return es.Err()
}

// Validate checks ids, state, address and weight.
func (m *Instance) Validate() error {
	var es spec.Errors
	es.Check("app", spec.CheckName(m.App))
	es.Check("id", CheckInstanceID(m.ID))
	positive(&es, "generation", m.Generation)
	oneOf(&es, "state", m.State, States)
	switch {
	case m.Address != "":
		es.Check("address", CheckAddress(m.Address))
	case m.State == StateStarting || m.State == StateRunning || m.State == StateDraining:
		es.Add("address", "must be set in state %s", m.State)
	}
	if m.Weight < 1 || m.Weight > 1000 {
		es.Add("weight", "(%d) must be between 1 and 1000", m.Weight)
	}
	if m.ContainerID != "" && !containerIDRe.MatchString(m.ContainerID) {
		es.Add("container_id", "%q is not a container id (12-64 lowercase hex digits)", m.ContainerID)
	}
	when(&es, "updated_at", m.UpdatedAt)
	return es.Err()
}

// Validate checks ids, status, failure kind and counts.
func (m *Health) Validate() error {
	var es spec.Errors
	es.Check("app", spec.CheckName(m.App))
	es.Check("instance", CheckInstanceID(m.Instance))
	oneOf(&es, "status", m.Status, []string{StatusUnknown, StatusHealthy, StatusUnhealthy})
	if m.Failure != FailureNone {
		oneOf(&es, "failure", m.Failure, Failures)
	}
	text(&es, "message", m.Message)
	if m.ConsecutiveSuccesses < 0 || m.ConsecutiveFailures < 0 || m.LatencyMS < 0 {
		es.Add("consecutive_successes", "counts and latency_ms must not be negative")
	}
	es.Check("checker", CheckToken(m.Checker))
	when(&es, "checked_at", m.CheckedAt)
	validateHistory(&es, m)
	return es.Err()
}

// Validate checks ids and statuses.
func (m *HealthChange) Validate() error {
	var es spec.Errors
	es.Check("app", spec.CheckName(m.App))
	es.Check("instance", CheckInstanceID(m.Instance))
	statuses := []string{StatusUnknown, StatusHealthy, StatusUnhealthy}
	oneOf(&es, "from", m.From, statuses)
	oneOf(&es, "to", m.To, statuses)
	if m.Failure != FailureNone {
		oneOf(&es, "failure", m.Failure, Failures)
	}
	text(&es, "message", m.Message)
	es.Check("checker", CheckToken(m.Checker))
	when(&es, "at", m.At)
	return es.Err()
}

// Validate checks the node id and the app names.
func (m *Agent) Validate() error {
	var es spec.Errors
	es.Check("node", CheckToken(m.Node))
	for _, app := range sortedKeys(m.Apps) {
		es.Check(spec.Key("apps", app), spec.CheckName(app))
	}
	for _, app := range sortedKeys(m.Errors) {
		es.Check(spec.Key("errors", app), spec.CheckName(app))
		text(&es, spec.Key("errors", app), m.Errors[app])
	}
	text(&es, "last_error", m.LastError)
	text(&es, "nginx_version", m.NginxVersion)
	if len(m.Ejected) > MaxEjected {
		es.Add("ejected", "has %d entries; at most %d", len(m.Ejected), MaxEjected)
	}
	for i, e := range m.Ejected {
		p := fmt.Sprintf("ejected[%d]", i)
		es.Check(spec.Join(p, "app"), spec.CheckName(e.App))
		es.Check(spec.Join(p, "instance"), CheckToken(e.Instance))
		text(&es, spec.Join(p, "reason"), e.Reason)
		if e.Times < 1 {
			es.Add(spec.Join(p, "times"), "(%d) must be at least 1", e.Times)
		}
	}
	if m.Mode != "" {
		oneOf(&es, "mode", m.Mode, []string{ModeDynamic, ModeReload})
	}
	checkChange(&es, "last_reload", m.LastReload)
	checkChange(&es, "last_push", m.LastPush)
	when(&es, "updated_at", m.UpdatedAt)
	return es.Err()
}

// checkChange checks an optional ConfigChange at path.
func checkChange(es *spec.Errors, path string, c *ConfigChange) {
	if c == nil {
		return
	}
	when(es, spec.Join(path, "at"), c.At)
	if !(c.DurationMS >= 0) || math.IsInf(c.DurationMS, 1) {
		es.Add(spec.Join(path, "duration_ms"), "must be a finite number, not negative")
	}
	text(es, spec.Join(path, "error"), c.Error)
}

// Certificate bounds: a chain of a few certificates, a key sealed to
// every lbagent key: the role's shared keys and each node's (one, or two
// while a key is rotated), so about 120 nodes with keys of their own.
// An ECDSA key sealed to all 256 keeps the message near 120 KiB, under
// MaxMessageSize.
const (
	MaxChainLen  = 64 << 10
	MaxSealedKey = 8 << 10
	MaxKeys      = 256
	MaxCertNames = 100 // the most names a public CA signs in one certificate
)

var (
	serialRe  = regexp.MustCompile(`^[0-9a-f]{1,64}$`)
	acmeRe    = regexp.MustCompile(`^[A-Za-z0-9_-]{16,128}$`)
	keyAuthRe = regexp.MustCompile(`^[A-Za-z0-9_-]{16,128}\.[A-Za-z0-9_-]{16,128}$`)
	base64Re  = regexp.MustCompile(`^[A-Za-z0-9+/]+={0,2}$`)
	nkeyRe    = regexp.MustCompile(`^U[A-Z2-7]{55}$`)
)

// Validate checks the names, the chain's framing, the sealed keys and the
// validity window; lbagent parses the chain and opens its key.
func (m *Certificate) Validate() error {
	var es spec.Errors
	es.Check("app", spec.CheckName(m.App))
	if len(m.Names) == 0 || len(m.Names) > MaxCertNames {
		es.Add("names", "has %d names; want 1 to %d", len(m.Names), MaxCertNames)
	}
	for i, n := range m.Names {
		es.Check(spec.Index("names", i), spec.CheckHost(n))
	}
	switch {
	case len(m.Chain) > MaxChainLen:
		es.Add("chain", "has %d bytes; at most %d", len(m.Chain), MaxChainLen)
	case !strings.HasPrefix(m.Chain, "-----BEGIN CERTIFICATE-----\n"):
		es.Add("chain", "must be a PEM certificate chain")
	case strings.ContainsFunc(m.Chain, func(r rune) bool { return (r < 0x20 && r != '\n' && r != '\r') || r >= 0x7f }):
		es.Add("chain", "must be PEM: printable ASCII lines")
	}
	if len(m.Keys) == 0 || len(m.Keys) > MaxKeys {
		es.Add("keys", "has %d sealed keys; want 1 to %d", len(m.Keys), MaxKeys)
	}
	for i, k := range m.Keys {
		if !nkeyRe.MatchString(k.To) {
			es.Add(spec.Index("keys", i)+".to", "%q is not a user public nkey (U and 55 base32 characters)", Truncate(k.To, 64))
		}
		if len(k.Box) > MaxSealedKey || !base64Re.MatchString(k.Box) {
			es.Add(spec.Index("keys", i)+".box", "must be standard base64 of at most %d bytes", MaxSealedKey)
		}
	}
	if !serialRe.MatchString(m.Serial) {
		es.Add("serial", "must be 1-64 lowercase hex digits")
	}
	when(&es, "not_before", m.NotBefore)
	when(&es, "not_after", m.NotAfter)
	if !m.NotAfter.After(m.NotBefore) {
		es.Add("not_after", "must be after not_before")
	}
	when(&es, "updated_at", m.UpdatedAt)
	return es.Err()
}

// Validate checks the token and key authorization against RFC 8555's
// grammar (base64url), so that neither can carry anything but itself.
func (m *Challenge) Validate() error {
	var es spec.Errors
	es.Check("app", spec.CheckName(m.App))
	es.Check("host", spec.CheckHost(m.Host))
	if strings.HasPrefix(m.Host, "*") {
		es.Add("host", "%q: HTTP-01 validates no wildcard", m.Host)
	}
	if !acmeRe.MatchString(m.Token) {
		es.Add("token", "must be 16-128 base64url characters")
	}
	if !keyAuthRe.MatchString(m.KeyAuthorization) || !strings.HasPrefix(m.KeyAuthorization, m.Token+".") {
		es.Add("key_authorization", "must be the token, '.', and a base64url thumbprint")
	}
	when(&es, "at", m.At)
	return es.Err()
}

// MaxNodeKeys bounds the keys of one node: its key, the next one while it
// is rotated, and room to spare.
const MaxNodeKeys = 4

// Validate checks the node id and that each key is a user public nkey,
// listed once.
func (m *Node) Validate() error {
	var es spec.Errors
	es.Check("node", CheckToken(m.Node))
	if len(m.Keys) == 0 || len(m.Keys) > MaxNodeKeys {
		es.Add("keys", "has %d keys; want 1 to %d", len(m.Keys), MaxNodeKeys)
	}
	seen := map[string]bool{}
	for i, k := range m.Keys {
		switch {
		case !nkeyRe.MatchString(k):
			es.Add(spec.Index("keys", i), "%q is not a user public nkey (U and 55 base32 characters)", Truncate(k, 64))
		case seen[k]:
			es.Add(spec.Index("keys", i), "%s is listed twice", k)
		}
		seen[k] = true
	}
	when(&es, "updated_at", m.UpdatedAt)
	return es.Err()
}

// Validate checks the checker id.
func (m *Checker) Validate() error {
	var es spec.Errors
	es.Check("id", CheckToken(m.ID))
	if m.Targets < 0 {
		es.Add("targets", "must not be negative")
	}
	when(&es, "heartbeat_at", m.HeartbeatAt)
	return es.Err()
}

// Validate checks the app, kind and texts.
func (m *Event) Validate() error {
	var es spec.Errors
	if m.ID == "" || len(m.ID) > 64 {
		es.Add("id", "must be 1-64 characters")
	}
	es.Check("app", spec.CheckName(m.App))
	if m.Instance != "" {
		es.Check("instance", CheckInstanceID(m.Instance))
	}
	es.Check("kind", CheckToken(string(m.Kind)))
	if m.Actor != "" {
		es.Check("actor", CheckToken(m.Actor))
	}
	text(&es, "message", m.Message)
	if len(m.Details) > 64 {
		es.Add("details", "has %d entries; at most 64", len(m.Details))
	}
	for _, k := range sortedKeys(m.Details) {
		es.Check(spec.Key("details", k), CheckToken(k))
		text(&es, spec.Key("details", k), m.Details[k])
	}
	when(&es, "at", m.At)
	return es.Err()
}

// Validate checks ids and that counts are not negative.
func (m *Metrics) Validate() error {
	var es spec.Errors
	es.Check("node", CheckToken(m.Node))
	es.Check("app", spec.CheckName(m.App))
	if m.Window <= 0 {
		es.Add("window", "must be positive")
	}
	s := m.Status
	if m.Requests < 0 || m.RPS < 0 || m.UpstreamErrors < 0 || s.S1xx < 0 || s.S2xx < 0 || s.S3xx < 0 || s.S4xx < 0 || s.S5xx < 0 {
		es.Add("requests", "counts must not be negative")
	}
	if m.P50MS < 0 || m.P95MS < 0 || m.P99MS < 0 {
		es.Add("p50_ms", "latencies must not be negative")
	}
	if m.LatencyHistogram != nil {
		if field, problem := m.LatencyHistogram.validate(); problem != "" {
			es.Add("latency_histogram"+field, "%s", problem)
		}
	}
	when(&es, "window_start", m.WindowStart)
	return es.Err()
}

// Validate checks the app, the instance ids and that every figure is a
// finite, non-negative number.
func (m *Usage) Validate() error {
	var es spec.Errors
	es.Check("app", spec.CheckName(m.App))
	if len(m.Instances) > MaxUsageInstances {
		es.Add("instances", "%d readings, at most %d", len(m.Instances), MaxUsageInstances)
	} else {
		for i, u := range m.Instances {
			path := fmt.Sprintf("instances[%d]", i)
			es.Check(path+".instance", CheckInstanceID(u.Instance))
			if !(u.CPUPercent >= 0 && u.CPUPercent <= 1e6) || !(u.MemoryPercent >= 0 && u.MemoryPercent <= 1e6) {
				es.Add(path, "percentages must be finite numbers from 0 to 1e6")
			}
		}
	}
	when(&es, "at", m.At)
	return es.Err()
}

// Validate checks the node, result and texts.
func (m *Reload) Validate() error {
	var es spec.Errors
	es.Check("node", CheckToken(m.Node))
	oneOf(&es, "result", m.Result, []string{ReloadApplied, ReloadSkipped, ReloadRejected, ReloadFailed})
	text(&es, "error", m.Error)
	for _, app := range sortedKeys(m.FailedApps) {
		es.Check(spec.Key("failed_apps", app), spec.CheckName(app))
		text(&es, spec.Key("failed_apps", app), m.FailedApps[app])
	}
	if m.DurationMS < 0 {
		es.Add("duration_ms", "must not be negative")
	}
	when(&es, "at", m.At)
	return es.Err()
}

var containerIDRe = regexp.MustCompile(`^[0-9a-f]{12,64}$`)

// CheckAddress checks an address nginx puts in a server or listen line:
// "ip:port" or "[ipv6]:port", the port 1–65535 without leading zeros. Host
// names, IPv6 zones ("%eth0") and anything else are refused: what is left
// is ASCII digits, hex, '.', ':' and brackets, safe in nginx config.
func CheckAddress(s string) error {
	if !addressOK(s) {
		return fmt.Errorf("%q is not a valid address (ip:port or [ipv6]:port, with no zone)", s)
	}
	return nil
}

func addressOK(s string) bool {
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Addr().Zone() != "" || ap.Port() == 0 || !spec.NginxSafe(s) {
		return false
	}
	// ParseAddrPort takes ports with leading zeros; nginx reads them too,
	// but one address must have one spelling.
	return strconv.Itoa(int(ap.Port())) == s[strings.LastIndex(s, ":")+1:]
}

func positive(es *spec.Errors, path string, v int64) {
	if v < 1 {
		es.Add(path, "(%d) must be at least 1", v)
	}
}

func oneOf(es *spec.Errors, path, v string, allowed []string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	es.Add(path, "%q is not one of %s", v, strings.Join(allowed, ", "))
}

// text checks free text: at most MaxTextLen bytes of valid UTF-8 without
// control characters other than tab and newline.
func text(es *spec.Errors, path, s string) {
	if len(s) > MaxTextLen {
		es.Add(path, "has %d bytes; at most %d", len(s), MaxTextLen)
		return
	}
	for _, r := range s {
		if r == 0xFFFD || (r < 0x20 && r != '\t' && r != '\n') || r == 0x7f {
			es.Add(path, "must be valid UTF-8 text without control characters")
			return
		}
	}
}

func when(es *spec.Errors, path string, t time.Time) {
	if t.IsZero() {
		es.Add(path, "must be set")
	}
}
