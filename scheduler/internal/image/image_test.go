package image

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/require"
)

// testRegistry is go-containerregistry's registry on 127.0.0.1: the real
// protocol. It counts requests; user and password, when set, are required.
type testRegistry struct {
	srv      *httptest.Server
	requests atomic.Int64
	host     string
}

func newRegistry(t *testing.T, user, password string) *testRegistry {
	t.Helper()
	r := &testRegistry{}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		if user != "" {
			u, p, ok := req.BasicAuth()
			if !ok || u != user || p != password {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	r.host = strings.TrimPrefix(r.srv.URL, "http://")
	return r
}

// push writes a random image as repo:tag and returns its digest.
func (r *testRegistry) push(t *testing.T, repo string, opts ...remote.Option) string {
	t.Helper()
	img, err := random.Image(256, 1)
	require.NoError(t, err)
	ref, err := name.ParseReference(r.host+"/"+repo, name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(ref, img, opts...))
	d, err := img.Digest()
	require.NoError(t, err)
	return d.String()
}

// fakeEngines hold images, each with a HEALTHCHECK unless bare.
type fakeEngines struct {
	images map[string][]Local
	bare   map[string]bool
	err    error
}

func (f fakeEngines) Images(_ context.Context, ref string) ([]Local, error) {
	out := slices.Clone(f.images[ref])
	for i := range out {
		out[i].Healthcheck = !f.bare[ref]
	}
	return out, f.err
}

type creds map[string][2]string

func (c creds) Login(reg string) (string, string, string, bool) {
	v, ok := c[reg]
	return v[0], v[1], "", ok
}

const (
	idA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	idB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func TestResolveRegistry(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t, "", "")
	r := &Resolver{Timeout: 5 * time.Second}
	ctx := context.Background()
	v1d := reg.push(t, "demo:latest")
	pin, err := r.Resolve(ctx, reg.host+"/demo:latest")
	require.NoError(t, err)
	require.Equal(t, Pin{Ref: reg.host + "/demo@" + v1d, Source: FromRegistry}, pin)

	// The tag pushed again: the next resolve sees the new digest.
	v2d := reg.push(t, "demo:latest")
	require.NotEqual(t, v1d, v2d)
	pin, err = r.Resolve(ctx, reg.host+"/demo:latest")
	require.NoError(t, err)
	require.Equal(t, reg.host+"/demo@"+v2d, pin.Ref)
	require.Equal(t, v2d, Digest(pin.Ref))

	// No tag means latest.
	pin, err = r.Resolve(ctx, reg.host+"/demo")
	require.NoError(t, err)
	require.Equal(t, reg.host+"/demo@"+v2d, pin.Ref)

	// A tag the registry does not have: not pinned, saying why.
	start := time.Now()
	pin, err = r.Resolve(ctx, reg.host+"/demo:nope")
	require.NoError(t, err)
	require.Empty(t, pin.Ref)
	require.Contains(t, pin.Reason, "registry "+reg.host)
	require.Less(t, time.Since(start), 2*time.Second, "one attempt, no retries")
}

func TestResolveDigestInSpec(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t, "", "")
	r := &Resolver{Timeout: time.Second, Engines: fakeEngines{err: errors.New("must not be asked")}}
	for _, in := range []string{reg.host + "/demo@" + idA, reg.host + "/demo:v1@" + idA} {
		pin, err := r.Resolve(context.Background(), in)
		require.NoError(t, err)
		require.Equal(t, Pin{Ref: reg.host + "/demo@" + idA, Source: FromSpec}, pin, in)
	}
	pin, err := r.Resolve(context.Background(), "web@"+idA)
	require.NoError(t, err)
	require.Equal(t, "web@"+idA, pin.Ref, "a Docker Hub name stays as written")
	require.Zero(t, reg.requests.Load(), "a digest in the spec asks nobody")
}

func TestResolveLocalImage(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t, "", "")
	ctx := context.Background()

	// Built locally (no repo digest): its ID, with no registry asked,
	// even under the registry's name.
	local := reg.host + "/built:v1"
	r := &Resolver{Timeout: time.Second, Engines: fakeEngines{images: map[string][]Local{
		"berth-demo:v1": {{Host: "h1", ID: idA}, {Host: "h2", ID: idA}},
		local:           {{ID: idB}},
	}}}
	start := time.Now()
	pin, err := r.Resolve(ctx, "berth-demo:v1")
	require.NoError(t, err)
	require.Equal(t, Pin{Ref: idA, Source: FromEngine}, pin)
	require.Less(t, time.Since(start), 100*time.Millisecond, "no registry lookup")
	pin, err = r.Resolve(ctx, local)
	require.NoError(t, err)
	require.Equal(t, Pin{Ref: idB, Source: FromEngine}, pin)
	require.Zero(t, reg.requests.Load(), "no registry asked")

	// Two hosts pulled different images under the tag (it moved between
	// their pulls): the registry decides.
	d := reg.push(t, "moved:latest")
	r.Engines = fakeEngines{images: map[string][]Local{reg.host + "/moved:latest": {
		{Host: "h1", ID: idA, RepoDigests: []string{reg.host + "/moved@" + idA}}, {Host: "h2", ID: idB, RepoDigests: []string{reg.host + "/moved@" + idB}}}}}
	pin, err = r.Resolve(ctx, reg.host+"/moved:latest")
	require.NoError(t, err)
	require.Equal(t, Pin{Ref: reg.host + "/moved@" + d, Source: FromRegistry}, pin)

	// Two hosts hold different images under the name: refused, naming both.
	r.Engines = fakeEngines{images: map[string][]Local{"berth-demo:v1": {{Host: "h1", ID: idA}, {Host: "h2", ID: idB}}}}
	_, err = r.Resolve(ctx, "berth-demo:v1")
	require.ErrorIs(t, err, ErrAmbiguous)
	require.Contains(t, err.Error(), "host h1 has sha256:aaaaaaaaaaaa, host h2 has sha256:bbbbbbbbbbbb")
}

