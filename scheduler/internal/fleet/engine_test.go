package fleet

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/hosts"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// TestTLSEngine drives a real engine that serves its API over TCP with
// --tlsverify, as a remote host is protected, through the scheduler's
// dial (TLS files resolved under --host-tls-dir): with the client files
// the host is up and runs a container published on its address; without
// them it never answers, and is down after the host timeout.
func TestTLSEngine(t *testing.T) {
	t.Parallel()
	e := testrig.StartTLSEngine(t)
	img := testrig.DemoImage(t, "v1")
	require.NoError(t, e.Load(img))
	logger := zaptest.NewLogger(t)
	// The scheduler's own dial: the client files lie in the engine's
	// directory, named as --host-tls-dir; a loopback engine needs
	// --allow-loopback-hosts.
	dial := DockerDial(DialOptions{Prefix: "tlstest", Policy: hosts.Policy{TLSDir: filepath.Dir(e.TLS.CA), AllowLoopback: true}}, logger)
	reg := &registry{hosts: []store.Host{
		{Name: "tls", DockerURL: e.TCPURL, TLSCA: e.TLS.CA, TLSCert: e.TLS.Cert, TLSKey: e.TLS.Key, Address: e.Address},
		{Name: "plain", DockerURL: e.TCPURL, Address: e.Address}, // the same engine, no client certificate
	}}
	f := New(Config{Timeout: 2 * time.Second}, reg, dial, nil, logger)
	ctx := context.Background()
	require.NoError(t, f.Sync(ctx))
	_, err := f.List(ctx)
	require.NoError(t, err)
	state, _ := f.State("tls")
	require.Equal(t, Up, state, "the TLS client is accepted")

	id, err := f.Create(ctx, docker.CreateOptions{Host: "tls", App: "web", Instance: "tls1", Image: img, Port: 8080, Memory: 64 << 20, StopGrace: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Remove(context.Background(), id) })
	require.NoError(t, f.Start(ctx, id))
	ct, err := f.Inspect(ctx, id)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(ct.Address, e.Address+":"), "published on the host's address: %s", ct.Address)
	body := testrig.WaitHTTP(t, "http://"+ct.Address+"/", 10*time.Second)
	require.Contains(t, body, `"instance":"tls1"`)
	list, err := f.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1, "listed once, under the host it was created on")
	require.Equal(t, "tls", list[0].Host)

	// Without the client files the engine refuses every call: down.
	require.Eventually(t, func() bool {
		f.probe(ctx)
		state, _ := f.State("plain")
		return state == Down
	}, 10*time.Second, 200*time.Millisecond)
	resp, err := http.Get("http://" + ct.Address + "/")
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}
