package bus

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"sync"

	"github.com/berthhq/berth/common/msg"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Roles: each daemon connects to NATS with a credential of its own role,
// and a role may publish only what it owns (see Permissions).
const (
	// RoleScheduler writes the apps, instances, certificates and
	// challenges buckets and publishes events and usage.
	RoleScheduler = "scheduler"
	// RoleHealthd writes the health and checkers buckets and publishes
	// health transitions.
	RoleHealthd = "healthd"
	// RoleLBAgent writes the agents bucket and publishes metrics and reloads.
	RoleLBAgent = "lbagent"
	// RoleReader reads every bucket and subject and writes nothing: the
	// role for external tooling.
	RoleReader = "reader"
)

// Roles returns every role, in a fixed order.
func Roles() []string {
	return []string{RoleScheduler, RoleHealthd, RoleLBAgent, RoleReader}
}

// ErrUnknownRole is a role that is not one of Roles.
var ErrUnknownRole = errors.New("bus: unknown role")

// grant is what one role owns and follows.
type grant struct {
	// buckets are the buckets the role writes and creates.
	buckets []string
	// streams are buckets the role creates and updates, whose keys it
	// does not write: the scheduler makes the agents bucket, so that an
	// lbagent with a node key of its own needs no right over the stream
	// its peers' records are in.
	streams []string
	// cowrite are buckets whose keys the role writes beside their owner,
	// without creating, updating, purging or deleting the bucket: the
	// scheduler writes the health of the instances whose check it runs
	// (health.type docker or exec). Which keys is the readers' rule
	// (HealthWriter): subject permissions cannot follow an app's spec.
	cowrite []string
	// publish are the plain subjects (patterns) the role publishes.
	publish []string
	// subscribe are the plain subjects (patterns) the role subscribes to.
	subscribe []string
}

// grantOf is the contract's ownership table (DESIGN.md, "NATS contract").
// Every role reads every bucket, so that is not listed here. Subscriptions
// are the plain subjects each role's code follows: the scheduler its
// traffic metrics and usage (autoscaling) and events (its "events
// --follow" command); healthd and lbagent none.
func grantOf(n msg.Names, role string) (grant, error) {
	switch role {
	case RoleScheduler:
		return grant{
			buckets:   []string{n.AppsBucket(), n.InstancesBucket(), n.CertificatesBucket(), n.ChallengesBucket(), n.NodesBucket()},
			streams:   []string{n.AgentsBucket(), n.HealthBucket()},
			cowrite:   []string{n.HealthBucket()},
			publish:   []string{n.AllEvents(), n.AllUsage()},
			subscribe: []string{n.AllEvents(), n.AllMetrics(), n.AllUsage()},
		}, nil
	case RoleHealthd:
		return grant{
			buckets: []string{n.HealthBucket(), n.CheckersBucket()},
			publish: []string{n.AllHealth()},
		}, nil
	case RoleLBAgent:
		return grant{
			buckets: []string{n.AgentsBucket()},
			publish: []string{n.AllMetrics(), n.AllReloads()},
		}, nil
	case RoleReader:
		return grant{
			// Every subject of the contract, as one wildcard, so that
			// tooling can follow them all in one subscription.
			subscribe: []string{n.Prefix() + ".v1.>"},
		}, nil
	}
	return grant{}, fmt.Errorf("%w %q: want one of %v", ErrUnknownRole, role, Roles())
}

// OwnedBuckets is the part of ContractBuckets that role writes, and so
// creates: a daemon connected with its role's credential passes it to
// EnsureBuckets, since creating a bucket another role owns is refused.
// The buckets it only reads appear when their owner starts; until then a
// Watcher of one waits (see Watcher.Run). The reader owns none, and an
// lbagent with a node key of its own creates none (NodePermissions).
func OwnedBuckets(n msg.Names, role string) ([]BucketConfig, error) {
	return bucketsOf(n, role, func(g grant) []string { return g.buckets })
}

// ManagedBuckets is the part of ContractBuckets whose stream role creates
// and updates without writing its keys: the scheduler makes the agents
// bucket, so that lbagents with node keys of their own need no right over
// the stream their peers' records are in. The scheduler ensures them with
// its own.
func ManagedBuckets(n msg.Names, role string) ([]BucketConfig, error) {
	return bucketsOf(n, role, func(g grant) []string { return g.streams })
}

