package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/berthhq/berth/common/msg"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
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
			buckets:   []string{n.AppsBucket(), n.InstancesBucket(), n.CertificatesBucket(), n.ChallengesBucket()},
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
// Watcher of one waits (see Watcher.Run). The reader owns none.
func OwnedBuckets(n msg.Names, role string) ([]BucketConfig, error) {
	g, err := grantOf(n, role)
	if err != nil {
		return nil, err
	}
	var out []BucketConfig
	for _, b := range ContractBuckets(n) {
		if slices.Contains(g.buckets, b.Name) {
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
	s := kvStream(bucket)
	return []string{
		"$KV." + bucket + ".>",
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

// EnsureCredentials makes sure dir holds one NATS user nkey seed per role,
// <dir>/<role>.nk, and returns the path of each by role. The first call
// creates them; later calls reuse them, so the public keys a server trusts
// stay the same across restarts. dir is created, or restricted, to mode
// 0700 and each seed is written with mode 0600; a seed file that others
// may read is an error, not silently fixed, since it may have leaked.
// Two processes calling it at once end up with the same seeds.
func EnsureCredentials(dir string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nats credentials: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nats credentials: %w", err)
	}
	out := map[string]string{}
	for _, role := range Roles() {
		path := filepath.Join(dir, role+".nk")
		if err := ensureSeed(path); err != nil {
			return nil, fmt.Errorf("nats credentials for %s: %w", role, err)
		}
		out[role] = path
	}
	// Each file then gets the roles' public keys, so that it is the whole
	// credential a daemon needs (CredentialFile, LoadKeys).
	for _, role := range Roles() {
		want, err := CredentialFile(out, role)
		if err != nil {
			return nil, fmt.Errorf("nats credentials for %s: %w", role, err)
		}
		have, err := os.ReadFile(out[role])
		if err == nil && !bytes.Equal(have, want) {
			err = writeSecret(out[role], want)
		}
		wipe(have)
		wipe(want)
		if err != nil {
			return nil, fmt.Errorf("nats credentials for %s: %w", role, err)
		}
	}
	return out, nil
}

// writeSecret replaces the file at path with b, mode 0600, atomically.
func writeSecret(path string, b []byte) error {
	return placeSecret(path, b, os.Rename)
}

// placeSecret writes b to a temporary file (mode 0600) beside path, synced,
// and moves it into place with place: os.Rename to replace path, os.Link
// to create it only if it does not exist yet (fs.ErrExist then is no error).
func placeSecret(path string, b []byte, place func(oldname, newname string) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".seed-*") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = place(tmp.Name(), path)
	}
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ensureSeed checks the user seed at path, or creates one there. The seed
// is written to a temporary file and linked into place, so a reader never
// sees half a seed and a concurrent creator loses cleanly to the first.
func ensureSeed(path string) error {
	_, err := SeedPublicKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return fmt.Errorf("create nkey: %w", err)
	}
	defer kp.Wipe()
	seed, err := kp.Seed()
	if err != nil {
		return fmt.Errorf("create nkey: %w", err)
	}
	defer wipe(seed)
	line := append(seed, '\n')
	defer wipe(line)
	if err := placeSecret(path, line, os.Link); err != nil {
		return err
	}
	_, err = SeedPublicKey(path)
	return err
}

// SeedPublicKey returns the public key ("U…") of the NATS user nkey seed in
// the file at path, the key a server's authorization lists. It refuses a
// seed file that its group or others may read.
func SeedPublicKey(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if mode := st.Mode().Perm(); mode&0o077 != 0 {
		return "", fmt.Errorf("nkey seed %s has mode %04o: it must be readable by its owner only (chmod 600 %s)", path, mode, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	defer wipe(b)
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return "", fmt.Errorf("nkey seed %s: %w", path, err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("nkey seed %s: %w", path, err)
	}
	if !nkeys.IsValidPublicUserKey(pub) {
		return "", fmt.Errorf("nkey seed %s: not a user seed (an \"SU…\" seed is needed)", path)
	}
	return pub, nil
}

// wipe overwrites secret bytes once they are no longer needed.
func wipe(b []byte) {
	for i := range b {
		b[i] = 'x'
	}
}

// AuthUsers returns the server's users for the seeds (role → seed file, as
// EnsureCredentials returns): each role's public key with its role's
// Permissions under n, in the order of Roles. It fails on an unknown role
// and on no seeds at all, since an empty user list would leave a server
// open to anyone.
func AuthUsers(n msg.Names, seeds map[string]string) ([]*server.NkeyUser, error) {
	if len(seeds) == 0 {
		return nil, errors.New("nats auth: no credentials given")
	}
	for role := range seeds {
		if !slices.Contains(Roles(), role) {
			return nil, fmt.Errorf("nats auth: %w %q: want one of %v", ErrUnknownRole, role, Roles())
		}
	}
	var users []*server.NkeyUser
	seen := map[string]string{} // public key → role
	for _, role := range Roles() {
		path, ok := seeds[role]
		if !ok {
			continue
		}
		pub, err := SeedPublicKey(path)
		if err != nil {
			return nil, fmt.Errorf("nats auth for %s: %w", role, err)
		}
		if other, ok := seen[pub]; ok {
			return nil, fmt.Errorf("nats auth: %s and %s have the same key (%s): each role needs a seed of its own", other, role, path)
		}
		seen[pub] = role
		perms, err := Permissions(n, role)
		if err != nil {
			return nil, err
		}
		users = append(users, &server.NkeyUser{Nkey: pub, Permissions: perms})
	}
	return users, nil
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

// ServerConfig returns a nats-server config holding Berth's roles: one
// nkey user per role of seeds, with its permissions (Permissions), for an
// external NATS (compose, a cluster of your own). Only public keys are in
// it; each daemon keeps its own seed.
func ServerConfig(n msg.Names, seeds map[string]string) (string, error) {
	users, err := AuthUsers(n, seeds)
	if err != nil {
		return "", err
	}
	role := map[string]string{}
	for r, path := range seeds {
		if pub, err := SeedPublicKey(path); err == nil {
			role[pub] = r
		}
	}
	q := func(list []string) string {
		var b strings.Builder
		e := json.NewEncoder(&b)
		e.SetEscapeHTML(false) // '>' as is: the config parser knows no \u escapes
		_ = e.Encode(list)
		return strings.TrimSpace(b.String())
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Berth's NATS roles for prefix %q (scheduler nats-config): one nkey user per role,\n", n.Prefix())
	b.WriteString("# each allowed only what its daemon does (docs/nats.md). Include it in your nats-server.conf.\n")
	b.WriteString("authorization {\n  users = [\n")
	for _, u := range users {
		p := u.Permissions
		fmt.Fprintf(&b, "    # %s\n    {nkey: %q, permissions: {publish: {allow: %s}, subscribe: {allow: %s}}}\n",
			role[u.Nkey], u.Nkey, q(p.Publish.Allow), q(p.Subscribe.Allow))
	}
	b.WriteString("  ]\n}\n")
	return b.String(), nil
}

// MustOwnedBuckets is OwnedBuckets for one of the Roles constants, which
// it cannot refuse: each daemon ensures only the buckets its role owns
// (with credentials it may create no other), and waits for the rest.
func MustOwnedBuckets(n msg.Names, role string) []BucketConfig {
	b, err := OwnedBuckets(n, role)
	if err != nil {
		panic(err)
	}
	return b
}
