package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
)

// loopbackRegistry serves go-containerregistry's registry (the real
// protocol) on 127.0.0.1 until the test ends, and returns its host:port.
func loopbackRegistry(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// pushImage pushes a local image of the system engine to ref (docker save,
// then go-containerregistry's remote), leaving the engine's image as it
// was, and returns the registry's digest of it and its image ID (its
// config's digest: what an engine that pulls it runs).
func pushImage(t *testing.T, local, ref string) (digest, id string) {
	t.Helper()
	tar := filepath.Join(t.TempDir(), "image.tar")
	out, err := exec.Command("docker", "save", "-o", tar, local).CombinedOutput()
	require.NoError(t, err, "docker save %s: %s", local, out)
	tag, err := name.NewTag(local)
	require.NoError(t, err)
	img, err := tarball.ImageFromPath(tar, &tag)
	require.NoError(t, err)
	dst, err := name.ParseReference(ref, name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(dst, img))
	d, err := img.Digest()
	require.NoError(t, err)
	cfg, err := img.ConfigName()
	require.NoError(t, err)
	return d.String(), cfg.String()
}

// imageID is the ID of an image of an engine.
func imageID(t *testing.T, e *testrig.Engine, img string) string {
	t.Helper()
	out, err := exec.Command("docker", "-H", e.URL(), "image", "inspect", "--format", "{{.Id}}", img).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return strings.TrimSpace(string(out))
}

// TestRedeployPushedTag is the release test: an in-process
// registry on loopback, three hosts, v1 pushed as :latest and applied
// (through a follower replica: every replica pins), then v2 pushed under
// the same tag and `scheduler redeploy --wait` rolls it out under load
// from a client that never retries: every instance on every host then
// runs v2's digest, with 0 failed requests. A redeploy with nothing
// pushed says unchanged. An image only the engines hold is pinned to its
// ID, and a host that lacks it is reported. It measures one apply with
// the registry's resolution against one with a digest in the spec (none),
// and the local-image fallback.
func TestRedeployPushedTag(t *testing.T) {
	t.Parallel() // mostly waiting, as TestSeveralHosts
	v1, v2, v3 := testrig.DemoImage(t, "v1"), testrig.DemoImage(t, "v2"), testrig.DemoImage(t, "v3")
	reg := loopbackRegistry(t)
	repo := reg + "/berth-e2e/demo"
	latest := repo + ":latest"
	d1, id1 := pushImage(t, v1, latest)

	engines := testrig.StartEngines(t, 3)
	// h1 and h2 hold v3 as a local image (loaded, never pushed nor
	// pulled); h3 does not.
	for _, e := range engines[:2] {
		require.NoError(t, e.Load(v3))
	}
	s := newStackMode(t, "", "dynamic")
	s.startScheduler("sched-a", "--allow-loopback-hosts")
	s.leader(10 * time.Second)
	s.startScheduler("sched-b", "--allow-loopback-hosts")
	s.startHealthd("hc1")
	s.startLBAgent()
	for _, e := range engines {
		s.cli("hosts", "add", e.Name, "--docker-url", e.URL(), "--address", e.Address)
	}
	require.Eventually(t, func() bool { return strings.Count(s.cli("hosts", "ls"), " up ") == 3 }, 30*time.Second, 200*time.Millisecond, "every host up")
	other := map[string]string{"sched-a": "sched-b", "sched-b": "sched-a"}[s.leader(10*time.Second)]
	s.mu.Lock()
	follower := s.apis[other]
	s.mu.Unlock()

	// Apply :latest (v1) through the follower: pinned to v1's digest.
	spec := demoSpec(t, latest, 3, "")
	out := s.cliAt(follower, "apply", spec)
	require.Contains(t, out, "pinned to "+repo+"@"+d1)
	byHost := s.waitHostsServing("demo", 3, "v1")
	require.Len(t, byHost, 3, "one instance on each host: %v", byHost)
	s.requireRunning(engines, "demo", repo+"@"+d1, id1)

	// Nothing pushed: unchanged, no new generation.
	out = s.cli("redeploy", "demo")
	require.Contains(t, out, "demo: unchanged, generation 1")

	// v2 pushed under the same tag; redeploy --wait under no-retry load.
	d2, id2 := pushImage(t, v2, latest)
	require.NotEqual(t, d1, d2)
	gen := loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + s.httpAddr + "/", Host: demoHost, Workers: 4, Rate: 200, NoRetry: true})
	time.Sleep(time.Second) // load before the redeploy
	out = s.cli("redeploy", "demo", "--wait", "--timeout", "3m")
	t.Logf("redeploy --wait:\n%s", out)
	require.Contains(t, out, "image "+latest+" moved from "+repo+"@"+d1+" to "+repo+"@"+d2)
	require.Contains(t, out, "rolled out")
	byHost = s.waitHostsServing("demo", 3, "v2")
	time.Sleep(time.Second) // and after it
	res := gen.Stop()
	t.Logf("load through the redeploy: %s", res)
	require.NoError(t, loadgen.Check(res), "no request failed")
	require.Positive(t, res.OK)
	// The rolling update places by load as it goes: several hosts, each
	// of whose containers runs v2's digest.
	require.GreaterOrEqual(t, len(byHost), 2, "%v", byHost)
	s.requireRunning(engines, "demo", repo+"@"+d2, id2)
	status := s.cli("status", "demo")
	require.Contains(t, status, "pinned: "+repo+"@"+d2)
	history := s.cli("history", "demo")
	require.Regexp(t, `(?m)^2\s+`+regexpQuote(latest)+`\s+`+regexpQuote(repo+"@"+d2)+`\s`, history)
	require.Regexp(t, `(?m)^1\s+`+regexpQuote(latest)+`\s+`+regexpQuote(repo+"@"+d1)+`\s`, history)
	events := s.cli("events", "--app", "demo")
	require.Contains(t, events, "image was "+repo+"@"+d1, "app_updated says old → new")
	require.Contains(t, s.cli("redeploy", "demo"), "demo: unchanged, generation 2")

	// Timings, same run, through the follower's API: resolution by the
	// registry against a digest in the spec (no resolution), and an image
	// only the engines hold (its ID, no registry asked).
	timing := func(img string) time.Duration {
		body := fmt.Sprintf("name: timing\nimage: %s\nport: 8080\nreplicas: 0\n", img)
		best := time.Hour
		for range 5 {
			start := time.Now()
			req, _ := http.NewRequest(http.MethodPut, follower+"/v1/apps/timing", strings.NewReader(body))
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, 200, resp.StatusCode, "%s", raw)
			best = min(best, time.Since(start))
		}
		return best
	}
	viaRegistry, withDigest := timing(latest), timing(repo+"@"+d2)
	localOnly, nowhere := timing(v3), timing("berth-demo:no-such-tag")
	t.Logf("one apply (best of 5, PUT to a follower): tag resolved by the registry %s, digest in the spec %s, local image pinned to its ID %s, image found nowhere (Docker Hub name, no network) %s",
		viaRegistry.Round(10*time.Microsecond), withDigest.Round(10*time.Microsecond), localOnly.Round(10*time.Microsecond), nowhere.Round(10*time.Microsecond))
	require.Less(t, localOnly, time.Second, "a local image asks no registry")
	require.Less(t, nowhere, 2*time.Second, "an image found nowhere fails fast")
	s.cli("rm", "timing")

	// An image only h1 and h2 hold: pinned to its ID; h3, which lacks
	// it, is reported by name with the ID, and runs nothing else.
	local := strings.Replace(strings.Replace(demoSpec(t, v3, 3, ""), "name: demo\n", "name: local\n", 1), "hosts: [demo.localhost]", "hosts: [local.localhost]", 1)
	out = s.cliAt(follower, "apply", local)
	local1 := imageID(t, engines[0], v3)
	require.Equal(t, local1, imageID(t, engines[1], v3))
	require.Contains(t, out, "pinned to its image ID "+local1)
	var missing string
	require.Eventually(t, func() bool {
		missing = s.cli("events", "--app", "local")
		return strings.Contains(missing, "image_pull_failed")
	}, 60*time.Second, 200*time.Millisecond)
	require.Contains(t, missing, "pinned to the image ID "+local1+", which host h3 lacks")
	require.Contains(t, s.cli("status", "local"), "which host h3 lacks", "status shows it")
	for _, in := range s.instances("local") {
		if in.State == msg.StateRunning {
			require.NotEqual(t, "h3", in.Host)
		}
	}
	out2, err := exec.Command("docker", "-H", engines[2].URL(), "ps", "-aq", "--filter", "label=berth.app=local").CombinedOutput()
	require.NoError(t, err, "%s", out2)
	require.Empty(t, strings.TrimSpace(string(out2)), "no container of another image on h3")
}