func TestResolvePulledImageRegistryDown(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t, "", "")
	ref := reg.host + "/demo:v1"
	d := reg.push(t, "demo:v1")
	// Pulled before (a repo digest): the registry decides while it answers.
	r := &Resolver{Timeout: time.Second, Engines: fakeEngines{images: map[string][]Local{ref: {{ID: idA, RepoDigests: []string{reg.host + "/demo@" + idB}}}}}}
	pin, err := r.Resolve(context.Background(), ref)
	require.NoError(t, err)
	require.Equal(t, Pin{Ref: reg.host + "/demo@" + d, Source: FromRegistry}, pin)
	// The registry gone: the repo digest the engine recorded, which hosts can pull.
	reg.srv.Close()
	pin, err = r.Resolve(context.Background(), ref)
	require.NoError(t, err)
	require.Equal(t, reg.host+"/demo@"+idB, pin.Ref)
	require.Equal(t, FromEngine, pin.Source)
	require.NotEmpty(t, pin.Reason, "what the registry answered")
}

func TestResolveCredentials(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t, "ci", "s3cret")
	d := reg.push(t, "private:v1", remote.WithAuth(authn.FromConfig(authn.AuthConfig{Username: "ci", Password: "s3cret"})))
	ref := reg.host + "/private:v1"

	pin, err := (&Resolver{Timeout: time.Second}).Resolve(context.Background(), ref)
	require.NoError(t, err)
	require.Empty(t, pin.Ref, "no credential, no digest")
	require.Contains(t, pin.Reason, "401")

	pin, err = (&Resolver{Timeout: time.Second, Credentials: creds{"other.io": {"ci", "s3cret"}}}).Resolve(context.Background(), ref)
	require.NoError(t, err)
	require.Empty(t, pin.Ref, "another registry's credential is not sent")

	pin, err = (&Resolver{Timeout: time.Second, Credentials: creds{reg.host: {"ci", "s3cret"}}}).Resolve(context.Background(), ref)
	require.NoError(t, err)
	require.Equal(t, reg.host+"/private@"+d, pin.Ref)
	require.NotContains(t, pin.Reason, "s3cret")
}

func TestResolveTimeout(t *testing.T) {
	t.Parallel()
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(hang); srv.Close() })
	host := strings.TrimPrefix(srv.URL, "http://")
	start := time.Now()
	pin, err := (&Resolver{Timeout: 300 * time.Millisecond}).Resolve(context.Background(), host+"/slow:v1")
	require.NoError(t, err)
	require.Empty(t, pin.Ref)
	require.Contains(t, pin.Reason, "within 300ms (--resolve-timeout)")
	require.Less(t, time.Since(start), 2*time.Second)
}

func TestPlainHTTPOnlyToLoopback(t *testing.T) {
	t.Parallel()
	for host, want := range map[string]bool{"localhost:5000": true, "127.0.0.1:5000": true, "127.100.3.1:80": true, "[::1]:5000": true,
		"10.0.0.1:5000": false, "192.168.1.2": false, "registry.local": false, "localhost.evil.com": false} {
		require.Equal(t, want, IsLoopback(host), host)
	}
	req := httptest.NewRequest("GET", "http://10.0.0.1:5000/v2/", nil)
	_, err := loopbackOnlyHTTP{next: http.DefaultTransport}.RoundTrip(req)
	require.ErrorContains(t, err, "plain HTTP to registry 10.0.0.1:5000 refused")
}

func TestIDAndDigest(t *testing.T) {
	t.Parallel()
	require.True(t, IsID(idA))
	require.False(t, IsID("web@"+idA))
	require.False(t, IsID("web:v1"))
	require.Equal(t, idA, Digest("r.io/web@"+idA))
	require.Equal(t, idA, Digest(idA))
}

type hangingEngines struct{}

func (hangingEngines) Images(ctx context.Context, _ string) ([]Local, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// Engines that do not answer and a registry that does not either: one
// timeout bounds them together.
func TestResolveTimeoutBoundsEnginesAndRegistry(t *testing.T) {
	t.Parallel()
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(hang); srv.Close() })
	start := time.Now()
	pin, err := (&Resolver{Timeout: 300 * time.Millisecond, Engines: hangingEngines{}}).Resolve(context.Background(), strings.TrimPrefix(srv.URL, "http://")+"/slow:v1")
	require.NoError(t, err)
	require.Empty(t, pin.Ref)
	require.Contains(t, pin.Reason, "the engines could not be asked")
	require.Less(t, time.Since(start), 1500*time.Millisecond, "one bound, not one per step")
}

// TestResolveSaysWhenNoEngineFoundAHealthcheck: NoHealthcheck is set only
// when engines hold the image and none found a HEALTHCHECK in it.
func TestResolveSaysWhenNoEngineFoundAHealthcheck(t *testing.T) {
	t.Parallel()
	const idA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	r := &Resolver{Timeout: time.Second,
		Engines: fakeEngines{images: map[string][]Local{
			"bare:1":    {{Host: "h1", ID: idA}, {Host: "h2", ID: idA}},
			"checked:1": {{Host: "h1", ID: idA}},
		}, bare: map[string]bool{"bare:1": true}}}
	for img, want := range map[string]bool{"bare:1": true, "checked:1": false, "127.0.0.1:1/nowhere:1": false} {
		pin, err := r.Resolve(context.Background(), img)
		require.NoError(t, err)
		require.Equal(t, want, pin.NoHealthcheck, img)
	}
}
