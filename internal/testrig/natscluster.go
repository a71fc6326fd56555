package testrig

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
)

// NATSCluster is a nats-server cluster on loopback with JetStream and
// Berth's roles, as production runs it: three servers, each its own
// process with its own store, joined by authenticated routes, each
// requiring the role credentials `scheduler nats-config` gives an
// external NATS (bus.Credentials.ServerConfig).
//
// The servers are processes of the nats-server built from the module,
// not servers in the test's process: Kill is then a real SIGKILL (the
// kernel resets every connection, and the server neither steps down, nor
// stops its Raft groups, nor syncs its store, as an in-process Shutdown
// does), and the servers run outside the race detector, which would
// multiply the cluster's CPU use on a small machine. Its methods are for
// the test's goroutine only.
type NATSCluster struct {
	t testing.TB
	// Nodes are the servers, named n1, n2, n3.
	Nodes []*NATSProcess
	// Seeds map each role, and each lbagent node given, to the seed file
	// of its credential.
	Seeds map[string]string
	// CredsDir is the credentials directory, whose node keys a scheduler
	// publishes with --nats-credentials.
	CredsDir string
}

// clusterSize is the number of servers StartNATSCluster starts.
const clusterSize = 3

// StartNATSCluster starts a 3-node cluster that requires Berth's role
// credentials under names, and gives each of lbNodes an lbagent key of its
// own (as NATSWithNodeKeys does for one server). It returns once every
// server is healthy and the meta leader counts each a current, online
// member (so a 3-replica bucket can be placed). The servers are killed when the test ends.
func StartNATSCluster(t testing.TB, names msg.Names, lbNodes ...string) *NATSCluster {
	t.Helper()
	bin, err := natsServerBinary()
	if err != nil {
		t.Fatalf("build nats-server: %v", err)
	}
	c := &NATSCluster{t: t, CredsDir: filepath.Join(t.TempDir(), "nats-credentials")}
	creds, err := bus.OpenCredentials(c.CredsDir)
	for _, node := range lbNodes {
		if err == nil {
			creds, err = bus.AddNode(c.CredsDir, node)
		}
	}
	if err != nil {
		t.Fatalf("NATS credentials: %v", err)
	}
	c.Seeds = creds.Seeds()
	for _, node := range lbNodes {
		if _, c.Seeds[node], err = creds.File(bus.RoleLBAgent, node); err != nil {
			t.Fatalf("NATS credential of node %s: %v", node, err)
		}
	}
	auth, err := creds.ServerConfig(names)
	if err != nil {
		t.Fatalf("NATS server config: %v", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "auth.conf"), []byte(auth), 0o600); err != nil {
		t.Fatalf("NATS server config: %v", err)
	}
	password := make([]byte, 16)
	_, _ = rand.Read(password)
	route := clusterRoute{User: "route", Password: hex.EncodeToString(password)}
	for i := range clusterSize {
		n := &NATSProcess{t: t, bin: bin, port: FreePort(t), monitor: FreePort(t), Name: fmt.Sprintf("n%d", i+1),
			StoreDir: filepath.Join(dir, fmt.Sprintf("n%d-store", i+1)), Log: filepath.Join(dir, fmt.Sprintf("n%d.log", i+1))}
		n.config = filepath.Join(dir, n.Name+".conf")
		route.Ports = append(route.Ports, FreePort(t))
		c.Nodes = append(c.Nodes, n)
		t.Cleanup(n.Kill)
	}
	for i, n := range c.Nodes {
		if err := os.WriteFile(n.config, []byte(route.nodeConfig(n, i)), 0o600); err != nil {
			t.Fatalf("NATS server config: %v", err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("--- last lines of nats-server %s ---\n%s", n.Name, lastLines(n.Output(), 30))
			}
		}
	})
	for _, n := range c.Nodes {
		n.launch()
	}
	for _, n := range c.Nodes {
		n.WaitHealthy(60 * time.Second)
	}
	// Healthy is not yet placeable: for a moment after the election the
	// meta leader still counts a peer offline (it has not heard from it),
	// and a 3-replica bucket made then is refused with "no suitable peers
	// for placement, peer offline" (seen once in CI). Wait until the
	// leader counts every server a current, online member.
	deadline := time.Now().Add(60 * time.Second)
	for _, n := range c.Nodes {
		for {
			err := c.CaughtUp(n.Name, nil)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("NATS cluster: %s is not a current member within 60s: %v", n.Name, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return c
}

// clusterRoute is how a cluster's servers reach each other: one route
// port each, and the credential every route must present.
type clusterRoute struct {
	User, Password string
	Ports          []int
}

// nodeConfig is the config file of node n, the i-th server: its ports and
// store, the cluster block with every route (a server drops the one to
// itself), and the roles (auth.conf, beside it).
func (r clusterRoute) nodeConfig(n *NATSProcess, i int) string {
	routes := make([]string, len(r.Ports))
	for j, p := range r.Ports {
		routes[j] = fmt.Sprintf("%q", fmt.Sprintf("nats://%s:%s@127.0.0.1:%d", r.User, r.Password, p))
	}
	return fmt.Sprintf(`server_name: %q
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
jetstream { store_dir: %q }
cluster {
  name: "berth-test"
  listen: "127.0.0.1:%d"
  authorization { user: %q, password: %q }
  routes: [%s]
}
include "auth.conf"
`, n.Name, n.port, n.monitor, n.StoreDir, r.Ports[i], r.User, r.Password, strings.Join(routes, ", "))
}

// URL is every server's client URL, comma-separated, as a daemon's
// --nats-url takes them.
func (c *NATSCluster) URL() string {
	urls := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		urls[i] = n.URL()
	}
	return strings.Join(urls, ",")
}

// Node returns the server named name (n1, n2, n3).
func (c *NATSCluster) Node(name string) *NATSProcess {
	c.t.Helper()
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	c.t.Fatalf("no NATS cluster node %q", name)
	return nil
}

// JSZ returns the JetStream report of node n (its /jsz), with the streams
// it holds a replica of and their cluster view.
func (n *NATSProcess) JSZ() (*server.JSInfo, error) {
	var info server.JSInfo
	if err := monitorGet(n.Monitor()+"/jsz?accounts=true&streams=true", &info); err != nil {
		return nil, fmt.Errorf("jsz of %s: %w", n.Name, err)
	}
	return &info, nil
}

func monitorGet(url string, v any) error {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// running returns the servers that run now.
func (c *NATSCluster) running() []*NATSProcess {
	var out []*NATSProcess
	for _, n := range c.Nodes {
		if n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// MetaLeader returns the JetStream meta leader that every running server
// agrees on, or "" while they have none or do not agree (an election).
func (c *NATSCluster) MetaLeader() string {
	leader := ""
	for i, n := range c.running() {
		info, err := n.JSZ()
		if err != nil || info.Meta == nil || info.Meta.Leader == "" {
			return ""
		}
		if i > 0 && info.Meta.Leader != leader {
			return ""
		}
		leader = info.Meta.Leader
	}
	return leader
}

// StreamLeader returns the leader of stream (a bucket's is KV_<bucket>)
// that every running server holding it agrees on, or "" while it has none
// or they do not agree.
func (c *NATSCluster) StreamLeader(stream string) string {
	leader := ""
	seen := false
	for _, n := range c.running() {
		info, err := n.JSZ()
		if err != nil {
			return ""
		}
		sd := findStream(info, stream)
		if sd == nil {
			continue
		}
		if sd.Cluster == nil || sd.Cluster.Leader == "" || seen && sd.Cluster.Leader != leader {
			return ""
		}
		leader, seen = sd.Cluster.Leader, true
	}
	return leader
}

// Streams returns the names of the streams node n holds, sorted.
func (n *NATSProcess) Streams() ([]string, error) {
	info, err := n.JSZ()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range info.AccountDetails {
		for _, s := range a.Streams {
			out = append(out, s.Name)
		}
	}
	slices.Sort(out)
	return out, nil
}

func findStream(info *server.JSInfo, stream string) *server.StreamDetail {
	for _, a := range info.AccountDetails {
		for i := range a.Streams {
			if a.Streams[i].Name == stream {
				return &a.Streams[i]
			}
		}
	}
	return nil
}

// CaughtUp returns nil once server name is a current member of the
// cluster again: the meta leader counts it current, and the leader of
// each of streams counts its replica there current with no lag; otherwise
// an error saying what still lags.
func (c *NATSCluster) CaughtUp(name string, streams []string) error {
	n := c.Node(name)
	if !n.Running() {
		return fmt.Errorf("%s is not running", name)
	}
	meta := c.MetaLeader()
	if meta == "" {
		return errors.New("no meta leader")
	}
	info, err := c.Node(meta).JSZ()
	if err != nil {
		return err
	}
	if err := current(info.Meta.Replicas, meta, name); err != nil {
		return fmt.Errorf("meta group: %w", err)
	}
	for _, s := range streams {
		leader := c.StreamLeader(s)
		if leader == "" {
			return fmt.Errorf("%s: no leader", s)
		}
		info, err := c.Node(leader).JSZ()
		if err != nil {
			return err
		}
		sd := findStream(info, s)
		if sd == nil || sd.Cluster == nil {
			return fmt.Errorf("%s: not on its leader %s", s, leader)
		}
		if err := current(sd.Cluster.Replicas, leader, name); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// current checks, in a leader's list of its peers, that name is current
// with no lag; the leader itself is.
func current(peers []*server.PeerInfo, leader, name string) error {
	if name == leader {
		return nil
	}
	for _, p := range peers {
		if p.Name != name {
			continue
		}
		if !p.Current || p.Offline || p.Lag > 0 {
			return fmt.Errorf("replica on %s not current (offline %t, lag %d, last seen %s ago)", name, p.Offline, p.Lag, p.Active)
		}
		return nil
	}
	return fmt.Errorf("no replica on %s", name)
}

// ConnectedTo returns the server that the client named name (its
// connection name, bus.Options.Name) is connected to, or "" when no
// running server has it.
func (c *NATSCluster) ConnectedTo(name string) string {
	for _, n := range c.running() {
		var conns server.Connz
		if err := monitorGet(n.Monitor()+"/connz?limit=1024", &conns); err != nil {
			continue
		}
		for _, ci := range conns.Conns {
			if ci.Name == name {
				return n.Name
			}
		}
	}
	return ""
}
