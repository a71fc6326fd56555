package render

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/lbagent/internal/nginx"
	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/templates"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func lb(method string) spec.LB {
	return spec.LB{Method: method, Keepalive: 32, MaxFails: 1, FailTimeout: spec.Duration(10 * time.Second),
		ConnectTimeout: spec.Duration(2 * time.Second), ReadTimeout: spec.Duration(time.Minute), NextUpstreamTries: 2, ClientMaxBodySize: 1 << 20}
}

func app(name string, servers int, hosts ...string) state.App {
	a := state.App{Spec: &msg.App{Name: name, Generation: 3, Term: 1, Port: 8080, LB: lb(spec.LBRoundRobin),
		Routing: spec.Routing{Hosts: hosts, Paths: []string{"/"}}}}
	for i := range servers {
		a.Servers = append(a.Servers, state.Server{Instance: fmt.Sprintf("i%d", i), Address: fmt.Sprintf("127.0.0.1:%d", 20000+i), Weight: 1})
	}
	return a
}

var opts = Options{Node: "lb-1", HTTPListen: "127.0.0.1:8080", HTTPSListen: "127.0.0.1:8443", StatusListen: "127.0.0.1:8091", ACME: "127.0.0.1:8092",
	AccessLogSocket: "/run/berth/lbagent.sock", Main: true}

// certDir holds a self-signed certificate made for the TLS scenario;
// golden files show it as /CERTS.
func certDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "web.example.com"},
		DNSNames: []string{"web.example.com"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kb, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "web.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "web.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	return dir
}

func scenarios(t *testing.T, certs string) map[string]state.Snapshot {
	methods := state.Snapshot{}
	for _, m := range []string{spec.LBRoundRobin, spec.LBLeastConn, spec.LBIPHash, spec.LBHash, spec.LBRandomTwoLeastConn} {
		a := app(strings.ReplaceAll(m, "_", "-"), 2, strings.ReplaceAll(m, "_", "-")+".example.com")
		a.Spec.LB = lb(m)
		if m == spec.LBHash {
			a.Spec.LB.HashKey = "$cookie_session$request_uri"
		}
		methods.Apps = append(methods.Apps, a)
	}
	weights := app("web", 3)
	weights.Servers[1].Weight, weights.Servers[2].Backup = 5, true
	weights.Spec.LB.Keepalive = 0

	tls := app("web", 1, "web.example.com")
	tls.Spec.Routing.TLS = &spec.TLS{Certificate: certs + "/web.crt", Key: certs + "/web.key", RedirectHTTP: true}
	tlsNoRedirect := app("shop", 1, "shop.example.com")
	tlsNoRedirect.Spec.Routing.TLS = &spec.TLS{Certificate: certs + "/web.crt", Key: certs + "/web.key"}

	// tls.acme: one app with its certificate issued (lbagent named its
	// files), with the redirect; one still waiting for its first, served
	// over plain HTTP; both answer the CA's challenges.
	acmeIssued := app("shop", 1, "shop.example.com")
	acmeIssued.Spec.Routing.TLS = &spec.TLS{ACME: true, Certificate: certs + "/web.crt", Key: certs + "/web.key", RedirectHTTP: true}
	acmeWaiting := app("blog", 1, "blog.example.com")
	acmeWaiting.Spec.Routing.TLS = &spec.TLS{ACME: true, RedirectHTTP: true}

	multi := app("web", 2, "web.example.com", "*.web.example.com", "www.example.com")
	multi.Spec.CreatedAt = time.Unix(100, 0)
	multi.Spec.Routing.Paths = []string{"/", "/api", "/static/"}
	multi.Spec.Routing.ShareWith = []spec.Share{{App: "admin"}}
	other := app("admin", 1, "web.example.com")
	other.Spec.CreatedAt = time.Unix(200, 0)
	other.Spec.Routing.Paths = []string{"/admin"}

	// Every rule kind: exact and regex locations, a prefix with a rate
	// limit and response headers, and two apps' regexes in claim order.
	shop := app("shop", 2, "shop.example.com")
	shop.Spec.CreatedAt = time.Unix(100, 0)
	shop.Spec.Routing.Rules = []spec.Rule{
		{Path: "/healthz", Match: spec.MatchExact},
		{Path: `^/img/.+\.(png|jpe?g)$`, Match: spec.MatchRegex, ResponseHeaders: map[string]string{"Cache-Control": "public, max-age=86400"}},
		{Path: "/api", RateLimit: &spec.RateLimit{RPS: 100, Burst: 50}, ResponseHeaders: map[string]string{"Cache-Control": "no-store", "X-Frame-Options": "DENY"}},
		{Path: "/static", Split: []spec.Split{{App: "shop-beta", Weight: 10}}},
	}
	shop.Spec.Routing.ShareWith = []spec.Share{{App: "legacy-api"}, {App: "shop-beta", Paths: []string{"/api"}}}
	legacy := app("legacy-api", 1, "shop.example.com")
	legacy.Spec.CreatedAt = time.Unix(200, 0)
	legacy.Spec.Routing.Paths = nil
	legacy.Spec.Routing.Rules = []spec.Rule{{Path: "^/v1/", Match: spec.MatchRegex, RateLimit: &spec.RateLimit{RPS: 5}}}
	// shop's /api shared by header (canary): requests with X-Beta: 1, or
	// with a team matching a regex, go to shop-beta.
	beta := app("shop-beta", 1, "shop.example.com")
	beta.Spec.CreatedAt = time.Unix(300, 0)
	beta.Spec.Routing.Paths = nil
	beta.Spec.Routing.Rules = []spec.Rule{
		{Path: "/api", Headers: map[string]string{"X-Beta": "1"}},
		{Path: "/api", Headers: map[string]string{"X-Team": "~^(red|blue)$", "X-Beta": "yes"}},
	}

	many := state.Snapshot{Revision: 9000}
	for i := range 100 {
		many.Apps = append(many.Apps, app(fmt.Sprintf("app-%03d", i), 3, fmt.Sprintf("app-%03d.example.com", i)))
	}
	return map[string]state.Snapshot{
		"empty":         {},
		"one-app":       {Apps: []state.App{app("web", 2, "web.example.com")}, Revision: 17},
		"lb-methods":    methods,
		"weights":       {Apps: []state.App{weights}},
		"tls":           {Apps: []state.App{tls, tlsNoRedirect}},
		"acme":          {Apps: []state.App{acmeWaiting, acmeIssued}},
		"hosts-paths":   {Apps: []state.App{other, multi}},
		"no-server":     {Apps: []state.App{app("web", 0, "web.example.com"), app("api", 0)}},
		"default-route": {Apps: []state.App{app("demo", 3)}},
		"rules":         {Apps: []state.App{legacy, shop, beta}},
		"100-apps":      many,
	}
}

