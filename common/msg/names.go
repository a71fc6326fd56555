// Package msg is Berth's public NATS contract, version 1: the KV buckets and
// subjects, derived from one prefix, and every message that crosses them.
// External tooling builds on it, so within v1 fields are only ever added,
// and only as optional ones.
//
// Every message is JSON with a "type" ("berth.instance.v1") and snake_case
// fields. Decode is strict about what matters and lenient about what must
// stay compatible: it caps the size, rejects missing and unknown types, and
// validates every field, but it ignores fields it does not know, so that an
// older consumer keeps working when a newer producer adds an optional field.
// Messages written by the scheduler leader carry its term; consumers drop a
// write from a lower term than they have seen for the key (see Fence).
package msg

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/berthhq/berth/common/spec"
)

// DefaultPrefix is the prefix of every bucket and subject unless --prefix says otherwise.
const DefaultPrefix = "berth"

// Version is the contract version in subject names.
const Version = "v1"

var (
	prefixRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)
	// tokenRe is a NATS subject token that is also a valid KV key part:
	// no '.', '*', '>' or whitespace.
	tokenRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)
	// idRe is an instance id: lowercase letters and digits, '-' inside.
	idRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
)

// Names derives every bucket and subject name from one prefix, so several
// environments can share one NATS cluster.
type Names struct {
	prefix string
}

// NewNames validates prefix: 1–32 of letters, digits, '_' and '-', the
// characters valid both in a NATS subject token and in a bucket name.
func NewNames(prefix string) (Names, error) {
	if !prefixRe.MatchString(prefix) {
		return Names{}, fmt.Errorf("prefix %q: must be 1-32 letters, digits, '_' or '-' (a NATS subject token and bucket name)", prefix)
	}
	return Names{prefix: prefix}, nil
}

// Prefix returns the prefix.
func (n Names) Prefix() string { return n.prefix }

// AppsBucket holds the routing and health view of each app, keyed by app.
func (n Names) AppsBucket() string { return n.prefix + "_apps" }

// InstancesBucket holds each instance, keyed "<app>.<instance>".
func (n Names) InstancesBucket() string { return n.prefix + "_instances" }

// HealthBucket holds each instance's health, keyed "<app>.<instance>".
func (n Names) HealthBucket() string { return n.prefix + "_health" }

// AgentsBucket holds each lbagent's applied state, keyed by node.
func (n Names) AgentsBucket() string { return n.prefix + "_agents" }

// CheckersBucket holds each healthd's heartbeat, keyed by checker id.
func (n Names) CheckersBucket() string { return n.prefix + "_checkers" }

// CertificatesBucket holds each ACME certificate, keyed by app: the chain
// in the clear, the private key sealed to the lbagent role's keys.
func (n Names) CertificatesBucket() string { return n.prefix + "_certificates" }

// ChallengesBucket holds the HTTP-01 answers lbagents serve while an ACME
// order is open, keyed by token.
func (n Names) ChallengesBucket() string { return n.prefix + "_challenges" }

// NodesBucket holds each lbagent node's public keys, keyed by node: the
// node-key directory the scheduler publishes (docs/nats.md, Sealed records).
func (n Names) NodesBucket() string { return n.prefix + "_nodes" }

func (n Names) subject(parts ...string) string {
	return n.prefix + "." + Version + "." + strings.Join(parts, ".")
}

// EventsSubject is where the scheduler publishes an app's lifecycle events.
func (n Names) EventsSubject(app string, kind EventKind) string {
	return n.subject("events", app, string(kind))
}

// AllEvents matches every event of every app.
func (n Names) AllEvents() string { return n.subject("events", ">") }

// AppEvents matches every event of one app.
func (n Names) AppEvents(app string) string { return n.subject("events", app, "*") }

// HealthSubject is where healthd publishes an instance's health transitions.
func (n Names) HealthSubject(app, instance string) string { return n.subject("health", app, instance) }

// AllHealth matches every health transition.
func (n Names) AllHealth() string { return n.subject("health", ">") }

// MetricsSubject is where each lbagent publishes an app's traffic metrics.
func (n Names) MetricsSubject(app string) string { return n.subject("metrics", app) }

// AllMetrics matches the traffic metrics of every app.
func (n Names) AllMetrics() string { return n.subject("metrics", "*") }

// UsageSubject is where the leading scheduler publishes an app's CPU and
// memory readings.
func (n Names) UsageSubject(app string) string { return n.subject("usage", app) }

// AllUsage matches the CPU and memory readings of every app.
func (n Names) AllUsage() string { return n.subject("usage", "*") }

// ReloadsSubject is where an lbagent publishes each reload's result.
func (n Names) ReloadsSubject(node string) string { return n.subject("reloads", node) }

// AllReloads matches every lbagent's reloads.
func (n Names) AllReloads() string { return n.subject("reloads", "*") }

// InstanceKey is the key of an instance in the instances and health buckets.
func InstanceKey(app, instance string) string { return app + "." + instance }

// ParseInstanceKey splits "<app>.<instance>" and checks both parts.
func ParseInstanceKey(key string) (app, instance string, err error) {
	app, instance, ok := strings.Cut(key, ".")
	if !ok {
		return "", "", fmt.Errorf("key %q: want <app>.<instance>", key)
	}
	if err := spec.CheckName(app); err != nil {
		return "", "", fmt.Errorf("key %q: app: %w", key, err)
	}
	if err := CheckInstanceID(instance); err != nil {
		return "", "", fmt.Errorf("key %q: instance: %w", key, err)
	}
	return app, instance, nil
}

// CheckInstanceID checks an instance id: 1–63 lowercase letters, digits and
// '-', starting and ending with a letter or digit.
func CheckInstanceID(s string) error {
	if !idRe.MatchString(s) {
		return fmt.Errorf("%q is not a valid instance id (1-63 lowercase letters, digits and '-', starting and ending with a letter or digit)", s)
	}
	return nil
}

