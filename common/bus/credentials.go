package bus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/berthhq/berth/common/msg"
)

// A credentials directory (the embedded NATS's --data-dir/nats-credentials,
// mode 0700) holds every nkey seed of Berth's NATS users, each file mode
// 0600 and each a whole credential: the seed, then the trust lines.
//
//	<role>.nk                  the role's key (scheduler, healthd, lbagent, reader)
//	<role>.next.nk             while its key is rotated: the next key, trusted, not yet used
//	<role>.retiring.nk         after the rotation's promote: the previous key, trusted until retired
//	nodes/<node>.nk            an lbagent node's own key, and .next.nk, .retiring.nk likewise
//
// Every key of a state here is a NATS user (Credentials.Users), and the
// writing roles' keys are every file's trust lines; a node's keys are not
// trust lines but reach the readers through the scheduler's node-key
// directory (the nodes bucket, NodeDirectory). Changes go through the
// functions below, which hold an exclusive lock on the directory (a
// .lock file) and write every file's trust lines again, so two commands,
// or a command and a starting scheduler, never interleave.

// Key states in a credentials directory.
const (
	// KeyActive is the key a role's or node's daemons connect and seal with.
	KeyActive = "active"
	// KeyNext is a rotation's new key (RotateKey): trusted and accepted by
	// the server, used by no daemon until PromoteKey.
	KeyNext = "next"
	// KeyRetiring is a rotation's old key after PromoteKey: still trusted
	// and accepted, so that daemons not yet restarted keep working, until
	// RetireKey.
	KeyRetiring = "retiring"
)

func keyStates() []string { return []string{KeyActive, KeyNext, KeyRetiring} }

const (
	nodesDir   = "nodes"
	lockFile   = ".lock"
	nodePrefix = "# berth-node "
)

// ErrRotation is a rotation step that does not follow from the state of
// the keys (a promote with no next key, say). The error says which step
// comes next.
var ErrRotation = errors.New("bus: key rotation step out of order")

// KeyInfo is one key of a credentials directory.
type KeyInfo struct {
	// Role is the key's role; an lbagent node's key has RoleLBAgent.
	Role string
	// Node is the lbagent node, "" for a role's key.
	Node string
	// State is KeyActive, KeyNext or KeyRetiring.
	State string
	// Public is the public nkey ("U…").
	Public string
	// Path is the seed file.
	Path string
}

// Owner names the key's role, or its node: "healthd", "lbagent node lb-1".
func (k KeyInfo) Owner() string {
	if k.Node != "" {
		return "lbagent node " + k.Node
	}
	return k.Role
}

// label is Owner, with the state when it is not the active one.
func (k KeyInfo) label() string {
	if k.State == KeyActive {
		return k.Owner()
	}
	return k.Owner() + " (" + k.State + " key)"
}

// Credentials is what a credentials directory held when it was read.
type Credentials struct {
	dir string
	// keys in a fixed order: roles as Roles, then nodes by name; each
	// active, next, retiring.
	keys []KeyInfo
}

// seedPath is the seed file of name (a role or node) in state under dir.
func seedPath(dir, name, state string) string {
	switch state {
	case KeyNext:
		name += ".next"
	case KeyRetiring:
		name += ".retiring"
	}
	return filepath.Join(dir, name+".nk")
}

// ReadCredentials reads the keys of a credentials directory and changes
// nothing, so it also reads a directory mounted read-only (a scheduler
// that publishes the node keys of an external NATS's credentials). A seed
// file others may read, or that holds no user seed, is an error.
func ReadCredentials(dir string) (*Credentials, error) {
	c := &Credentials{dir: dir}
	for _, role := range Roles() {
		if err := c.scan(role, "", dir, role); err != nil {
			return nil, err
		}
	}
	entries, err := os.ReadDir(filepath.Join(dir, nodesDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("nats credentials: %w", err)
	}
	nodes := map[string]bool{}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".nk")
		if !ok || e.IsDir() {
			continue
		}
		name = strings.TrimSuffix(strings.TrimSuffix(name, ".next"), ".retiring")
		if msg.CheckToken(name) == nil {
			nodes[name] = true
		}
	}
	for _, node := range slices.Sorted(maps.Keys(nodes)) {
		if err := c.scan(RoleLBAgent, node, filepath.Join(dir, nodesDir), node); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *Credentials) scan(role, node, dir, name string) error {
	var active string
	for _, st := range keyStates() {
		path := seedPath(dir, name, st)
		pub, err := SeedPublicKey(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("nats credentials: %w", err)
		}
		if st == KeyActive {
			active = pub
		} else if st == KeyRetiring && pub == active {
			continue // a promote cut short: the retiring file is the active key still
		}
		c.keys = append(c.keys, KeyInfo{Role: role, Node: node, State: st, Public: pub, Path: path})
	}
	return nil
}