func TestGoldenAndNginxAccepts(t *testing.T) {
	t.Parallel()
	r, err := Load(templates.FS)
	require.NoError(t, err)
	certs := certDir(t)
	bin := testrig.NginxBin(t)
	for name, snap := range scenarios(t, certs) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d, conflicts := Layout(snap, 5, opts)
			require.Empty(t, conflicts)
			out, err := r.Render(d, true)
			require.NoError(t, err)
			again, err := r.Render(d, true)
			require.NoError(t, err)
			require.Equal(t, out, again, "rendering is deterministic")

			golden := filepath.Join("testdata", name+".conf")
			shown := strings.ReplaceAll(string(out), certs, "/CERTS")
			if *update {
				require.NoError(t, os.WriteFile(golden, []byte(shown), 0o644))
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err)
			require.Equal(t, string(want), shown)

			requireNginxAccepts(t, bin, out)
			tlsDefaults := strings.Count(string(out), "ssl http2 default_server;")
			require.Equal(t, 1, strings.Count(string(out), "default_server;")-tlsDefaults, "exactly one default_server for plain HTTP in the whole config")
			require.LessOrEqual(t, tlsDefaults, 1, "at most one for HTTPS, which rejects unknown names")
		})
	}
}

func requireNginxAccepts(t *testing.T, bin string, conf []byte) {
	t.Helper()
	require.NoError(t, nginxTest(t, bin, conf))
}

func TestHTTPContextOnly(t *testing.T) {
	t.Parallel()
	r, err := Load(templates.FS)
	require.NoError(t, err)
	d, _ := Layout(state.Snapshot{Apps: []state.App{app("web", 1)}}, 1, opts)
	out, err := r.Render(d, false)
	require.NoError(t, err)
	require.NotContains(t, string(out), "events {")
	require.NotContains(t, string(out), "pid ")
	require.Contains(t, string(out), "upstream berth_web {")
	// It must work inside an http block of someone else's nginx.conf.
	requireNginxAccepts(t, testrig.NginxBin(t), []byte(testrig.MainConfig(string(out))))
}

