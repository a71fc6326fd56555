package docker

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

// noMetadata stands in for hosts.Policy.CheckIP: it refuses link-local.
func noMetadata(a netip.Addr) error {
	if a.Unmap().IsLinkLocalUnicast() {
		return errors.New("is link-local")
	}
	return nil
}

func TestPublishedAddress(t *testing.T) {
	t.Parallel()
	host := reach{host: "h1", publish: netip.MustParseAddr("10.0.0.11")}
	local := reach{publish: netip.MustParseAddr("127.0.0.1")}
	ip := netip.MustParseAddr
	tests := []struct {
		name     string
		r        reach
		bindings []binding
		want     string
		reported string
		err      string
	}{
		{"on the host's address", host, []binding{{ip("10.0.0.11"), "32768"}}, "10.0.0.11:32768", "", ""},
		{"the local engine", local, []binding{{ip("127.0.0.1"), "49153"}}, "127.0.0.1:49153", "", ""},
		{"not running: nothing published", host, nil, "", "", ""},
		{"a port not published yet", host, []binding{{ip("10.0.0.11"), ""}}, "", "", ""},
		{"the lowest of two on the host", host, []binding{{ip("10.0.0.11"), "40001"}, {ip("10.0.0.11"), "40000"}}, "10.0.0.11:40000", "", ""},
		{"v4-mapped form of the host", host, []binding{{ip("::ffff:10.0.0.11"), "32768"}}, "10.0.0.11:32768", "", ""},

		{"another machine's database", host, []binding{{ip("10.0.0.5"), "5432"}}, "", "10.0.0.5:5432", "a published port must be on 10.0.0.11, the address host h1 is registered with"},
		{"the metadata endpoint", host, []binding{{ip("169.254.169.254"), "80"}}, "", "169.254.169.254:80", "must be on 10.0.0.11"},
		{"loopback of the scheduler", host, []binding{{ip("127.0.0.1"), "7070"}}, "", "127.0.0.1:7070", "must be on 10.0.0.11"},
		{"all addresses", host, []binding{{ip("0.0.0.0"), "32768"}}, "", "0.0.0.0:32768", "must be on 10.0.0.11"},
		{"no address", host, []binding{{netip.Addr{}, "32768"}}, "", "<none>:32768", "must be on 10.0.0.11"},
		{"a foreign one beside the right one", host, []binding{{ip("10.0.0.11"), "32768"}, {ip("10.0.0.5"), "5432"}}, "", "10.0.0.5:5432", "must be on 10.0.0.11"},
		{"the local engine elsewhere", local, []binding{{ip("10.0.0.5"), "5432"}}, "", "10.0.0.5:5432", "the address the scheduler publishes on (--publish-address)"},
		{"port zero", host, []binding{{ip("10.0.0.11"), "0"}}, "", "10.0.0.11:0", "is not a port number"},
		{"port too large", host, []binding{{ip("10.0.0.11"), "70000"}}, "", "10.0.0.11:70000", "is not a port number"},
		{"port with junk", host, []binding{{ip("10.0.0.11"), "80;x"}}, "", "10.0.0.11:80;x", "is not a port number"},
		{"port leading zero", host, []binding{{ip("10.0.0.11"), "080"}}, "", "10.0.0.11:080", "is not a port number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			addr, reported, err := tt.r.published(tt.bindings)
			require.Equal(t, tt.want, addr)
			require.Equal(t, tt.reported, reported)
			if tt.err == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tt.err)
			}
		})
	}
}