// OpenCredentials makes sure dir holds a key for every role, creating
// those missing, writes every seed file's trust lines again when they
// changed, and returns what it holds.
func OpenCredentials(dir string) (*Credentials, error) {
	var c *Credentials
	err := withCredentials(dir, func() (err error) {
		c, err = refresh(dir)
		return err
	})
	return c, err
}

// EnsureCredentials makes sure dir holds one NATS user nkey seed per role,
// <dir>/<role>.nk, and returns the path of each by role (OpenCredentials).
// The first call creates them; later calls reuse them, so the public keys
// a server trusts stay the same across restarts. dir is created, or
// restricted, to mode 0700 and each seed is written with mode 0600; a seed
// file that others may read is an error, not silently fixed, since it may
// have leaked. Two processes calling it at once end up with the same seeds.
func EnsureCredentials(dir string) (map[string]string, error) {
	c, err := OpenCredentials(dir)
	if err != nil {
		return nil, err
	}
	return c.Seeds(), nil
}

// withCredentials runs change with dir's lock held, after making sure
// every role has a key.
func withCredentials(dir string, change func() error) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("nats credentials: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("nats credentials: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("nats credentials: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("nats credentials: lock %s: %w", f.Name(), err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing the file releases it too
	for _, role := range Roles() {
		if err := ensureSeed(seedPath(dir, role, KeyActive)); err != nil {
			return fmt.Errorf("nats credentials for %s: %w", role, err)
		}
	}
	return change()
}

// refresh reads dir and writes each seed file again whose trust lines
// changed; the caller holds the lock.
func refresh(dir string) (*Credentials, error) {
	c, err := ReadCredentials(dir)
	if err != nil {
		return nil, err
	}
	for _, k := range c.keys {
		want, err := c.file(k)
		if err != nil {
			return nil, fmt.Errorf("nats credentials for %s: %w", k.label(), err)
		}
		have, err := os.ReadFile(k.Path)
		if err == nil && !bytes.Equal(have, want) {
			err = writeSecret(k.Path, want)
		}
		wipe(have)
		wipe(want)
		if err != nil {
			return nil, fmt.Errorf("nats credentials for %s: %w", k.label(), err)
		}
	}
	return c, nil
}

// file is k's whole credential: its seed, the node line of a node's key,
// and one trust line per key of each writing role.
func (c *Credentials) file(k KeyInfo) ([]byte, error) {
	raw, err := os.ReadFile(k.Path)
	if err != nil {
		return nil, err
	}
	defer wipe(raw)
	kp, err := nkeys.ParseDecoratedNKey(raw)
	if err != nil {
		return nil, fmt.Errorf("nkey seed %s: %w", k.Path, err)
	}
	defer kp.Wipe()
	seed, err := kp.Seed()
	if err != nil {
		return nil, fmt.Errorf("nkey seed %s: %w", k.Path, err)
	}
	defer wipe(seed)
	var b bytes.Buffer
	b.Write(seed)
	b.WriteByte('\n')
	if k.Node != "" {
		b.WriteString("# The key of lbagent node " + k.Node + " only: start that node's lbagent with it (its --node\n")
		b.WriteString("# defaults to this node). Readers trust it through the scheduler's node-key directory.\n")
		b.WriteString(nodePrefix + k.Node + "\n")
	}
	b.WriteString("# The public keys of the roles that write Berth's records: this daemon acts only on\n")
	b.WriteString("# records sealed by their owner (docs/nats.md, Sealed records).\n")
	for _, r := range writerRoles() {
		for _, t := range c.keys {
			if t.Role == r && t.Node == "" {
				fmt.Fprintf(&b, "%s%s %s\n", trustPrefix, r, t.Public)
			}
		}
	}
	return b.Bytes(), nil
}

// Dir is the credentials directory.
func (c *Credentials) Dir() string { return c.dir }

// Keys returns every key, roles first (in the order of Roles), then nodes
// by name; each active, next, retiring.
func (c *Credentials) Keys() []KeyInfo { return slices.Clone(c.keys) }

// Seeds returns each role's active seed file.
func (c *Credentials) Seeds() map[string]string {
	out := map[string]string{}
	for _, k := range c.keys {
		if k.Node == "" && k.State == KeyActive {
			out[k.Role] = k.Path
		}
	}
	return out
}

// Nodes returns the lbagent nodes that have keys of their own, sorted.
func (c *Credentials) Nodes() []string {
	var out []string
	for _, k := range c.keys {
		if k.Node != "" && !slices.Contains(out, k.Node) {
			out = append(out, k.Node)
		}
	}
	return out
}

// NodeKeys returns each node's public keys, active first: what the
// scheduler publishes in the node-key directory.
func (c *Credentials) NodeKeys() map[string][]string {
	out := map[string][]string{}
	for _, k := range c.keys {
		if k.Node != "" {
			out[k.Node] = append(out[k.Node], k.Public)
		}
	}
	return out
}

// File returns the credential of role (node "") or of an lbagent node
// (role RoleLBAgent), as its daemon's --nats-nkey takes it, and its path.
func (c *Credentials) File(role, node string) ([]byte, string, error) {
	if err := checkTarget(role, node); err != nil {
		return nil, "", err
	}
	for _, k := range c.keys {
		if k.Role == role && k.Node == node && k.State == KeyActive {
			b, err := os.ReadFile(k.Path)
			return b, k.Path, err
		}
	}
	if node != "" {
		return nil, "", fmt.Errorf("no key for lbagent node %s: create it with `scheduler nats-credential lbagent --node %s`", node, node)
	}
	return nil, "", fmt.Errorf("no key for the %s role in %s", role, c.dir)
}

// Users returns the server's users: every key of every role with its
// role's Permissions, every key of every node with NodePermissions. It
// fails on a key listed twice, since the server could not tell whose it
// is.
func (c *Credentials) Users(n msg.Names) ([]*server.NkeyUser, error) {
	return users(n, c.keys)
}

// ServerConfig returns a nats-server config holding every user of Users,
// for an external NATS.
func (c *Credentials) ServerConfig(n msg.Names) (string, error) {
	return serverConfig(n, c.keys)
}

func users(n msg.Names, keys []KeyInfo) ([]*server.NkeyUser, error) {
	if len(keys) == 0 {
		return nil, errors.New("nats auth: no credentials given")
	}
	var out []*server.NkeyUser
	seen := map[string]string{} // public key → whose
	for _, k := range keys {
		if other, ok := seen[k.Public]; ok {
			return nil, fmt.Errorf("nats auth: %s and %s have the same key (%s): each needs a seed of its own", other, k.label(), k.Path)
		}
		seen[k.Public] = k.label()
		var perms *server.Permissions
		var err error
		if k.Node != "" {
			perms, err = NodePermissions(n, k.Node)
		} else {
			perms, err = Permissions(n, k.Role)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, &server.NkeyUser{Nkey: k.Public, Permissions: perms})
	}
	return out, nil
}

// AuthUsers returns the server's users for the seeds (role → seed file, as
// EnsureCredentials returns): each role's public key with its role's
// Permissions under n, in the order of Roles. It fails on an unknown role
// and on no seeds at all, since an empty user list would leave a server
// open to anyone. Credentials.Users gives every key, a rotation's and the
// nodes' too.
func AuthUsers(n msg.Names, seeds map[string]string) ([]*server.NkeyUser, error) {
	keys, err := roleKeys(seeds)
	if err != nil {
		return nil, err
	}
	return users(n, keys)
}

func roleKeys(seeds map[string]string) ([]KeyInfo, error) {
	if len(seeds) == 0 {
		return nil, errors.New("nats auth: no credentials given")
	}
	for role := range seeds {
		if !slices.Contains(Roles(), role) {
			return nil, fmt.Errorf("nats auth: %w %q: want one of %v", ErrUnknownRole, role, Roles())
		}
	}
	var keys []KeyInfo
	for _, role := range Roles() {
		path, ok := seeds[role]
		if !ok {
			continue
		}
		pub, err := SeedPublicKey(path)
		if err != nil {
			return nil, fmt.Errorf("nats auth for %s: %w", role, err)
		}
		keys = append(keys, KeyInfo{Role: role, State: KeyActive, Public: pub, Path: path})
	}
	return keys, nil
}

// ServerConfig returns a nats-server config holding Berth's roles: one
// nkey user per role of seeds, with its permissions (Permissions), for an
// external NATS (compose, a cluster of your own). Only public keys are in
// it; each daemon keeps its own seed. Credentials.ServerConfig gives every
// key, a rotation's and the nodes' too.
func ServerConfig(n msg.Names, seeds map[string]string) (string, error) {
	keys, err := roleKeys(seeds)
	if err != nil {
		return "", err
	}
	return serverConfig(n, keys)
}

func serverConfig(n msg.Names, keys []KeyInfo) (string, error) {
	us, err := users(n, keys)
	if err != nil {
		return "", err
	}
	q := func(list []string) string {
		var b strings.Builder
		e := json.NewEncoder(&b)
		e.SetEscapeHTML(false) // '>' as is: the config parser knows no \u escapes
		_ = e.Encode(list)
		return strings.TrimSpace(b.String())
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Berth's NATS roles for prefix %q (scheduler nats-config): one nkey user per key of a role\n", n.Prefix())
	b.WriteString("# or lbagent node, each allowed only what its daemon does (docs/nats.md). Include it in your\n")
	b.WriteString("# nats-server.conf, and print it again after each `scheduler nats-key` step or new node.\n")
	b.WriteString("authorization {\n  users = [\n")
	for i, u := range us {
		p := u.Permissions
		fmt.Fprintf(&b, "    # %s\n    {nkey: %q, permissions: {publish: {allow: %s}, subscribe: {allow: %s}}}\n",
			keys[i].label(), u.Nkey, q(p.Publish.Allow), q(p.Subscribe.Allow))
	}
	b.WriteString("  ]\n}\n")
	return b.String(), nil
}

// checkTarget checks a role, or an lbagent node (role RoleLBAgent).
func checkTarget(role, node string) error {
	if !slices.Contains(Roles(), role) {
		return fmt.Errorf("%w %q: want one of %v", ErrUnknownRole, role, Roles())
	}
	if node == "" {
		return nil
	}
	if role != RoleLBAgent {
		return fmt.Errorf("--node %s: only lbagent has keys per node, not %s", node, role)
	}
	if err := msg.CheckToken(node); err != nil {
		return fmt.Errorf("--node: %w", err)
	}
	return nil
}

// targetDir is the directory and file name of role's or node's seeds.
func targetDir(dir, role, node string) (string, string) {
	if node != "" {
		return filepath.Join(dir, nodesDir), node
	}
	return dir, role
}

// AddNode gives an lbagent node a key of its own, nodes/<node>.nk, unless
// it has one, and returns the credentials.
func AddNode(dir, node string) (*Credentials, error) {
	if err := checkTarget(RoleLBAgent, node); err != nil {
		return nil, err
	}
	return change(dir, func() error {
		d := filepath.Join(dir, nodesDir)
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return err
		}
		return ensureSeed(seedPath(d, node, KeyActive))
	})
}

// RemoveNode deletes every key of an lbagent node: once the scheduler
// publishes the directory without it, readers refuse its seals and the
// next certificate put is sealed without its key; with the embedded NATS
// its connection is closed.
func RemoveNode(dir, node string) (*Credentials, error) {
	if err := checkTarget(RoleLBAgent, node); err != nil {
		return nil, err
	}
	return change(dir, func() error {
		d := filepath.Join(dir, nodesDir)
		if _, err := os.Stat(seedPath(d, node, KeyActive)); err != nil {
			return fmt.Errorf("lbagent node %s has no key in %s: %w", node, d, err)
		}
		// The active key last: a removal cut short leaves the node's
		// name for the next try to find.
		for _, st := range []string{KeyNext, KeyRetiring, KeyActive} {
			if err := removeSeed(seedPath(d, node, st)); err != nil {
				return err
			}
		}
		return nil
	})
}

// RotateKey starts a rotation of role's key, or of a node's: it creates
// the next key, which every credential file trusts from now on and the
// server accepts beside the active one. No daemon uses it until
// PromoteKey.
func RotateKey(dir, role, node string) (*Credentials, error) {
	return step(dir, role, node, func(d, name string, have map[string]bool) error {
		switch {
		case have[KeyNext]:
			return fmt.Errorf("%w: %s already has a next key: promote it (scheduler nats-key promote) or abort it (nats-key abort)", ErrRotation, owner(role, node))
		case have[KeyRetiring]:
			return fmt.Errorf("%w: %s still has a retiring key: retire it first (scheduler nats-key retire)", ErrRotation, owner(role, node))
		}
		return ensureSeed(seedPath(d, name, KeyNext))
	})
}

// PromoteKey makes the next key the active one, which the role's (or
// node's) credential now carries, and keeps the previous one as the
// retiring key, still trusted and accepted, until RetireKey.
func PromoteKey(dir, role, node string) (*Credentials, error) {
	return step(dir, role, node, func(d, name string, have map[string]bool) error {
		if !have[KeyNext] {
			return fmt.Errorf("%w: %s has no next key to promote: start with scheduler nats-key rotate", ErrRotation, owner(role, node))
		}
		active, retiring := seedPath(d, name, KeyActive), seedPath(d, name, KeyRetiring)
		if have[KeyRetiring] && !samePublicKey(active, retiring) {
			return fmt.Errorf("%w: %s still has a retiring key: retire it first (scheduler nats-key retire)", ErrRotation, owner(role, node))
		}
		// Link, then rename: at every moment the active file holds a key,
		// and a promote cut short between the two is taken up again.
		if err := os.Link(active, retiring); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		return os.Rename(seedPath(d, name, KeyNext), active)
	})
}

// RetireKey ends a rotation: the retiring key is deleted, so the server
// refuses it and no credential file trusts it any more.
func RetireKey(dir, role, node string) (*Credentials, error) {
	return step(dir, role, node, func(d, name string, have map[string]bool) error {
		if !have[KeyRetiring] {
			if have[KeyNext] {
				return fmt.Errorf("%w: %s has a next key, not yet promoted: promote it first (scheduler nats-key promote)", ErrRotation, owner(role, node))
			}
			return fmt.Errorf("%w: %s has no retiring key: start with scheduler nats-key rotate", ErrRotation, owner(role, node))
		}
		return removeSeed(seedPath(d, name, KeyRetiring))
	})
}

// AbortRotation deletes a next key that was never promoted.
func AbortRotation(dir, role, node string) (*Credentials, error) {
	return step(dir, role, node, func(d, name string, have map[string]bool) error {
		if !have[KeyNext] {
			return fmt.Errorf("%w: %s has no next key to abort", ErrRotation, owner(role, node))
		}
		return removeSeed(seedPath(d, name, KeyNext))
	})
}

func owner(role, node string) string {
	return KeyInfo{Role: role, Node: node}.Owner()
}

// step runs one rotation step on role's (or node's) seeds with the lock
// held; have says which states have a seed file.
func step(dir, role, node string, do func(d, name string, have map[string]bool) error) (*Credentials, error) {
	if err := checkTarget(role, node); err != nil {
		return nil, err
	}
	return change(dir, func() error {
		d, name := targetDir(dir, role, node)
		have := map[string]bool{}
		for _, st := range keyStates() {
			_, err := os.Stat(seedPath(d, name, st))
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			have[st] = err == nil
		}
		if !have[KeyActive] {
			return fmt.Errorf("%s has no key in %s: create it with `scheduler nats-credential lbagent --node %s`", owner(role, node), d, node)
		}
		return do(d, name, have)
	})
}

// change runs do with dir's lock held, then writes every file's trust
// lines again and returns the credentials.
func change(dir string, do func() error) (*Credentials, error) {
	var c *Credentials
	err := withCredentials(dir, func() error {
		if err := do(); err != nil {
			return err
		}
		var err error
		c, err = refresh(dir)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nats credentials: %w", err)
	}
	return c, nil
}

// removeSeed overwrites a seed file before it removes it; a file that is
// not there is no error.
func removeSeed(path string) error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	// Another name of the same seed (a promote's retiring link) keeps
	// it: overwrite only the last one.
	if s, ok := st.Sys().(*syscall.Stat_t); !ok || s.Nlink <= 1 {
		if f, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			_, _ = f.Write(bytes.Repeat([]byte{'x'}, int(st.Size())))
			_ = f.Sync()
			_ = f.Close()
		}
	}
	return os.Remove(path)
}

// samePublicKey reports whether two seed files hold the same key.
func samePublicKey(a, b string) bool {
	pa, err := SeedPublicKey(a)
	if err != nil {
		return false
	}
	pb, err := SeedPublicKey(b)
	return err == nil && pa == pb
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
