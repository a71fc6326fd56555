package bus

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
)

// statesOf returns the public key of each state of role's (or node's) keys.
func statesOf(c *Credentials, role, node string) map[string]string {
	out := map[string]string{}
	for _, k := range c.Keys() {
		if k.Role == role && k.Node == node {
			out[k.State] = k.Public
		}
	}
	return out
}

// trustLines returns the trust lines of a credential file for role.
func trustLines(t *testing.T, path, role string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var out []string
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), trustPrefix+role+" "); ok {
			out = append(out, rest)
		}
	}
	return out
}

// TestRotationSteps walks a role's and a node's key through rotate,
// promote and retire: which keys each state holds, what every credential
// file trusts, which seed the credential carries, and that a step out of
// order is refused, naming the step that comes next.
func TestRotationSteps(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, role, node string }{
		{name: "role", role: RoleHealthd},
		{name: "reader", role: RoleReader},
		{name: "node", role: RoleLBAgent, node: "lb-1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "creds")
			c, err := AddNode(dir, "lb-1")
			require.NoError(t, err)
			_, err = AddNode(dir, "lb-2")
			require.NoError(t, err)
			old := statesOf(c, tt.role, tt.node)[KeyActive]
			require.NotEmpty(t, old)
			_, path, err := c.File(tt.role, tt.node)
			require.NoError(t, err)
			// trusted is what the reader's file trusts of healthd: a
			// writer's keys are every file's trust lines.
			trusted := func(*Credentials) []string { return trustLines(t, filepath.Join(dir, "reader.nk"), RoleHealthd) }

			_, err = PromoteKey(dir, tt.role, tt.node)
			require.ErrorIs(t, err, ErrRotation)
			require.ErrorContains(t, err, "nats-key rotate")
			_, err = RetireKey(dir, tt.role, tt.node)
			require.ErrorIs(t, err, ErrRotation)

			c, err = RotateKey(dir, tt.role, tt.node)
			require.NoError(t, err)
			st := statesOf(c, tt.role, tt.node)
			next := st[KeyNext]
			require.Equal(t, map[string]string{KeyActive: old, KeyNext: next}, st)
			if tt.role == RoleHealthd {
				require.Equal(t, []string{old, next}, trusted(c), "every file trusts both")
			}
			if tt.node != "" {
				require.Equal(t, []string{old, next}, c.NodeKeys()[tt.node], "the directory lists both")
				require.Len(t, c.NodeKeys()["lb-2"], 1, "the other node is untouched")
			}
			pub, err := SeedPublicKey(path)
			require.NoError(t, err)
			require.Equal(t, old, pub, "the credential still carries the active key")
			_, err = RotateKey(dir, tt.role, tt.node)
			require.ErrorIs(t, err, ErrRotation)
			require.ErrorContains(t, err, "promote it")
			_, err = RetireKey(dir, tt.role, tt.node)
			require.ErrorContains(t, err, "promote it first")

			c, err = PromoteKey(dir, tt.role, tt.node)
			require.NoError(t, err)
			require.Equal(t, map[string]string{KeyActive: next, KeyRetiring: old}, statesOf(c, tt.role, tt.node))
			pub, err = SeedPublicKey(path)
			require.NoError(t, err)
			require.Equal(t, next, pub, "the credential carries the new key")
			k, err := LoadKeys(path)
			require.NoError(t, err)
			require.Equal(t, tt.node, k.Node())
			if tt.role == RoleHealthd {
				require.Equal(t, []string{next, old}, trusted(c), "every file trusts both until retire")
			}
			_, err = RotateKey(dir, tt.role, tt.node)
			require.ErrorContains(t, err, "retire it first")

			c, err = RetireKey(dir, tt.role, tt.node)
			require.NoError(t, err)
			require.Equal(t, map[string]string{KeyActive: next}, statesOf(c, tt.role, tt.node))
			if tt.role == RoleHealthd {
				require.Equal(t, []string{next}, trusted(c))
			}
			users, err := c.Users(msg.Names{})
			require.NoError(t, err)
			for _, u := range users {
				require.NotEqual(t, old, u.Nkey, "the server no longer accepts the old key")
			}
			_, err = AbortRotation(dir, tt.role, tt.node)
			require.ErrorContains(t, err, "no next key")

			// A rotation may also be abandoned before its promote.
			c, err = RotateKey(dir, tt.role, tt.node)
			require.NoError(t, err)
			require.Len(t, statesOf(c, tt.role, tt.node), 2)
			c, err = AbortRotation(dir, tt.role, tt.node)
			require.NoError(t, err)
			require.Equal(t, map[string]string{KeyActive: next}, statesOf(c, tt.role, tt.node))
		})
	}
}