func TestNetworkAddress(t *testing.T) {
	t.Parallel()
	prefixes := []netip.Prefix{netip.MustParsePrefix("172.30.0.0/16"), netip.MustParsePrefix("fd00:b::/64")}
	host := reach{host: "h1", network: "apps", prefixes: prefixes, allowed: noMetadata}
	local := reach{network: "apps", allowed: noMetadata}
	localBounded := reach{network: "apps", prefixes: prefixes, allowed: noMetadata}
	unbounded := reach{host: "h1", network: "apps", allowed: noMetadata}
	ip := netip.MustParseAddr
	tests := []struct {
		name     string
		r        reach
		ip       netip.Addr
		port     uint16
		exposed  []uint16
		want     string
		reported string
		err      string
	}{
		{"in the prefix", host, ip("172.30.4.7"), 8080, []uint16{80, 8080}, "172.30.4.7:8080", "", ""},
		{"v6 in the prefix", host, ip("fd00:b::7"), 8080, nil, "[fd00:b::7]:8080", "", ""},
		{"no port label: the lowest exposed", host, ip("172.30.4.7"), 0, []uint16{9000, 8080}, "172.30.4.7:8080", "", ""},
		{"not on the network", host, netip.Addr{}, 8080, nil, "", "", ""},
		{"no port at all", host, ip("172.30.4.7"), 0, nil, "", "", ""},
		{"the local engine, no prefixes", local, ip("172.18.0.3"), 8080, nil, "172.18.0.3:8080", "", ""},

		{"another machine's database", host, ip("10.0.0.5"), 5432, nil, "", "10.0.0.5:5432", "must lie in --network-cidr [172.30.0.0/16 fd00:b::/64]"},
		{"the metadata endpoint", host, ip("169.254.169.254"), 80, nil, "", "169.254.169.254:80", "is link-local"},
		{"the metadata endpoint, local engine", local, ip("169.254.169.254"), 80, nil, "", "169.254.169.254:80", "is link-local"},
		{"loopback", host, ip("127.0.0.1"), 7070, nil, "", "127.0.0.1:7070", "never loopback"},
		{"loopback, local engine", local, ip("127.0.0.1"), 7070, nil, "", "127.0.0.1:7070", "never loopback"},
		{"local engine outside its prefixes", localBounded, ip("10.0.0.5"), 5432, nil, "", "10.0.0.5:5432", "must lie in --network-cidr"},
		{"a registered host without prefixes", unbounded, ip("172.30.4.7"), 8080, nil, "", "172.30.4.7:8080", "accepted only within --network-cidr, which is not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			addr, reported, err := tt.r.onNetwork(tt.ip, tt.port, tt.exposed)
			require.Equal(t, tt.want, addr)
			require.Equal(t, tt.reported, reported)
			if tt.err == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tt.err)
			}
		})
	}
}

// fakeEngine is a Docker API on loopback that answers a container inspect
// with what a test makes it report, and records the X-Registry-Auth of
// each pull (by image) and whether a pull fails.
type fakeEngine struct {
	*httptest.Server
	mu      sync.Mutex
	inspect map[string]any
	pulls   map[string]string
	denied  bool // pulls answer "unauthorized"
}

