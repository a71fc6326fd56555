package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/hosts"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// newHostsAPI serves the API with the host registry under policy p.
func newHostsAPI(t *testing.T, p hosts.Policy) *client {
	t.Helper()
	st, err := store.Open(context.Background(), testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(context.Background())
	require.NoError(t, err)
	d := deps(st)
	d.Hosts = HostRegistry{HostStore: st, Policy: p}
	srv := httptest.NewServer(New(d, Options{Open: true, DefaultCPU: 1, DefaultMemory: 512 << 20, Role: func() (bool, uint64) { return true, 7 }}, zaptest.NewLogger(t)))
	t.Cleanup(srv.Close)
	return &client{t: t, url: srv.URL, st: st}
}

// tlsDir makes a --host-tls-dir with a CA, a client certificate and key
// in it, and beside it another service's key, linked from inside.
func tlsDir(t *testing.T) (dir, outside string) {
	t.Helper()
	root := t.TempDir()
	dir = filepath.Join(root, "hosts")
	require.NoError(t, os.MkdirAll(dir, 0o700))
	for _, f := range []string{"ca.pem", "cert.pem", "key.pem"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), []byte("pem"), 0o600))
	}
	outside = filepath.Join(root, "cert.key")
	require.NoError(t, os.WriteFile(outside, []byte("the scheduler's certificate key"), 0o600))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "linked.pem")))
	return dir, outside
}

func hostJSON(name, url, address string, tls *hosts.TLS, registries ...string) string {
	b, _ := json.Marshal(hosts.Spec{Name: name, DockerURL: url, Address: address, TLS: tls, Registries: registries})
	return string(b)
}