// TestPromoteCutShort: a promote that stopped between its link and its
// rename leaves the active key in place, counted once, and the next
// promote completes it.
func TestPromoteCutShort(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "creds")
	c, err := RotateKey(dir, RoleScheduler, "")
	require.NoError(t, err)
	st := statesOf(c, RoleScheduler, "")
	require.NoError(t, os.Link(seedPath(dir, RoleScheduler, KeyActive), seedPath(dir, RoleScheduler, KeyRetiring)))
	c, err = OpenCredentials(dir)
	require.NoError(t, err)
	require.Equal(t, st, statesOf(c, RoleScheduler, ""), "the half-made retiring file is the active key")
	_, err = c.Users(msg.Names{})
	require.NoError(t, err, "no key counted twice")
	c, err = PromoteKey(dir, RoleScheduler, "")
	require.NoError(t, err)
	require.Equal(t, map[string]string{KeyActive: st[KeyNext], KeyRetiring: st[KeyActive]}, statesOf(c, RoleScheduler, ""))
}

func TestNodeCredentials(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "creds")
	for _, bad := range []struct{ role, node, want string }{
		{RoleLBAgent, "lb.1", "not a valid id"},
		{RoleLBAgent, "../x", "not a valid id"},
		{RoleHealthd, "lb-1", "only lbagent has keys per node"},
	} {
		_, err := AddNode(dir, bad.node)
		if bad.role == RoleLBAgent {
			require.ErrorContains(t, err, bad.want, bad.node)
		}
		_, err = RotateKey(dir, bad.role, bad.node)
		require.ErrorContains(t, err, bad.want, bad.node)
	}
	_, err := RotateKey(dir, RoleLBAgent, "lb-9")
	require.ErrorContains(t, err, "scheduler nats-credential lbagent --node lb-9", "a node without a key says how to make one")

	c, err := AddNode(dir, "lb-1")
	require.NoError(t, err)
	again, err := AddNode(dir, "lb-1")
	require.NoError(t, err)
	require.Equal(t, c.NodeKeys(), again.NodeKeys(), "a node keeps its key")
	st, err := os.Stat(filepath.Join(dir, nodesDir))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	file, path, err := c.File(RoleLBAgent, "lb-1")
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "nodes", "lb-1.nk"), path)
	st, err = os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	require.Contains(t, string(file), "# berth-node lb-1\n")
	for _, r := range writerRoles() {
		require.Len(t, trustLines(t, path, r), 1, "the node's file trusts every writing role")
	}
	require.Empty(t, trustLines(t, filepath.Join(dir, "healthd.nk"), "lb-1"), "no file trusts a node's key: the directory does")

	k, err := LoadKeys(path)
	require.NoError(t, err)
	require.Equal(t, "lb-1", k.Node())
	require.Equal(t, RoleLBAgent, k.role)
	shared, err := LoadKeys(filepath.Join(dir, "lbagent.nk"))
	require.NoError(t, err)
	require.Empty(t, shared.Node())

	_, _, err = c.File(RoleLBAgent, "lb-2")
	require.ErrorContains(t, err, "--node lb-2")

	// A node line in a role's file that the role trusts is refused.
	b, err := os.ReadFile(filepath.Join(dir, "lbagent.nk"))
	require.NoError(t, err)
	forged := filepath.Join(t.TempDir(), "forged.nk")
	require.NoError(t, os.WriteFile(forged, append(b, []byte("# berth-node lb-2\n")...), 0o600))
	_, err = LoadKeys(forged)
	require.ErrorContains(t, err, "also trusted as the lbagent role's")

	c, err = RemoveNode(dir, "lb-1")
	require.NoError(t, err)
	require.Empty(t, c.Nodes())
	_, err = RemoveNode(dir, "lb-1")
	require.ErrorContains(t, err, "has no key")
	entries, err := os.ReadDir(filepath.Join(dir, nodesDir))
	require.NoError(t, err)
	require.Empty(t, entries)
}

