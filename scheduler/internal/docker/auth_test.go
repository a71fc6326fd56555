package docker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func basic(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

// configJSON is a Docker config.json with one auth per server.
func configJSON(t *testing.T, auths map[string]string) []byte {
	t.Helper()
	m := map[string]map[string]string{}
	for server, a := range auths {
		m[server] = map[string]string{"auth": a}
	}
	b, err := json.Marshal(map[string]any{"auths": m})
	require.NoError(t, err)
	return b
}

// decoded is the user an encoded X-Registry-Auth carries, "" for none.
func decoded(t *testing.T, enc string) string {
	t.Helper()
	if enc == "" {
		return ""
	}
	b, err := base64.URLEncoding.DecodeString(enc)
	require.NoError(t, err)
	var ac registry.AuthConfig
	require.NoError(t, json.Unmarshal(b, &ac))
	return ac.Username
}

func TestRegistryAuthsFor(t *testing.T) {
	t.Parallel()
	auths, err := ParseRegistryAuths(configJSON(t, map[string]string{
		"https://index.docker.io/v1/": basic("hub", "hubpass"),
		"ghcr.io":                     basic("gh", "ghpass"),
		"https://Registry.Local:5000": basic("local", "localpass"),
		"http://plain.example/v2/":    basic("plain", "plainpass"),
	}))
	require.NoError(t, err)
	require.Equal(t, []string{"docker.io", "ghcr.io", "plain.example", "registry.local:5000"}, auths.Hosts())
	for _, tc := range []struct{ ref, user string }{
		{"nginx", "hub"},
		{"nginx:1.27", "hub"},
		{"library/nginx@sha256:" + fmt.Sprintf("%064d", 0), "hub"},
		{"docker.io/acme/web:1", "hub"},
		{"index.docker.io/acme/web:1", "hub"},
		{"ghcr.io/acme/web:1", "gh"},
		{"GHCR.io/acme/web:1", "gh"}, // host names ignore case
		{"registry.local:5000/web:1", "local"},
		{"registry.local/web:1", ""}, // another port is another registry
		{"plain.example/web", "plain"},
		{"evil.example/web:1", ""},
		{"ghcr.io.evil.example/web:1", ""},
		{"evil.example/ghcr.io/web:1", ""},
		{"localhost:5000/web", ""},
		{"::not a ref::", ""},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.user, decoded(t, auths.For(tc.ref)))
		})
	}
}

func TestRegistryAuthsHubAliases(t *testing.T) {
	t.Parallel()
	for _, key := range []string{"docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/", "https://registry-1.docker.io"} {
		t.Run(key, func(t *testing.T) {
			t.Parallel()
			auths, err := ParseRegistryAuths(configJSON(t, map[string]string{key: basic("hub", "p")}))
			require.NoError(t, err)
			require.Equal(t, "hub", decoded(t, auths.For("acme/web:1")))
			require.Empty(t, auths.For("quay.io/acme/web:1"))
		})
	}
}

func TestParseRegistryAuthsRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, config, want string
	}{
		{"not json", `{"auths": {"ghcr.io": {"auth": "c2VjcmV0`, "invalid JSON"},
		{"wrong type", `{"auths": {"ghcr.io": {"auth": 918273645}}}`, "must be string"},
		{"not base64", `{"auths": {"ghcr.io": {"auth": "!!secret!!"}}}`, "not base64 of user:password"},
		{"no colon", `{"auths": {"ghcr.io": {"auth": "` + base64.StdEncoding.EncodeToString([]byte("secretsecret")) + `"}}}`, "not base64 of user:password"},
		{"two hub entries", string(configJSON(t, map[string]string{"docker.io": basic("a", "secret"), "https://index.docker.io/v1/": basic("b", "secret")})), "same registry docker.io"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseRegistryAuths([]byte(tc.config))
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "secret", "errors never echo credentials")
			require.NotContains(t, err.Error(), "918273645")
		})
	}
}

func TestRegistryAuthsSkipsHelperEntries(t *testing.T) {
	t.Parallel()
	auths, err := ParseRegistryAuths([]byte(`{"auths": {"https://index.docker.io/v1/": {}}, "credsStore": "desktop"}`))
	require.NoError(t, err)
	require.Empty(t, auths.Hosts())
	require.Empty(t, auths.For("nginx"))
}