func TestConflicts(t *testing.T) {
	t.Parallel()
	a := app("alpha", 1, "web.example.com")
	a.Spec.Routing.ShareWith = []spec.Share{{App: "beta"}}
	b := app("beta", 1, "web.example.com")
	c := app("gamma", 1, "shop.example.com")
	c.Spec.Routing.TLS = &spec.TLS{Certificate: "/a.crt", Key: "/a.key"}
	d := app("delta", 1, "shop.example.com")
	d.Spec.Routing.TLS = &spec.TLS{Certificate: "/b.crt", Key: "/b.key"}
	d.Spec.Routing.Paths = []string{"/d"}
	d.Spec.Routing.ShareWith = []spec.Share{{App: "gamma"}}
	e := app("epsilon", 1, "web.example.com")
	e.Spec.Routing.Paths = []string{"/e"}
	_, conflicts := Layout(state.Snapshot{Apps: []state.App{a, b, d, c, e}}, 1, opts)
	require.Equal(t, map[string]string{
		"beta":    "path / on host web.example.com is already routed to app alpha, which claimed it first",
		"gamma":   "host shop.example.com belongs to app delta, which alone sets its TLS and redirect: remove routing.tls, or give app gamma hosts of its own",
		"epsilon": "host web.example.com belongs to app alpha, which claimed it first: app epsilon may route there only when alpha lists it in routing.share_with",
	}, conflicts)
}

func TestHelpersRefuseHostileValues(t *testing.T) {
	t.Parallel()
	r, err := Load(templates.FS)
	require.NoError(t, err)
	tests := []struct {
		name   string
		mutate func(*state.App)
		want   string
	}{
		{"host", func(a *state.App) { a.Spec.Routing.Hosts = []string{"a.com; }"} }, "is not a valid host name"},
		{"address", func(a *state.App) { a.Servers[0].Address = "127.0.0.1:1 down; server evil:80" }, "is not a valid address"},
		{"hash key", func(a *state.App) { a.Spec.LB.Method, a.Spec.LB.HashKey = spec.LBHash, "$uri; }" }, "is not an allowed hash key"},
		{"cert", func(a *state.App) {
			a.Spec.Routing.Hosts = []string{"a.com"}
			a.Spec.Routing.TLS = &spec.TLS{Certificate: "/c.crt;", Key: "/k"}
		}, "is not a valid file path"},
		{"app name", func(a *state.App) { a.Spec.Name = `web"` }, "is not a valid name"},
		{"app name with a newline", func(a *state.App) { a.Spec.Name = "web\n}" }, "is not a valid name"},
		{"path", func(a *state.App) { a.Spec.Routing.Paths = []string{"/a {"} }, "path"},
		{"ipv6 zone", func(a *state.App) { a.Servers[0].Address = "[fe80::1%x;\n}\nserver {listen 9999;}\n#]:80" }, "is not a valid address"},
		{"host name address", func(a *state.App) { a.Servers[0].Address = "evil.example.com:80" }, "is not a valid address"},
		{"exact host over the hash bucket", func(a *state.App) { a.Spec.Routing.Hosts = []string{longHost(spec.MaxExactHostLen + 1)} }, "at most 110"},
		{"regex", func(a *state.App) {
			a.Spec.Routing.Rules = []spec.Rule{{Path: "^/a{1} { return 200; }", Match: spec.MatchRegex}}
		}, "is not an allowed regex"},
		{"exact path", func(a *state.App) { a.Spec.Routing.Rules = []spec.Rule{{Path: "/a; }", Match: spec.MatchExact}} }, "is not a valid path"},
		{"response header name", func(a *state.App) {
			a.Spec.Routing.Rules = []spec.Rule{{Path: "/a", ResponseHeaders: map[string]string{"X-A always; return 200; add_header X-B": "v"}}}
		}, "is not a valid header name"},
		{"response header variable", func(a *state.App) {
			a.Spec.Routing.Rules = []spec.Rule{{Path: "/a", ResponseHeaders: map[string]string{"X-Leak": "$http_authorization"}}}
		}, "holds '$'"},
		{"response header quote", func(a *state.App) {
			a.Spec.Routing.Rules = []spec.Rule{{Path: "/a", ResponseHeaders: map[string]string{"X-A": `v" always; return 200 "x`}}}
		}, "is not a valid header value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := app("web", 1)
			tt.mutate(&a)
			d, _ := Layout(state.Snapshot{Apps: []state.App{a}}, 1, opts)
			_, err := r.Render(d, true)
			require.ErrorContains(t, err, tt.want)
		})
	}
}

