package testrig

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// DemoPort is the container port the demo app listens on.
const DemoPort = 8080

// TestLabel marks every container the rig starts, so leftovers of a killed
// test run can be found: docker ps -a --filter label=berth.test.
const TestLabel = "berth.test"

var (
	dockerOnce sync.Once
	dockerErr  error
	imagesMu   sync.Mutex
	images     = map[string]*imageBuild{}
)

type imageBuild struct {
	once sync.Once
	tag  string
	err  error
}

// Docker stops the test (skip, or fail in CI) unless the docker CLI is
// installed and the engine answers.
func Docker(t testing.TB) {
	t.Helper()
	dockerOnce.Do(func() {
		if _, err := exec.LookPath("docker"); err != nil {
			dockerErr = err
			return
		}
		_, dockerErr = run(30*time.Second, nil, "docker", "version", "--format", "{{.Server.Version}}")
	})
	Require(t, dockerErr == nil, fmt.Sprintf("Docker engine not reachable (%v)", dockerErr),
		"install docker.io and start dockerd")
}

// DemoImage returns the tag of the demo app image for version ("v1", "v2",
// …), building it on first use: the demo app compiled statically
// (CGO_ENABLED=0) into an image with nothing else in it, like FROM scratch.
// A build is skipped when an image with the same source hash exists.
func DemoImage(t testing.TB, version string) string {
	t.Helper()
	Docker(t)
	imagesMu.Lock()
	b, ok := images[version]
	if !ok {
		b = &imageBuild{}
		images[version] = b
	}
	imagesMu.Unlock()
	b.once.Do(func() { b.tag, b.err = BuildDemoImage(version) })
	if b.err != nil {
		t.Fatalf("build demo image %s: %v", version, b.err)
	}
	return b.tag
}

func demoSourceDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "demoapp")
}

// BuildDemoImage builds the demo image berth-demo:<version> unless an image
// with the same source hash exists, and returns its tag. DemoImage is the
// test-side entry; the quick start (make demo) calls it through
// internal/testrig/demoimage.
func BuildDemoImage(version string) (string, error) {
	tag := "berth-demo:" + version
	src := demoSourceDir()
	hash, err := sourceHash(src, version)
	if err != nil {
		return "", err
	}
	if out, err := run(30*time.Second, nil, "docker", "image", "inspect", "--format", `{{index .Config.Labels "berth.demo.hash"}}`, tag); err == nil && strings.TrimSpace(out) == hash {
		return tag, nil
	}
	dir, err := os.MkdirTemp("", "berth-demo-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "demoapp")
	if _, err := run(5*time.Minute, func(c *exec.Cmd) {
		c.Dir = src
		c.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	}, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version, "-o", bin, "."); err != nil {
		return "", err
	}
	var archive bytes.Buffer
	if err := tarFile(&archive, bin, "demoapp"); err != nil {
		return "", err
	}
	if _, err := run(2*time.Minute, func(c *exec.Cmd) { c.Stdin = &archive }, "docker", "import",
		"--change", `ENTRYPOINT ["/demoapp"]`,
		"--change", fmt.Sprintf("EXPOSE %d", DemoPort),
		"--change", "ENV DEMO_VERSION="+version,
		"--change", "LABEL berth.demo.hash="+hash,
		"-", tag); err != nil {
		return "", err
	}
	return tag, nil
}

// sourceHash identifies a demo build: its Go files, the version and the Go
// toolchain.
func sourceHash(dir, version string) (string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return "", err
	}
	sort.Strings(files)
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n", version, runtime.Version())
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(f), len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func tarFile(w io.Writer, path, name string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	if _, err := tw.Write(data); err != nil {
		return err
	}
	return tw.Close()
}

// ContainerOptions are what RunContainer passes to docker run.
type ContainerOptions struct {
	// Env is the container environment.
	Env map[string]string
	// Port is the container port to publish on 127.0.0.1 with a
	// Docker-chosen host port; zero means DemoPort.
	Port int
}

// Container is a running test container, removed when the test ends.
type Container struct {
	// ID is the container id.
	ID string
	// Addr is the published address on the host, "127.0.0.1:PORT".
	Addr string
}

// RunContainer starts image detached, labelled TestLabel, with its port
// published on 127.0.0.1 only, and removes it (docker rm -f) at cleanup.
func RunContainer(t testing.TB, image string, opts ContainerOptions) *Container {
	t.Helper()
	Docker(t)
	port := opts.Port
	if port == 0 {
		port = DemoPort
	}
	args := []string{"run", "-d", "--label", TestLabel + "=" + t.Name(), "-p", fmt.Sprintf("127.0.0.1::%d", port)}
	keys := make([]string, 0, len(opts.Env))
	for k := range opts.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-e", k+"="+opts.Env[k])
	}
	out, err := run(time.Minute, nil, "docker", append(args, image)...)
	if err != nil {
		t.Fatalf("run container %s: %v", image, err)
	}
	c := &Container{ID: strings.TrimSpace(out)}
	t.Cleanup(func() {
		if _, err := run(time.Minute, nil, "docker", "rm", "-f", "-v", c.ID); err != nil {
			t.Errorf("remove container %s: %v", c.ID, err)
		}
	})
	out, err = run(30*time.Second, nil, "docker", "port", c.ID, fmt.Sprintf("%d/tcp", port))
	if err != nil {
		t.Fatalf("published port of %s: %v", c.ID, err)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, "127.0.0.1:") {
			c.Addr = line
		}
	}
	if c.Addr == "" {
		t.Fatalf("container %s published no 127.0.0.1 port: %q", c.ID, out)
	}
	return c
}