func bucketsOf(n msg.Names, role string, of func(grant) []string) ([]BucketConfig, error) {
	g, err := grantOf(n, role)
	if err != nil {
		return nil, err
	}
	var out []BucketConfig
	for _, b := range ContractBuckets(n) {
		if slices.Contains(of(g), b.Name) {
			out = append(out, b)
		}
	}
	return out, nil
}

// JetStream API subjects, as nats.go's KV API (the jetstream package, whose
// watches use the legacy push API underneath) sends them.
const (
	jsAPI = "$JS.API."
	// jsFC is where a client answers a push consumer's flow control request:
	// $JS.FC.<stream>.<consumer>.<n>, or with the v2 ack format
	// $JS.FC.<domain>.<account hash>.<stream>.<consumer>.<n>.
	jsFC = "$JS.FC."
	// replies is where replies and watch deliveries arrive (nats.go's default
	// inbox prefix, which Connect keeps).
	replies = "_INBOX.>"
)

// kvStream is the stream behind a bucket.
func kvStream(bucket string) string { return "KV_" + bucket }

// readSubjects are what a client publishes to read and watch bucket:
// stream info (open, status, the watcher's bucket check), consumer create
// and delete (a watch is an ordered push consumer, created with the filter
// subject in the API subject and deleted when the watch stops), direct get
// and message get (Get), and flow control replies (ordered consumers ask
// for them).
func readSubjects(bucket string) []string {
	s := kvStream(bucket)
	return []string{
		jsAPI + "STREAM.INFO." + s,
		jsAPI + "CONSUMER.CREATE." + s,
		jsAPI + "CONSUMER.CREATE." + s + ".>",
		jsAPI + "CONSUMER.DELETE." + s + ".*",
		jsAPI + "DIRECT.GET." + s,
		jsAPI + "DIRECT.GET." + s + ".>",
		jsAPI + "STREAM.MSG.GET." + s,
		jsFC + s + ".>",
		jsFC + "*.*." + s + ".>",
	}
}

// writeSubjects are what only bucket's owner publishes: every key write
// (put, create, update, delete and purge are all a publish to
// $KV.<bucket>.<key>), and creating, updating, purging and deleting the
// bucket's stream.
func writeSubjects(bucket string) []string {
	return append([]string{"$KV." + bucket + ".>"}, streamSubjects(bucket)...)
}

// streamSubjects create and update bucket's stream, and purge and delete it.
func streamSubjects(bucket string) []string {
	s := kvStream(bucket)
	return []string{
		jsAPI + "STREAM.CREATE." + s,
		jsAPI + "STREAM.UPDATE." + s,
		jsAPI + "STREAM.PURGE." + s,
		jsAPI + "STREAM.DELETE." + s,
	}
}

// Permissions returns what role may publish and subscribe to under the
// names n, as allow-lists; anything else is refused by the server.
//
// Every role reads and watches every bucket of the contract (readSubjects)
// and receives replies on _INBOX.>. Only a bucket's owner writes its keys
// and creates, updates, purges or deletes its stream (writeSubjects), and
// a role that owns a bucket may also ask for the account's JetStream info
// ($JS.API.INFO), which nats.go does before it creates a bucket. Each role
// publishes only the plain subjects it owns; no role gets $JS.API.>.
//
// What subject permissions cannot express: the client of a JetStream API
// request chooses the reply subject, and the server answers there without
// checking it against the client's permissions. So any credential that may
// read a bucket can have the server write an API response, or a direct
// get's copy of a stored value or delete marker (its headers included),
// under any key of any bucket in the account, or on any plain subject. No
// allow-list closes that while reads are allowed, nor does an account of
// their own for the buckets (reading is what does it). Sealed records do
// (records.go): a daemon with the roles' keys acts only on values and
// messages their owner signed for that bucket or subject, key and
// operation.
func Permissions(n msg.Names, role string) (*server.Permissions, error) {
	g, err := grantOf(n, role)
	if err != nil {
		return nil, err
	}
	var pub []string
	for _, b := range n.Buckets() {
		pub = append(pub, readSubjects(b.Name)...)
	}
	for _, b := range g.buckets {
		pub = append(pub, writeSubjects(b)...)
	}
	for _, b := range g.streams {
		pub = append(pub, streamSubjects(b)[:2]...) // create and update only
	}
	for _, b := range g.cowrite {
		pub = append(pub, "$KV."+b+".>") // its keys, never its stream
	}
	if len(g.buckets) > 0 {
		pub = append(pub, jsAPI+"INFO")
	}
	if role == RoleReader {
		// The streams' names, for tooling (nats kv ls): names only.
		pub = append(pub, jsAPI+"STREAM.NAMES", jsAPI+"STREAM.LIST")
	}
	pub = append(pub, g.publish...)
	sub := append([]string{replies}, g.subscribe...)
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: sub},
	}, nil
}