func TestHosts(t *testing.T) {
	t.Parallel()
	dir, _ := tlsDir(t)
	c := newHostsAPI(t, hosts.Policy{TLSDir: dir})
	files := &hosts.TLS{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	h1 := `{"name":"h1","docker_url":"tcp://10.0.0.1:2376","tls":{"ca":"` + files.CA + `","cert":"` + files.Cert + `","key":"` + files.Key + `"},` +
		`"address":"10.0.0.1","labels":{"zone":"a"},"cpu":8,"memory":"16Gi","registries":["registry.corp.example"]}`
	code, obj, raw := c.do("PUT", "/v1/hosts/h1", h1)
	require.Equal(t, 200, code, "%s", raw)
	require.Equal(t, "unknown", obj["state"])
	require.Equal(t, "16Gi", obj["memory"])
	require.Equal(t, true, obj["tls"])
	require.Equal(t, []any{"registry.corp.example"}, obj["registries"])
	require.NotContains(t, string(raw), dir, "no file path is shown")

	code, obj, raw = c.do("PUT", "/v1/hosts/h2", `{"name":"h2","docker_url":"tcp://10.0.0.2:2375","address":"10.0.0.2"}`)
	require.Equal(t, 400, code, "%s", raw)
	require.Equal(t, "tls", obj["fields"].([]any)[0].(map[string]any)["path"])
	code, _, raw = c.do("PUT", "/v1/hosts/h2", `{"name":"h2","docker_url":"unix:///run/d.sock","address":"10.0.1.2","gpu":true}`)
	require.Equal(t, 400, code, "%s", raw)
	require.Contains(t, string(raw), `unknown field \"gpu\"`)
	code, _, raw = c.do("PUT", "/v1/hosts/h3", `{"name":"h2","docker_url":"unix:///run/d.sock","address":"10.0.1.2"}`)
	require.Equal(t, 400, code, "%s", raw)
	require.Contains(t, string(raw), "must match the host in the URL")

	// What instances reserve: web sets 0.5 CPU, api nothing (the defaults).
	_, _, err := c.st.Apply(context.Background(), &spec.App{Name: "web", Image: "web:1", Port: 8080, Resources: spec.Resources{CPU: 0.5, Memory: 64 << 20}}, nil)
	require.NoError(t, err)
	_, _, err = c.st.Apply(context.Background(), &spec.App{Name: "api", Image: "api:1", Port: 8080}, nil)
	require.NoError(t, err)
	l, ok, err := c.st.Acquire(context.Background(), "scheduler", "t", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, c.st.LeaderTx(context.Background(), l, func(ctx context.Context, tx *store.Tx) error {
		for i, app := range []string{"web", "web", "api"} {
			if err := tx.PutInstance(ctx, store.Instance{ID: fmt.Sprintf("i%d", i), App: app, Generation: 1, State: "running", Host: "h1"}); err != nil {
				return err
			}
		}
		if err := tx.SetHostState(ctx, "h1", store.HostDown, "host h1 is not used: tls.key: outside --host-tls-dir", time.Now(), time.Time{}); err != nil {
			return err
		}
		return tx.PutInstance(ctx, store.Instance{ID: "gone", App: "web", Generation: 1, State: "stopped", Host: "h1"})
	}))
	var list []HostView
	code, _, raw = c.do("GET", "/v1/hosts", "")
	require.Equal(t, 200, code)
	require.NoError(t, json.Unmarshal(raw, &list))
	require.Len(t, list, 1)
	require.Equal(t, 3, list[0].Instances)
	require.InDelta(t, 2.0, list[0].ReservedCPU, 1e-9)
	require.Equal(t, spec.ByteSize(640<<20), list[0].ReservedMemory)
	require.True(t, list[0].TLS)
	require.Equal(t, "host h1 is not used: tls.key: outside --host-tls-dir", list[0].StateReason)
	require.NotContains(t, string(raw), dir, "GET /v1/hosts shows no file path")
	require.NotContains(t, string(raw), "ca.pem")

	code, obj, _ = c.do("POST", "/v1/hosts/h1/drain", "")
	require.Equal(t, 200, code)
	require.Equal(t, true, obj["drain"])
	code, _, raw = c.do("DELETE", "/v1/hosts/h1", "")
	require.Equal(t, 409, code, "%s", raw)
	require.Contains(t, string(raw), "drain it first")
	code, _, _ = c.do("DELETE", "/v1/hosts/h1?force=true", "")
	require.Equal(t, 200, code)
	code, _, _ = c.do("GET", "/v1/hosts/h1", "")
	require.Equal(t, 404, code)
	code, _, _ = c.do("POST", "/v1/hosts/nope/undrain", "")
	require.Equal(t, 404, code)
}

// TestHostRegistrationRefused is each finding of the audit against PUT
// /v1/hosts as an API caller would try it: TLS files outside the
// operator's directory (directly, through "..", through a link), a
// loopback, link-local or metadata address, a docker_url at the metadata
// endpoint. Each is a 400 naming its field (and the directory); nothing
// is stored.
func TestHostRegistrationRefused(t *testing.T) {
	t.Parallel()
	dir, outside := tlsDir(t)
	c := newHostsAPI(t, hosts.Policy{TLSDir: dir})
	none := newHostsAPI(t, hosts.Policy{})
	loop := newHostsAPI(t, hosts.Policy{TLSDir: dir, AllowLoopback: true})
	in := func(f string) string { return filepath.Join(dir, f) }
	tlsWith := func(key string) *hosts.TLS { return &hosts.TLS{CA: in("ca.pem"), Cert: in("cert.pem"), Key: key} }
	tests := []struct {
		name  string
		c     *client
		body  string
		field string
		want  []string
	}{
		{"another service's key as the client key", c, hostJSON("h1", "tcp://10.0.0.1:2376", "10.0.0.1", tlsWith(outside)),
			"tls.key", []string{"is not under --host-tls-dir " + dir}},
		{"a link out of the directory", c, hostJSON("h1", "tcp://10.0.0.1:2376", "10.0.0.1", tlsWith(in("linked.pem"))),
			"tls.key", []string{"to a file outside --host-tls-dir " + dir}},
		{"dot-dot out of the directory", c, hostJSON("h1", "tcp://10.0.0.1:2376", "10.0.0.1", tlsWith(dir+"/../cert.key")),
			"tls.key", []string{"is not a valid file path"}},
		{"a missing file", c, hostJSON("h1", "tcp://10.0.0.1:2376", "10.0.0.1", tlsWith(in("nope.pem"))),
			"tls.key", []string{"no such file or directory"}},
		{"TLS files without --host-tls-dir", none, hostJSON("h1", "tcp://10.0.0.1:2376", "10.0.0.1", tlsWith(in("key.pem"))),
			"tls", []string{"no --host-tls-dir"}},
		{"a loopback address", c, hostJSON("h1", "unix:///run/d.sock", "127.0.0.1", nil),
			"address", []string{"is loopback", "--allow-loopback-hosts"}},
		{"the metadata endpoint", loop, hostJSON("h1", "unix:///run/d.sock", "169.254.169.254", nil),
			"address", []string{"is link-local"}},
		{"link-local v6", loop, hostJSON("h1", "unix:///run/d.sock", "fe80::1", nil),
			"address", []string{"is link-local"}},
		{"unspecified", loop, hostJSON("h1", "unix:///run/d.sock", "0.0.0.0", nil),
			"address", []string{"is unspecified"}},
		{"multicast", loop, hostJSON("h1", "unix:///run/d.sock", "224.0.0.1", nil),
			"address", []string{"is multicast"}},
		{"an engine at the metadata endpoint", loop, hostJSON("h1", "tcp://169.254.169.254:80", "10.0.0.1", tlsWith(in("key.pem"))),
			"docker_url", []string{"its host 169.254.169.254 is link-local"}},
		{"an engine on loopback", c, hostJSON("h1", "tcp://127.0.0.1:2375", "10.0.0.1", nil),
			"docker_url", []string{"is loopback"}},
		{"a registry as a URL", c, hostJSON("h1", "unix:///run/d.sock", "10.0.0.1", nil, "https://registry.corp.example/v2/"),
			"registries[0]", []string{"is not a registry"}},
	}
	// A group: its parallel cases end before the registrations below.
	t.Run("refused", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				code, obj, raw := tt.c.do("PUT", "/v1/hosts/h1", tt.body)
				require.Equal(t, 400, code, "%s", raw)
				var paths []string
				for _, f := range obj["fields"].([]any) {
					fe := f.(map[string]any)
					paths = append(paths, fe["path"].(string))
					if fe["path"] == tt.field {
						for _, w := range tt.want {
							require.Contains(t, fe["message"], w)
						}
					}
				}
				require.Contains(t, paths, tt.field)
				require.NotContains(t, string(raw), "certificate key", "no file's content is shown")
				code, _, _ = tt.c.do("GET", "/v1/hosts/h1", "")
				require.Equal(t, 404, code, "nothing stored")
			})
		}
	})

	// Allowed: files in the directory; loopback with the flag.
	code, _, raw := c.do("PUT", "/v1/hosts/h1", hostJSON("h1", "tcp://10.0.0.1:2376", "10.0.0.1", tlsWith(in("key.pem"))))
	require.Equal(t, 200, code, "%s", raw)
	code, _, raw = loop.do("PUT", "/v1/hosts/h1", hostJSON("h1", "unix:///run/d.sock", "127.0.10.1", nil))
	require.Equal(t, 200, code, "%s", raw)
	require.False(t, strings.Contains(string(raw), `"tls":true`))
}