// longHost is a valid host name of n characters, in labels of 60.
func longHost(n int) string {
	return (strings.Repeat(strings.Repeat("a", 59)+".", 5))[:n-4] + ".com"
}

// The longest exact host name the grammar allows fits the server name hash
// bucket the config sets: nginx -t accepts it, and a wildcard name longer
// still (its labels are hashed one by one).
func TestLongestHostNamesNginxAccepts(t *testing.T) {
	t.Parallel()
	r, err := Load(templates.FS)
	require.NoError(t, err)
	exact, wild := app("exact", 1, longHost(spec.MaxExactHostLen)), app("wild", 1, "*."+longHost(200))
	require.NoError(t, spec.CheckHost(exact.Spec.Routing.Hosts[0]))
	require.NoError(t, spec.CheckHost(wild.Spec.Routing.Hosts[0]))
	d, conflicts := Layout(state.Snapshot{Apps: []state.App{exact, wild}}, 1, opts)
	require.Empty(t, conflicts)
	out, err := r.Render(d, true)
	require.NoError(t, err)
	requireNginxAccepts(t, testrig.NginxBin(t), out)

	// One character more is what froze every lbagent: nginx -t refuses it
	// (the host helper refuses it before nginx could).
	atMax := longHost(spec.MaxExactHostLen)
	over := atMax[:len(atMax)-4] + "b.com"
	conf := strings.ReplaceAll(string(out), atMax, over)
	require.ErrorContains(t, nginxTest(t, testrig.NginxBin(t), []byte(conf)), "server_names_hash_bucket_size")
}

func mustRender(t *testing.T, r *Renderer, d Data) []byte {
	t.Helper()
	out, err := r.Render(d, true)
	require.NoError(t, err)
	return out
}

func nginxTest(t *testing.T, bin string, conf []byte) error {
	t.Helper()
	staging := t.TempDir()
	for _, d := range []string{"conf", "logs", "run", "temp"} {
		require.NoError(t, os.MkdirAll(filepath.Join(staging, d), 0o755))
	}
	path := filepath.Join(staging, "conf", "nginx.conf")
	require.NoError(t, os.WriteFile(path, conf, 0o644))
	return nginx.Binary{Path: bin}.Test(context.Background(), staging, path)
}

// "/x" and "/x/" are one route: within one app one location, across two
// apps a conflict the first to claim it wins; either way nginx -t passes
// (a duplicate location froze every lbagent).
func TestRoutesNormalisedAndClaimedFirst(t *testing.T) {
	t.Parallel()
	r, err := Load(templates.FS)
	require.NoError(t, err)
	bin := testrig.NginxBin(t)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	withPaths := func(a state.App, created time.Time, paths ...string) state.App {
		a.Spec.Routing.Paths, a.Spec.CreatedAt = paths, created
		a.Spec.Routing.ShareWith = []spec.Share{{App: "alpha"}, {App: "zeta"}} // whichever owns the host shares it
		return a
	}
	tests := []struct {
		name      string
		apps      []state.App
		conflicts map[string]string
		owners    map[string]string // "host path" → app
	}{
		{"one app, both spellings", []state.App{withPaths(app("web", 1, "a.test"), t0, "/api", "/api/")}, map[string]string{},
			map[string]string{"a.test /api": "web"}},
		{"two apps, the older keeps it", []state.App{
			withPaths(app("alpha", 1, "a.test"), t0.Add(time.Hour), "/api"),
			withPaths(app("zeta", 1, "a.test"), t0, "/api/", "/z"),
		}, map[string]string{"alpha": "path /api on host a.test is already routed to app zeta, which claimed it first"},
			map[string]string{"a.test /api": "zeta", "a.test /z": "zeta"}},
		{"a known creation time claims before an unknown one", []state.App{
			withPaths(app("alpha", 1), time.Time{}, "/api/"),
			withPaths(app("zeta", 1), t0, "/api"),
		}, map[string]string{"alpha": "path /api on the default server (apps without routing.hosts) is already routed to app zeta, which claimed it first"},
			map[string]string{" /api": "zeta"}},
		{"no creation times: by name", []state.App{
			withPaths(app("alpha", 1), time.Time{}, "/api/"),
			withPaths(app("zeta", 1), time.Time{}, "/api"),
		}, map[string]string{"zeta": "path /api on the default server (apps without routing.hosts) is already routed to app alpha, which claimed it first"},
			map[string]string{" /api": "alpha"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, conflicts := Layout(state.Snapshot{Apps: tt.apps}, 1, opts)
			require.Equal(t, tt.conflicts, conflicts)
			owners := map[string]string{}
			for _, srv := range d.Servers {
				for _, l := range srv.Locations {
					_, dup := owners[srv.Host+" "+l.Path]
					require.False(t, dup, "one location per route")
					owners[srv.Host+" "+l.Path] = l.App
				}
			}
			for k, v := range tt.owners {
				require.Equal(t, v, owners[k], k)
			}
			requireNginxAccepts(t, bin, mustRender(t, r, d))
		})
	}
}

