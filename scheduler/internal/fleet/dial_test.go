package fleet

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/hosts"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// pullEngine is a Docker API on loopback that records the X-Registry-Auth
// of every pull, by image.
type pullEngine struct {
	srv   *httptest.Server
	mu    sync.Mutex
	pulls map[string]string
}

func newPullEngine(t *testing.T) *pullEngine {
	t.Helper()
	e := &pullEngine{pulls: map[string]string{}}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Api-Version", "1.45")
		if img := r.URL.Query().Get("fromImage"); img != "" {
			e.mu.Lock()
			e.pulls[img] = r.Header.Get("X-Registry-Auth")
			e.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"status":"done"}` + "\n"))
			return
		}
		_, _ = w.Write([]byte("OK"))
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *pullEngine) url() string { return "tcp://" + e.srv.Listener.Addr().String() }

// user is the registry user an X-Registry-Auth the engine got for img carries.
func (e *pullEngine) user(t *testing.T, img string) (string, bool) {
	t.Helper()
	e.mu.Lock()
	enc, pulled := e.pulls[img]
	e.mu.Unlock()
	if enc == "" {
		return "", pulled
	}
	b, err := base64.URLEncoding.DecodeString(enc)
	require.NoError(t, err)
	var ac struct {
		Username string `json:"username"`
	}
	require.NoError(t, json.Unmarshal(b, &ac))
	return ac.Username, pulled
}

func authsFor(t *testing.T, users map[string]string) *docker.RegistryAuths {
	t.Helper()
	m := map[string]map[string]string{}
	for server, user := range users {
		m[server] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + user + "-secret"))}
	}
	b, err := json.Marshal(map[string]any{"auths": m})
	require.NoError(t, err)
	auths, err := docker.ParseRegistryAuths(b)
	require.NoError(t, err)
	return auths
}

// TestDialSendsEachHostOnlyItsRegistries registers two loopback fake
// engines through the scheduler's own dial: the host allowed
// registry.corp.example receives that credential and no other; the host
// allowed none receives none.
func TestDialSendsEachHostOnlyItsRegistries(t *testing.T) {
	t.Parallel()
	allowed, other := newPullEngine(t), newPullEngine(t)
	auths := authsFor(t, map[string]string{"registry.corp.example": "corp", "ghcr.io": "gh"})
	reg := &registry{hosts: []store.Host{
		{Name: "h1", DockerURL: allowed.url(), Address: "127.0.0.1", Registries: []string{"registry.corp.example"}},
		{Name: "h2", DockerURL: other.url(), Address: "127.0.0.1"},
	}}
	dial := DockerDial(DialOptions{Prefix: "dialtest", Policy: hosts.Policy{AllowLoopback: true}, Auths: auths}, zaptest.NewLogger(t))
	f := New(Config{Timeout: 2 * time.Second}, reg, dial, nil, zaptest.NewLogger(t))
	ctx := context.Background()
	require.NoError(t, f.Sync(ctx))
	f.probe(ctx)

	for _, ref := range []string{"registry.corp.example/app:1", "ghcr.io/acme/web:1"} {
		require.NoError(t, f.Pull(ctx, "h1", ref, 5*time.Second))
		require.NoError(t, f.Pull(ctx, "h2", ref, 5*time.Second))
	}
	user, pulled := allowed.user(t, "registry.corp.example/app")
	require.True(t, pulled)
	require.Equal(t, "corp", user, "h1 may receive registry.corp.example's credential")
	user, pulled = allowed.user(t, "ghcr.io/acme/web")
	require.True(t, pulled)
	require.Empty(t, user, "h1 is not allowed ghcr.io's")
	for _, img := range []string{"registry.corp.example/app", "ghcr.io/acme/web"} {
		user, pulled = other.user(t, img)
		require.True(t, pulled)
		require.Empty(t, user, "h2 is allowed no registry: %s", img)
	}
}

// TestDialRefusesWhatThePolicyRefuses: a stored host whose registration
// breaks the policy (TLS files out of --host-tls-dir, through a link made
// after registration; a loopback address without --allow-loopback-hosts;
// --network without --network-cidr) is not dialled: it is down, with
// the reason the leader records, and its files are never read.
func TestDialRefusesWhatThePolicyRefuses(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dir := filepath.Join(root, "hosts")
	require.NoError(t, os.MkdirAll(dir, 0o700))
	secret := filepath.Join(root, "service.key")
	require.NoError(t, os.WriteFile(secret, []byte("not a host's key"), 0o600))
	for _, f := range []string{"ca.pem", "cert.pem"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), []byte("pem"), 0o600))
	}
	require.NoError(t, os.Symlink(secret, filepath.Join(dir, "key.pem")))

	tlsHost := store.Host{Name: "h1", DockerURL: "tcp://10.0.0.1:2376", Address: "10.0.0.1",
		TLSCA: filepath.Join(dir, "ca.pem"), TLSCert: filepath.Join(dir, "cert.pem"), TLSKey: filepath.Join(dir, "key.pem")}
	tests := []struct {
		name string
		o    DialOptions
		host store.Host
		want string
	}{
		{"a key linked out of the directory", DialOptions{Policy: hosts.Policy{TLSDir: dir}}, tlsHost,
			"host h1 is not used: its registration is refused: tls.key: \"" + filepath.Join(dir, "key.pem") + "\" resolves (through a symbolic link or \"..\") to a file outside --host-tls-dir " + dir},
		{"a key outside the directory", DialOptions{Policy: hosts.Policy{TLSDir: dir}}, func() store.Host { h := tlsHost; h.TLSKey = secret; return h }(),
			"tls.key: \"" + secret + "\" is not under --host-tls-dir " + dir},
		{"TLS files without the directory", DialOptions{}, tlsHost, "tls: TLS files are refused: this scheduler has no --host-tls-dir"},
		{"a loopback address", DialOptions{}, store.Host{Name: "h2", DockerURL: "unix:///run/h2.sock", Address: "127.0.10.2"}, "address: \"127.0.10.2\" is loopback"},
		{"the metadata endpoint", DialOptions{Policy: hosts.Policy{AllowLoopback: true}}, store.Host{Name: "h3", DockerURL: "unix:///run/h3.sock", Address: "169.254.169.254"}, "is link-local"},
		{"--network without --network-cidr", DialOptions{Network: "apps"}, store.Host{Name: "h4", DockerURL: "unix:///run/h4.sock", Address: "10.0.0.4"}, "only --network-cidr lets the scheduler check"},
	}
	// A group: its parallel cases end before the files change below.
	t.Run("refused", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				tt.o.Prefix = "dialtest"
				reg := &registry{hosts: []store.Host{tt.host}}
				f := New(Config{Timeout: 2 * time.Second}, reg, DockerDial(tt.o, zaptest.NewLogger(t)), nil, zaptest.NewLogger(t))
				var changed []string
				f.Changed = func(host, state string) { changed = append(changed, host+"="+state) }
				require.NoError(t, f.Sync(context.Background()))
				state, _ := f.State(tt.host.Name)
				require.Equal(t, Down, state)
				require.Equal(t, []string{tt.host.Name + "=" + Down}, changed)
				var reason string
				f.Each(func(host, _, r string, _ time.Time) { reason = r })
				require.Contains(t, reason, tt.want)
				require.NotContains(t, reason, "\n")
			})
		}
	})

	// Allowed: the same host with its key in the directory is dialled.
	require.NoError(t, os.Remove(filepath.Join(dir, "key.pem")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "key.pem"), []byte("pem"), 0o600))
	_, err := DockerDial(DialOptions{Prefix: "dialtest", Policy: hosts.Policy{TLSDir: dir}}, zaptest.NewLogger(t))(tlsHost)
	require.ErrorContains(t, err, "configure TLS", "the files are read now (they are not PEM here): the policy let them through")
}