func regexpQuote(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`\.+*?()|[]{}^$`, r) {
			b.WriteRune('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// cliAt applies spec through the scheduler replica at api and returns what
// it printed (stdout and stderr).
func (s *stack) cliAt(api, command, spec string) string {
	s.t.Helper()
	f := filepath.Join(s.dir, fmt.Sprintf("spec-%d.yaml", time.Now().UnixNano()))
	require.NoError(s.t, os.WriteFile(f, []byte(spec), 0o644))
	out, err := exec.Command(filepath.Join(binDir, "scheduler"), command, "-f", f, "--server", api).CombinedOutput()
	require.NoError(s.t, err, "scheduler %s: %s", command, out)
	s.t.Logf("%s: %s", command, bytes.TrimSpace(out))
	return string(out)
}

// waitHostsServing waits until app has exactly n running and healthy
// instances and nginx serves exactly those, all of version; it returns
// how many run on each host.
func (s *stack) waitHostsServing(app string, n int, version string) map[string]int {
	s.t.Helper()
	var last string
	byHost := map[string]int{}
	require.Eventually(s.t, func() bool {
		ins := s.instances(app)
		want := map[string]bool{}
		clear(byHost)
		for _, in := range ins {
			if in.State != msg.StateRunning || in.Health != msg.StatusHealthy {
				last = fmt.Sprintf("instance %s %s %s", in.ID, in.State, in.Health)
				return false
			}
			want[in.ID] = true
			byHost[in.Host]++
		}
		if len(want) != n {
			last = fmt.Sprintf("%d instances", len(want))
			return false
		}
		got, versions, failures, sample := s.served(demoHost, n)
		last = fmt.Sprintf("nginx served %v (versions %v, %d failures: %s)", keys(got), keys(versions), failures, sample)
		return failures == 0 && equalSets(got, want) && len(versions) == 1 && versions[version]
	}, 3*time.Minute, 200*time.Millisecond, "%s: %d healthy instances of %s: %s", app, n, version, func() string { return last }())
	return byHost
}

// requireRunning checks that every container of app on every engine was
// created from ref and runs the image id: the same bytes on every host.
func (s *stack) requireRunning(engines []*testrig.Engine, app, ref, id string) {
	s.t.Helper()
	total := 0
	for _, e := range engines {
		out, err := exec.Command("docker", "-H", e.URL(), "ps", "-q", "--filter", "label=berth.app="+app).CombinedOutput()
		require.NoError(s.t, err, "%s", out)
		for _, c := range strings.Fields(string(out)) {
			got, err := exec.Command("docker", "-H", e.URL(), "inspect", "--format", "{{.Config.Image}} {{.Image}}", c).CombinedOutput()
			require.NoError(s.t, err, "%s", got)
			require.Equal(s.t, ref+" "+id, strings.TrimSpace(string(got)), "container %s on %s", c, e.Name)
			total++
		}
	}
	require.Positive(s.t, total)
}