func TestLoadRegistryAuths(t *testing.T) {
	t.Parallel()
	none, err := LoadRegistryAuths("")
	require.NoError(t, err)
	require.Empty(t, none.For("nginx"))
	var nilAuths *RegistryAuths
	require.Empty(t, nilAuths.For("nginx"))

	path := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(path, configJSON(t, map[string]string{"ghcr.io": basic("gh", "p")}), 0o600))
	auths, err := LoadRegistryAuths(path)
	require.NoError(t, err)
	require.Equal(t, "gh", decoded(t, auths.For("ghcr.io/a/b")))
	_, err = LoadRegistryAuths(filepath.Join(t.TempDir(), "missing.json"))
	require.ErrorContains(t, err, "--registry-auth-file")
}

// TestPullSendsOnlyTheImagesRegistryAuth pulls through a fake engine and
// checks the X-Registry-Auth header each pull carries.
func TestPullSendsOnlyTheImagesRegistryAuth(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	got := map[string]string{}
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Api-Version", "1.45")
		if r.URL.Query().Get("fromImage") != "" {
			mu.Lock()
			got[r.URL.Query().Get("fromImage")] = r.Header.Get(registry.AuthHeader)
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"status":"done"}` + "\n"))
			return
		}
		_, _ = w.Write([]byte("OK"))
	}))
	t.Cleanup(engine.Close)
	auths, err := ParseRegistryAuths(configJSON(t, map[string]string{"ghcr.io": basic("gh", "ghpass"), "docker.io": basic("hub", "hubpass")}))
	require.NoError(t, err)
	cli, err := client.New(client.WithHost("tcp://" + engine.Listener.Addr().String()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	c := &Client{c: cli, o: Options{Prefix: "authtest", RegistryAuths: auths}, logger: zaptest.NewLogger(t)}

	ctx := context.Background()
	for _, ref := range []string{"ghcr.io/acme/web:1", "acme/web:1", "evil.example/acme/web:1"} {
		require.NoError(t, c.Pull(ctx, ref, 5*time.Second))
	}
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, "gh", decoded(t, got["ghcr.io/acme/web"]))
	require.Equal(t, "hub", decoded(t, got["docker.io/acme/web"]))
	require.Contains(t, got, "evil.example/acme/web")
	require.Empty(t, got["evil.example/acme/web"], "no credentials to a registry without an entry")
}

func TestRegistryAuthsOnly(t *testing.T) {
	t.Parallel()
	all, err := ParseRegistryAuths(configJSON(t, map[string]string{
		"registry.corp.example":       basic("corp", "corppass"),
		"https://index.docker.io/v1/": basic("hub", "hubpass"),
		"ghcr.io":                     basic("gh", "ghpass"),
	}))
	require.NoError(t, err)
	for _, tc := range []struct {
		name       string
		registries []string
		ref, user  string
		withheld   string
	}{
		{"its registry", []string{"registry.corp.example"}, "registry.corp.example/app:1", "corp", ""},
		{"another registry's image", []string{"registry.corp.example"}, "ghcr.io/acme/web:1", "", "ghcr.io"},
		{"Docker Hub withheld", []string{"registry.corp.example"}, "nginx:1.27", "", "docker.io"},
		{"Docker Hub allowed", []string{"docker.io"}, "acme/web:1", "hub", ""},
		{"no registry allowed", nil, "registry.corp.example/app:1", "", "registry.corp.example"},
		{"a registry without credentials", nil, "quay.io/acme/web:1", "", ""},
		{"a lookalike", []string{"registry.corp.example"}, "registry.corp.example.evil.example/app:1", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			only := all.Only(tc.registries)
			require.Equal(t, tc.user, decoded(t, only.For(tc.ref)))
			require.Equal(t, tc.withheld, only.Withheld(tc.ref))
		})
	}
	require.Equal(t, []string{"docker.io", "ghcr.io", "registry.corp.example"}, all.Hosts(), "Only leaves the original whole")
	require.Empty(t, all.Withheld("ghcr.io/acme/web:1"), "the local engine withholds nothing")
	var none *RegistryAuths
	require.Empty(t, none.Only([]string{"ghcr.io"}).For("ghcr.io/acme/web:1"))
}

// TestPullOnAHostSendsOnlyItsRegistries pulls through fake engines on
// loopback, one client per host as the fleet makes them: the host allowed
// registry.corp.example gets that entry and no other, the host allowed
// none gets no credential; when its pull then fails, the error says that
// the host is not allowed that registry's credential and how to allow it.
func TestPullOnAHostSendsOnlyItsRegistries(t *testing.T) {
	t.Parallel()
	auths, err := ParseRegistryAuths(configJSON(t, map[string]string{"registry.corp.example": basic("corp", "corppass"), "ghcr.io": basic("gh", "ghpass")}))
	require.NoError(t, err)
	ctx := context.Background()
	allowed, denied := newFakeEngine(t), newFakeEngine(t)
	h1, err := New(Options{Prefix: "authtest", Host: "h1", URL: allowed.url(), RegistryAuths: auths.Only([]string{"registry.corp.example"})}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = h1.Close() })
	h2, err := New(Options{Prefix: "authtest", Host: "h2", URL: denied.url(), RegistryAuths: auths.Only(nil)}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = h2.Close() })

	for _, ref := range []string{"registry.corp.example/app:1", "ghcr.io/acme/web:1"} {
		require.NoError(t, h1.Pull(ctx, ref, 5*time.Second))
	}
	require.NoError(t, h2.Pull(ctx, "registry.corp.example/app:1", 5*time.Second))
	allowed.mu.Lock()
	require.Equal(t, "corp", decoded(t, allowed.pulls["registry.corp.example/app"]))
	require.Contains(t, allowed.pulls, "ghcr.io/acme/web")
	require.Empty(t, allowed.pulls["ghcr.io/acme/web"], "a registry the host is not allowed: no credential")
	allowed.mu.Unlock()
	denied.mu.Lock()
	require.Contains(t, denied.pulls, "registry.corp.example/app")
	require.Empty(t, denied.pulls["registry.corp.example/app"], "a host allowed no registry gets no credential")
	denied.denied = true
	denied.mu.Unlock()

	err = h2.Pull(ctx, "registry.corp.example/app:1", 5*time.Second)
	require.ErrorContains(t, err, "host h2 is not allowed the credential of registry registry.corp.example")
	require.ErrorContains(t, err, "scheduler hosts add h2 … --registry registry.corp.example")
	require.NotContains(t, err.Error(), "corppass")
	err = h2.Pull(ctx, "quay.io/acme/web:1", 5*time.Second)
	require.Error(t, err)
	require.NotContains(t, err.Error(), "not allowed the credential", "no hint for a registry without credentials")
}

// Login gives the resolver a registry's credential, by the registry as an
// image names it; Docker Hub's aliases are one.
func TestRegistryAuthsLogin(t *testing.T) {
	t.Parallel()
	auths, err := ParseRegistryAuths(configJSON(t, map[string]string{
		"https://index.docker.io/v1/": basic("hub", "hubpass"),
		"127.0.0.1:5000":              basic("ci", "cipass"),
	}))
	require.NoError(t, err)
	for _, tc := range []struct{ registry, user, pass string }{
		{"docker.io", "hub", "hubpass"},
		{"index.docker.io", "hub", "hubpass"},
		{"127.0.0.1:5000", "ci", "cipass"},
		{"127.0.0.1:5001", "", ""},
		{"ghcr.io", "", ""},
	} {
		user, pass, _, ok := auths.Login(tc.registry)
		require.Equal(t, tc.user != "", ok, tc.registry)
		require.Equal(t, tc.user, user, tc.registry)
		require.Equal(t, tc.pass, pass, tc.registry)
	}
	_, _, _, ok := auths.Only([]string{"docker.io"}).Login("127.0.0.1:5000")
	require.False(t, ok, "Only keeps the allowed registries' logins alone")
	_, _, _, ok = auths.Only([]string{"docker.io"}).Login("docker.io")
	require.True(t, ok)
	var none *RegistryAuths
	_, _, _, ok = none.Login("docker.io")
	require.False(t, ok)
}