// CheckToken checks a node id, checker id or event kind: 1–128 letters,
// digits, '_' and '-', so it is one NATS subject token and one KV key.
func CheckToken(s string) error {
	if !tokenRe.MatchString(s) {
		return fmt.Errorf("%q is not a valid id (1-128 letters, digits, '_' or '-')", s)
	}
	return nil
}

// NodeID turns a host name ("web-1.example.com") into a valid node token
// ("web-1-example-com").
func NodeID(hostname string) string {
	var b strings.Builder
	for _, r := range hostname {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	s := b.String()
	if len(s) > 128 {
		s = s[:128]
	}
	if s == "" {
		s = "node"
	}
	return s
}

// Bucket is what the contract expects of one KV bucket.
type Bucket struct {
	// Name is the bucket name.
	Name string
	// Description says what it holds.
	Description string
	// History is the values kept per key.
	History uint8
	// TTL expires keys not written again in time; zero keeps them.
	TTL time.Duration
	// MaxBytes caps what the bucket stores (values and delete markers).
	MaxBytes int64
	// MaxConsumers caps the watches of the bucket at once.
	MaxConsumers int
}

// Bucket limits. Each MaxBytes holds its bucket at the scale Berth plans
// for (10,000 apps, 100,000 instances, 100 edge nodes, 100 checkers) about
// twice over, counting a sealed value with its subject and the server's
// overhead, and the delete markers of 30 minutes (bus.DeleteMarkerAge) of
// every instance replaced; docs/nats.md shows the arithmetic. A full bucket
// refuses new keys (bus.ErrBucketFull says what to do), never drops one.
// MaxConsumers bounds what one credential can make the server hold for a
// stream, above every daemon of such a fleet and its tools.
const (
	// MaxBytesInstances: 100,000 × ~600 B, plus 100,000 markers × ~270 B.
	MaxBytesInstances = 256 << 20
	// MaxBytesHealth: 100,000 × ~2.2 KB typically (a history of twenty
	// passes), ≤ 4.5 KB at worst (twenty failures with messages, a
	// 512-byte failure message), plus markers: ≤ 477 MB.
	MaxBytesHealth = 512 << 20
	// MaxBytesApps: 10,000 × ~2 KB typically (a view of ~25 KB each fits).
	MaxBytesApps = 256 << 20
	// MaxBytesCertificates: 10,000 × ~20 KB (a chain and a key sealed to
	// each of 100 lbagent keys).
	MaxBytesCertificates = 512 << 20
	// MaxBytesAgents (memory): 100 nodes × ~220 KB (10,000 apps'
	// generations each).
	MaxBytesAgents = 64 << 20
	// MaxBytesCheckers (memory): 1,000 heartbeats × ~300 B.
	MaxBytesCheckers = 1 << 20
	// MaxBytesChallenges (memory): 10,000 open answers × ~600 B.
	MaxBytesChallenges = 8 << 20
	// MaxBytesNodes: 1,000 nodes × ~400 B (a node's keys, two while one
	// rotates).
	MaxBytesNodes = 4 << 20
	// MaxConsumers: 1,000 lbagents, 100 checkers, the scheduler replicas
	// and tools, four times over.
	MaxConsumers = 4096
)

// Bucket TTLs: an agent or checker that stops heartbeating disappears.
// Heartbeats come every third of the TTL.
const (
	AgentTTL   = 30 * time.Second
	CheckerTTL = 15 * time.Second
	// ChallengeTTL bounds how long an ACME answer outlives an order that
	// did not clean it up (a leader that died mid-order).
	ChallengeTTL = 10 * time.Minute
)

// CheckerDeadAfter is when a checker whose heartbeat stopped counts as gone
// to its peers: two missed heartbeats and a second, well inside the TTL, so
// its targets move before the bucket forgets it.
const CheckerDeadAfter = 2*CheckerTTL/3 + time.Second

// Buckets lists every bucket of the contract with its history and TTL.
func (n Names) Buckets() []Bucket {
	out := []Bucket{
		// History 1: an older sealed record a bucket keeps is one any reader
		// can have the server copy back onto its key (docs/nats.md, Sealed
		// records); events and the API keep the history.
		{Name: n.AppsBucket(), Description: "Berth v1: routing and health view of each app, by app", History: 1, MaxBytes: MaxBytesApps},
		{Name: n.InstancesBucket(), Description: "Berth v1: instances, by <app>.<instance>", History: 1, MaxBytes: MaxBytesInstances},
		{Name: n.HealthBucket(), Description: "Berth v1: instance health, by <app>.<instance>", History: 1, MaxBytes: MaxBytesHealth},
		{Name: n.AgentsBucket(), Description: "Berth v1: lbagent applied state, by node", History: 1, TTL: AgentTTL, MaxBytes: MaxBytesAgents},
		{Name: n.CheckersBucket(), Description: "Berth v1: healthd heartbeats, by checker", History: 1, TTL: CheckerTTL, MaxBytes: MaxBytesCheckers},
		{Name: n.CertificatesBucket(), Description: "Berth v1: ACME certificates (keys sealed to lbagents), by app", History: 1, MaxBytes: MaxBytesCertificates},
		{Name: n.ChallengesBucket(), Description: "Berth v1: ACME HTTP-01 answers, by token", History: 1, TTL: ChallengeTTL, MaxBytes: MaxBytesChallenges},
		{Name: n.NodesBucket(), Description: "Berth v1: lbagent node keys, by node", History: 1, MaxBytes: MaxBytesNodes},
	}
	for i := range out {
		out[i].MaxConsumers = MaxConsumers
	}
	return out
}