// TestUsersOfEveryKey: the server's users are every key of every role and
// node, each with its permissions, and the config nats-config prints holds
// exactly them.
func TestUsersOfEveryKey(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("acme")
	require.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "creds")
	_, err = AddNode(dir, "lb-1")
	require.NoError(t, err)
	_, err = RotateKey(dir, RoleHealthd, "")
	require.NoError(t, err)
	c, err := RotateKey(dir, RoleLBAgent, "lb-1")
	require.NoError(t, err)
	users, err := c.Users(n)
	require.NoError(t, err)
	require.Len(t, users, len(Roles())+1+2, "the roles, healthd's next key, the node's two")
	byKey := map[string]*server.NkeyUser{}
	for _, u := range users {
		byKey[u.Nkey] = u
	}
	nodePerms, err := NodePermissions(n, "lb-1")
	require.NoError(t, err)
	healthPerms, err := Permissions(n, RoleHealthd)
	require.NoError(t, err)
	for _, k := range c.Keys() {
		switch {
		case k.Node == "lb-1":
			require.Equal(t, nodePerms, byKey[k.Public].Permissions, k.State)
		case k.Role == RoleHealthd:
			require.Equal(t, healthPerms, byKey[k.Public].Permissions, k.State)
		}
	}

	conf, err := c.ServerConfig(n)
	require.NoError(t, err)
	require.Contains(t, conf, "# healthd (next key)\n")
	require.Contains(t, conf, "# lbagent node lb-1\n")
	require.Contains(t, conf, "# lbagent node lb-1 (next key)\n")
	path := filepath.Join(t.TempDir(), "nats.conf")
	require.NoError(t, os.WriteFile(path, []byte(conf), 0o600))
	opts, err := server.ProcessConfigFile(path)
	require.NoError(t, err, "%s", conf)
	require.Len(t, opts.Nkeys, len(users))
	for _, u := range opts.Nkeys {
		require.Equal(t, byKey[u.Nkey].Permissions.Publish.Allow, u.Permissions.Publish.Allow)
		require.Equal(t, byKey[u.Nkey].Permissions.Subscribe.Allow, u.Permissions.Subscribe.Allow)
	}
}

func TestNodePermissions(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("perm")
	require.NoError(t, err)
	_, err = NodePermissions(n, "a.b")
	require.ErrorContains(t, err, "not a valid id")
	p, err := NodePermissions(n, "lb-1")
	require.NoError(t, err)
	require.Contains(t, p.Publish.Allow, "$KV.perm_agents.lb-1")
	require.Contains(t, p.Publish.Allow, "perm.v1.reloads.lb-1")
	require.Contains(t, p.Publish.Allow, "perm.v1.metrics.*")
	for _, s := range p.Publish.Allow {
		require.NotContains(t, []string{"$KV.perm_agents.>", "perm.v1.reloads.*", "$JS.API.INFO"}, s)
		require.False(t, strings.HasPrefix(s, "$JS.API.STREAM.") && !strings.HasPrefix(s, "$JS.API.STREAM.INFO.") && !strings.HasPrefix(s, "$JS.API.STREAM.MSG.GET."),
			"a node creates, updates, purges or deletes no stream: %s", s)
	}
	for _, b := range n.Buckets() {
		for _, s := range readSubjects(b.Name) {
			require.Contains(t, p.Publish.Allow, s, "a node reads every bucket")
		}
	}
	shared, err := Permissions(n, RoleLBAgent)
	require.NoError(t, err)
	require.Equal(t, shared.Subscribe, p.Subscribe)
}