func newFakeEngine(t *testing.T) *fakeEngine {
	t.Helper()
	e := &fakeEngine{pulls: map[string]string{}}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Api-Version", "1.45")
		e.mu.Lock()
		defer e.mu.Unlock()
		switch {
		case strings.HasSuffix(r.URL.Path, "/json") && strings.Contains(r.URL.Path, "/containers/"):
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(e.inspect)
		case r.URL.Query().Get("fromImage") != "":
			e.pulls[r.URL.Query().Get("fromImage")] = r.Header.Get("X-Registry-Auth")
			if e.denied {
				http.Error(w, `{"message":"unauthorized: authentication required"}`, http.StatusUnauthorized)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"status":"done"}` + "\n"))
		default:
			_, _ = w.Write([]byte("OK"))
		}
	}))
	t.Cleanup(e.Close)
	return e
}

func (e *fakeEngine) url() string { return "tcp://" + e.Listener.Addr().String() }

// reportContainer makes the engine report one running container with the
// given port bindings and network address.
func (e *fakeEngine) reportContainer(labels map[string]string, ports map[string][]map[string]string, networks map[string]map[string]string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.inspect = map[string]any{
		"Id": strings.Repeat("c", 64), "Name": "/berth-web-i1",
		"Config":          map[string]any{"Labels": labels, "ExposedPorts": map[string]any{"8080/tcp": map[string]any{}}},
		"State":           map[string]any{"Status": "running", "Running": true},
		"NetworkSettings": map[string]any{"Ports": ports, "Networks": networks},
	}
}

// TestInspectRefusesAForeignAddress drives the adapter against an engine
// that reports a binding on another machine (10.0.0.5:5432, a database):
// Inspect refuses it with an AddressError naming the host and the address
// as reported, and gives no address.
func TestInspectRefusesAForeignAddress(t *testing.T) {
	t.Parallel()
	e := newFakeEngine(t)
	labels := map[string]string{LabelManaged: "true", LabelPrefix: "addrtest", LabelApp: "web", LabelInstance: "i1", LabelHost: "h9", LabelPort: "8080"}
	c, err := New(Options{Prefix: "addrtest", Host: "h1", URL: e.url(), PublishAddress: "10.0.0.11"}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	ctx := context.Background()

	e.reportContainer(labels, map[string][]map[string]string{"8080/tcp": {{"HostIp": "10.0.0.11", "HostPort": "32768"}}}, nil)
	ct, err := c.Inspect(ctx, "c1")
	require.NoError(t, err)
	require.Equal(t, "10.0.0.11:32768", ct.Address)
	require.Equal(t, "h1", ct.Host, "the host is the client's, whatever the labels say")

	e.reportContainer(labels, map[string][]map[string]string{"8080/tcp": {{"HostIp": "10.0.0.5", "HostPort": "5432"}}}, nil)
	ct, err = c.Inspect(ctx, "c1")
	require.ErrorIs(t, err, ErrForeignAddress)
	var ae *AddressError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, AddressError{Host: "h1", Container: strings.Repeat("c", 64), Address: "10.0.0.5:5432",
		Reason: "a published port must be on 10.0.0.11, the address host h1 is registered with"}, *ae)
	require.Empty(t, ct.Address)
	require.Equal(t, "web", ct.App)

	// On --network, an address outside --network-cidr.
	n, err := New(Options{Prefix: "addrtest", Host: "h1", URL: e.url(), Network: "apps", NetworkPrefixes: []netip.Prefix{netip.MustParsePrefix("172.30.0.0/16")},
		Allowed: noMetadata}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = n.Close() })
	e.reportContainer(labels, nil, map[string]map[string]string{"apps": {"IPAddress": "172.30.0.9"}})
	ct, err = n.Inspect(ctx, "c1")
	require.NoError(t, err)
	require.Equal(t, "172.30.0.9:8080", ct.Address)
	e.reportContainer(labels, nil, map[string]map[string]string{"apps": {"IPAddress": "169.254.169.254"}})
	_, err = n.Inspect(ctx, "c1")
	require.ErrorAs(t, err, &ae)
	require.Equal(t, "169.254.169.254:8080", ae.Address)
}

// TestGuardedDialer connects only to an engine address the policy allows,
// checked after resolution: a host name that resolves to loopback is
// refused as the IP would be.
func TestGuardedDialer(t *testing.T) {
	t.Parallel()
	e := newFakeEngine(t)
	refuseLoopback := func(a netip.Addr) error {
		if a.IsLoopback() {
			return errors.New("is loopback")
		}
		return nil
	}
	port := e.Listener.Addr().(interface{ String() string }).String()
	_, p, _ := strings.Cut(port, ":")
	for _, url := range []string{e.url(), "tcp://localhost:" + p} {
		c, err := New(Options{Prefix: "dialtest", Host: "h1", URL: url, PublishAddress: "10.0.0.11", Allowed: refuseLoopback}, zaptest.NewLogger(t))
		require.NoError(t, err)
		_, err = c.Ping(context.Background())
		require.ErrorContains(t, err, "is loopback", url)
		_ = c.Close()
	}
	c, err := New(Options{Prefix: "dialtest", Host: "h1", URL: e.url(), PublishAddress: "10.0.0.11", Allowed: noMetadata}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	_, err = c.Ping(context.Background())
	require.NoError(t, err, "an allowed address connects")
}