// GET of an app counts as running only what runs on a host not recorded
// down, and counts apart the instances lost with their host (failed
// records kept while they may still run there).
func TestAppCountsWhatRuns(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	ctx := context.Background()
	code, _, raw := c.do("PUT", "/v1/apps/web", "name: web\nimage: web:1\nport: 8080\nreplicas: 6\n")
	require.Equal(t, 200, code, "%s", raw)
	for _, h := range []string{"h1", "h2"} {
		_, err := c.st.PutHost(ctx, store.Host{Name: h, DockerURL: "unix:///run/" + h + ".sock", Address: "10.0.0.1"})
		require.NoError(t, err)
	}
	l, ok, err := c.st.Acquire(ctx, "scheduler", "t", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, c.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for i, in := range []struct{ host, state string }{{"h1", "running"}, {"h1", "running"}, {"h1", "starting"},
			{"h2", "running"}, {"h2", "failed"}, {"h2", "failed"}} {
			if err := tx.PutInstance(ctx, store.Instance{ID: fmt.Sprintf("i%d", i), App: "web", Generation: 1, State: in.state, Host: in.host}); err != nil {
				return err
			}
		}
		if err := tx.SetHostState(ctx, "h1", store.HostUp, "", time.Now(), time.Now()); err != nil {
			return err
		}
		return tx.SetHostState(ctx, "h2", store.HostDown, "", time.Now(), time.Now().Add(-time.Minute))
	}))
	code, obj, raw := c.do("GET", "/v1/apps/web", "")
	require.Equal(t, 200, code, "%s", raw)
	require.EqualValues(t, 2, obj["observed_replicas"], "h2 is down: its running record is not counted")
	require.EqualValues(t, 2, obj["lost_replicas"])
}