// NodePermissions returns what the lbagent of one node may publish and
// subscribe to, with a key of its own (`scheduler nats-credential lbagent
// --node`): what the lbagent role may, except that it writes only its own
// record, $KV.<agents>.<node>, publishes reloads only on its own subject,
// and may not create, update, purge or delete the agents bucket (the
// scheduler creates it). So one compromised edge node cannot write
// another node's record; what it can still do through the server (a
// stored copy, see Permissions) its node key's seal does not cover, since
// readers trust a node's key only for that node's key and subject.
func NodePermissions(n msg.Names, node string) (*server.Permissions, error) {
	if err := msg.CheckToken(node); err != nil {
		return nil, fmt.Errorf("lbagent node: %w", err)
	}
	g, err := grantOf(n, RoleLBAgent)
	if err != nil {
		return nil, err
	}
	var pub []string
	for _, b := range n.Buckets() {
		pub = append(pub, readSubjects(b.Name)...)
	}
	pub = append(pub, "$KV."+n.AgentsBucket()+"."+node, n.AllMetrics(), n.ReloadsSubject(node))
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: append([]string{replies}, g.subscribe...)},
	}, nil
}

// ErrPermissionDenied is an operation the server refused: the connection's
// credential may not publish to a subject the operation needs. The error
// carries the server's words, which name the subject.
var ErrPermissionDenied = errors.New("bus: permission denied")

// deniedRe finds the subject in the server's refusal of a publish,
// `Permissions Violation for Publish to "<subject>"`.
var deniedRe = regexp.MustCompile(`Permissions Violation for Publish to ("(?:[^"\\]|\\.)*")`)

// deniedSubject returns the subject of a refused publish that err (an
// asynchronous error from the server) reports.
func deniedSubject(err error) (string, bool) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return "", false
	}
	m := deniedRe.FindStringSubmatch(err.Error())
	if m == nil {
		return "", false
	}
	subject, uerr := strconv.Unquote(m[1])
	return subject, uerr == nil
}

// refusals tells operations in flight that the server refused one of
// their publishes. The server reports a refused publish asynchronously and
// sends no reply, so a request would otherwise wait out its timeout and
// fail with a timeout that says nothing about permissions.
type refusals struct {
	mu     sync.Mutex
	next   int
	guards map[int]refusalGuard
}

type refusalGuard struct {
	subjects []string
	cancel   context.CancelCauseFunc
}

// guard returns a context that ends, with an ErrPermissionDenied cause, as
// soon as the server refuses a publish to one of subjects on this
// connection; stop releases it. Register before publishing.
func (r *refusals) guard(ctx context.Context, subjects ...string) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	r.mu.Lock()
	if r.guards == nil {
		r.guards = map[int]refusalGuard{}
	}
	id := r.next
	r.next++
	r.guards[id] = refusalGuard{subjects: subjects, cancel: cancel}
	r.mu.Unlock()
	return ctx, func() {
		r.mu.Lock()
		delete(r.guards, id)
		r.mu.Unlock()
		cancel(nil)
	}
}

// refused ends the guards waiting on subject with the server's error.
func (r *refusals) refused(subject string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, g := range r.guards {
		if slices.Contains(g.subjects, subject) {
			g.cancel(fmt.Errorf("%w: %w", ErrPermissionDenied, err))
		}
	}
}

// denial returns the refusal that ended a guarded ctx in place of err (the
// cancellation it caused), or err itself.
func denial(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrPermissionDenied) {
		return cause
	}
	return err
}

// MustOwnedBuckets is OwnedBuckets, and ManagedBuckets, for one of the
// Roles constants, which it cannot refuse: each daemon ensures only the
// buckets its role owns or manages (with credentials it may create no
// other), and waits for the rest.
func MustOwnedBuckets(n msg.Names, role string) []BucketConfig {
	b, err := OwnedBuckets(n, role)
	if err != nil {
		panic(err)
	}
	m, err := ManagedBuckets(n, role)
	if err != nil {
		panic(err)
	}
	return append(b, m...)
}