func TestLoadRefusesBrokenTemplates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "nginx.conf.tmpl"), []byte("{{if}}"), 0o644))
	_, err := Load(os.DirFS(dir))
	require.ErrorContains(t, err, "parse templates")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "nginx.conf.tmpl"), []byte("{{.Nope}}"), 0o644))
	_, err = Load(os.DirFS(dir))
	require.ErrorContains(t, err, `template "http" is missing`)
}

func FuzzHelpers(f *testing.F) {
	for _, s := range []string{"web.example.com", "a;b", "127.0.0.1:80", "/etc/x.crt", "$remote_addr", "\"", "}", "a\nb", "$uri$host"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for name, fn := range map[string]func(string) (string, error){
			"host": funcs["host"].(func(string) (string, error)), "file": funcs["file"].(func(string) (string, error)),
			"addr": funcs["addr"].(func(string) (string, error)), "hashkey": funcs["hashkey"].(func(string) (string, error)),
			"quote": funcs["quote"].(func(string) (string, error)),
		} {
			out, err := fn(s)
			if err != nil {
				continue
			}
			inner := strings.Trim(out, `"`)
			if !spec.NginxSafe(inner) || strings.ContainsAny(inner, " \t") && name != "quote" {
				t.Fatalf("%s(%q) let %q through", name, s, out)
			}
		}
	})
}

// luaModules is where Debian's libnginx-mod-http-lua installs the modules.
const luaModules = "/usr/lib/nginx/modules"

// Dynamic mode renders every app's upstream once, whatever its servers,
// with the Lua balancer; the same golden and nginx -t checks hold.
func TestGoldenDynamicAndNginxAccepts(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(filepath.Join(luaModules, "ngx_http_lua_module.so")); err != nil {
		if testrig.InCI() {
			t.Fatalf("nginx's Lua module is missing from %s (apt-get install libnginx-mod-http-lua lua-resty-core lua-cjson)", luaModules)
		}
		t.Skipf("nginx's Lua module is missing: apt-get install libnginx-mod-http-lua lua-resty-core lua-cjson")
	}
	r, err := Load(templates.FS)
	require.NoError(t, err)
	certs := certDir(t)
	stateDir := t.TempDir()
	lua := filepath.Join(stateDir, "lua")
	src, err := fs.ReadFile(templates.FS, "lua/berth/dynamic.lua")
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Join(lua, "berth"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(lua, "berth", "dynamic.lua"), src, 0o644))
	o := opts
	o.Dynamic = &Dynamic{LuaDir: lua, Snapshot: filepath.Join(stateDir, "berth-endpoints.json"), Token: filepath.Join(stateDir, "berth-control.token"), ModulesDir: luaModules, Drain: true}
	bin := testrig.NginxBin(t)
	all := scenarios(t, certs)
	for _, name := range []string{"empty", "one-app", "lb-methods", "tls", "hosts-paths", "no-server", "rules"} {
		snap := all[name]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d, conflicts := Layout(snap, 5, o)
			require.Empty(t, conflicts)
			out, err := r.Render(d, true)
			require.NoError(t, err)
			golden := filepath.Join("testdata", "dynamic-"+name+".conf")
			shown := strings.ReplaceAll(strings.ReplaceAll(string(out), certs, "/CERTS"), stateDir, "/STATE")
			if *update {
				require.NoError(t, os.WriteFile(golden, []byte(shown), 0o644))
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err)
			require.Equal(t, string(want), shown)
			requireNginxAccepts(t, bin, out)
			require.NotContains(t, shown, "server 127.0.0.1:", "no endpoint reaches the config file")
		})
	}
	// An endpoint change is not a layout change: same bytes.
	one := all["one-app"]
	more := state2(one)
	more.Apps[0].Servers = append(more.Apps[0].Servers, more.Apps[0].Servers[0])
	more.Apps[0].Servers[2].Address = "127.0.0.1:29999"
	d1, _ := Layout(one, 5, o)
	d2, _ := Layout(more, 5, o)
	a, err := r.Render(d1, true)
	require.NoError(t, err)
	b, err := r.Render(d2, true)
	require.NoError(t, err)
	require.Equal(t, string(a), string(b))

	// Without the drain (--reload-drain 0) no closer is rendered, and the
	// access handler is not told of one; nginx still accepts it.
	noDrain := o
	nd := *o.Dynamic
	nd.Drain = false
	noDrain.Dynamic = &nd
	d3, _ := Layout(all["hosts-paths"], 5, noDrain)
	c, err := r.Render(d3, true)
	require.NoError(t, err)
	require.NotContains(t, string(c), "_close")
	require.Contains(t, string(c), `access("web") }`)
	requireNginxAccepts(t, bin, c)
}