// WaitHTTP polls url until it answers 200 and returns the body, failing the
// test after timeout with the last error seen.
func WaitHTTP(t testing.TB, url string, timeout time.Duration) string {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	last := "no attempt"
	for time.Now().Before(deadline) {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return string(body)
			}
			last = fmt.Sprintf("status %d: %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("GET %s did not answer 200 within %s: %s", url, timeout, last)
	return ""
}

// BerthContainers lists the ids of the containers, running or not, that
// the scheduler of environment prefix labelled, narrowed by more labels
// ("berth.app=web").
func BerthContainers(t testing.TB, prefix string, labels ...string) []string {
	t.Helper()
	args := []string{"ps", "-aq", "--filter", "label=berth.prefix=" + prefix}
	for _, l := range labels {
		args = append(args, "--filter", "label="+l)
	}
	out, err := run(30*time.Second, nil, "docker", args...)
	if err != nil {
		t.Logf("docker ps: %v", err)
		return nil
	}
	return strings.Fields(out)
}

// RemoveBerthContainers removes, when the test ends, every container the
// scheduler of environment prefix leaves behind.
func RemoveBerthContainers(t testing.TB, prefix string) {
	t.Cleanup(func() {
		for _, id := range BerthContainers(t, prefix) {
			_, _ = run(time.Minute, nil, "docker", "rm", "-f", id)
		}
	})
}

// DemoHealthcheckURL is what the demo images' HEALTHCHECK (and tests' exec
// checks) ask, from inside the container.
const DemoHealthcheckURL = "http://127.0.0.1:8080/healthz"

var (
	hcImagesMu sync.Mutex
	hcImages   = map[string]*imageBuild{}
)

// DemoHealthcheckImage returns the tag of the demo image of version with a
// HEALTHCHECK of its own ("demoapp check" of its /healthz, every second,
// unhealthy after one failure), berth-demo:<version>-hc, building it on
// first use FROM DemoImage(version) (docker build, no network).
func DemoHealthcheckImage(t testing.TB, version string) string {
	t.Helper()
	base := DemoImage(t, version)
	hcImagesMu.Lock()
	b, ok := hcImages[version]
	if !ok {
		b = &imageBuild{}
		hcImages[version] = b
	}
	hcImagesMu.Unlock()
	b.once.Do(func() {
		tag := base + "-hc"
		dockerfile := fmt.Sprintf("FROM %s\nHEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD [\"/demoapp\", \"check\", %q]\n", base, DemoHealthcheckURL)
		_, b.err = run(2*time.Minute, func(c *exec.Cmd) { c.Stdin = strings.NewReader(dockerfile) }, "docker", "build", "-q", "-t", tag, "-")
		b.tag = tag
	})
	if b.err != nil {
		t.Fatalf("build demo healthcheck image %s: %v", version, b.err)
	}
	return b.tag
}