// state2 copies a snapshot deeply enough to change its servers.
func state2(s state.Snapshot) state.Snapshot {
	out := state.Snapshot{Revision: s.Revision}
	for _, a := range s.Apps {
		a.Servers = append([]state.Server(nil), a.Servers...)
		out.Apps = append(out.Apps, a)
	}
	return out
}

// TestACMEServers: the challenge location only where the app with
// tls.acme routes something, TLS only on the hosts its certificate
// covers, and another app's route on the challenge path reported as a
// conflict rather than a duplicate location nginx would refuse.
func TestACMEServers(t *testing.T) {
	t.Parallel()
	certs := certDir(t)
	// shop has a certificate for shop.example.com only; www was added since.
	shop := app("shop", 1, "shop.example.com", "www.shop.example.com")
	shop.Spec.CreatedAt = time.Unix(200, 0)
	shop.Spec.Routing.TLS = &spec.TLS{ACME: true, Certificate: certs + "/web.crt", Key: certs + "/web.key", RedirectHTTP: true}
	shop.Cert = &msg.Certificate{App: "shop", Names: []string{"shop.example.com"}}
	shop.Spec.Routing.ShareWith = []spec.Share{{App: "webroot"}}
	// webroot, created later, routes the challenge path on shop's host.
	webroot := app("webroot", 1, "shop.example.com")
	webroot.Spec.CreatedAt = time.Unix(500, 0)
	webroot.Spec.Routing.Paths = []string{"/.well-known/acme-challenge/", "/.well-known/other"}
	// late lists a host whose every route is alpha's: no challenge for it.
	alpha := app("alpha", 1, "alpha.example.com")
	alpha.Spec.CreatedAt = time.Unix(100, 0)
	alpha.Spec.Routing.ShareWith = []spec.Share{{App: "late"}}
	late := app("late", 1, "alpha.example.com")
	late.Spec.CreatedAt = time.Unix(900, 0)
	late.Spec.Routing.TLS = &spec.TLS{ACME: true}
	d, conflicts := Layout(state.Snapshot{Apps: []state.App{alpha, late, shop, webroot}}, 1, opts)
	require.Equal(t, map[string]string{
		"late":    "host alpha.example.com belongs to app alpha, which alone sets its TLS and redirect: remove routing.tls, or give app late hosts of its own",
		"webroot": "/.well-known/acme-challenge/ on host shop.example.com is where the ACME CA's challenges are answered, for an app with tls.acme",
	}, conflicts)
	byHost := map[string]Server{}
	for _, srv := range d.Servers {
		byHost[srv.Host] = srv
	}
	require.Empty(t, byHost["alpha.example.com"].ACME)
	require.Equal(t, opts.ACME, byHost["shop.example.com"].ACME)
	require.NotNil(t, byHost["shop.example.com"].TLS)
	require.Nil(t, byHost["www.shop.example.com"].TLS, "not covered yet: plain HTTP, no redirect to a certificate that does not match")
	require.False(t, byHost["www.shop.example.com"].RedirectHTTP)
	require.Equal(t, opts.ACME, byHost["www.shop.example.com"].ACME)

	r, err := Load(templates.FS)
	require.NoError(t, err)
	out, err := r.Render(d, true)
	require.NoError(t, err)
	requireNginxAccepts(t, testrig.NginxBin(t), out)
	require.Contains(t, string(out), "location /.well-known/other/ {", "webroot keeps its other route")
	require.NotContains(t, string(out), "location /.well-known/acme-challenge/ {", "none of webroot's on the challenge path")
}
