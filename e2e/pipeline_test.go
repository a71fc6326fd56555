package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/internal/testrig"
)

// docBlock returns the fenced code block that follows the HTML comment
// marker in docs/scheduler.md: what the docs show, to be run as written.
func docBlock(t *testing.T, marker string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(), "docs", "scheduler.md"))
	require.NoError(t, err)
	doc := string(b)
	at := strings.Index(doc, "<!-- "+marker+":")
	require.GreaterOrEqual(t, at, 0, "docs/scheduler.md has no block marked %q", marker)
	rest := doc[at:]
	open := strings.Index(rest, "```")
	require.GreaterOrEqual(t, open, 0)
	rest = rest[open:]
	rest = rest[strings.Index(rest, "\n")+1:]
	end := strings.Index(rest, "\n```")
	require.GreaterOrEqual(t, end, 0, "the block marked %q is not closed", marker)
	return rest[:end+1]
}

// TestDeployingFromCI runs docs/scheduler.md's "Deploying from CI" as
// written: its deploy.sh builds a commit's image with docker build, pushes
// it to a registry on loopback (go-containerregistry's, the real protocol),
// and deploys its deploy/shop.yaml with a deploy token of that app alone,
// under load from a client that never retries. A good commit exits 0 and
// serves; a commit whose version exits at start exits 1, naming why, while
// the good one keeps serving; a good commit after it serves again. Not one
// request fails.
func TestDeployingFromCI(t *testing.T) {
	t.Parallel() // mostly waiting, as TestSeveralHosts
	script, shop := docBlock(t, "deploy.sh"), docBlock(t, "deploy/shop.yaml")
	reg := loopbackRegistry(t)

	s := newStack(t)
	s.startScheduler("sched-a")
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	s.startLBAgent()

	// The CI system's secret: a deploy token of shop alone.
	var token string
	created := s.cli("tokens", "create", "--name", "ci-shop", "--scope", "deploy", "--app", "shop")
	for _, l := range strings.Split(created, "\n") {
		if strings.HasPrefix(l, "berth_") {
			token = l
		}
	}
	require.NotEmpty(t, token, "the token: %s", created)
	tokenFile := filepath.Join(t.TempDir(), "ci-shop.token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(token+"\n"), 0o600))

	// The app's repository: its binary (the demo app), a Dockerfile, its
	// spec and the pipeline's script.
	repo := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(repo, "demoapp"), ".")
	build.Dir = filepath.Join(repoRoot(), "internal", "testrig", "demoapp")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NoError(t, os.MkdirAll(filepath.Join(repo, "deploy"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(repo, "deploy", "shop.yaml"), []byte(shop), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(repo, "deploy.sh"), []byte(script), 0o755))

	var images []string
	t.Cleanup(func() {
		for _, img := range images {
			_ = exec.Command("docker", "rmi", "--force", img).Run()
		}
	})
	// deploy runs the pipeline for a commit whose version is version; with
	// exitCode the version exits with it at start.
	deploy := func(commit, version, exitCode string) (string, int) {
		t.Helper()
		dockerfile := fmt.Sprintf("FROM scratch\nCOPY demoapp /demoapp\nENV DEMO_VERSION=%s\nEXPOSE %d\nENTRYPOINT [\"/demoapp\"]\n", version, testrig.DemoPort)
		if exitCode != "" {
			dockerfile += "ENV DEMO_EXIT=" + exitCode + "\n"
		}
		require.NoError(t, os.WriteFile(filepath.Join(repo, "Dockerfile"), []byte(dockerfile), 0o644))
		images = append(images, reg+"/shop:"+commit[:12])
		cmd := exec.Command("bash", "./deploy.sh")
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "REGISTRY="+reg, "APP=shop", "BERTH_SERVER="+s.api(), "BERTH_TOKEN_FILE="+tokenFile,
			"CI_COMMIT_SHA="+commit, "PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
		started := time.Now()
		out, err := cmd.CombinedOutput()
		code := 0
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			code = ee.ExitCode()
		} else {
			require.NoError(t, err)
		}
		t.Logf("deploy.sh of %s (%s) exited %d after %s:\n%s", commit[:12], version, code, time.Since(started).Round(100*time.Millisecond), out)
		return string(out), code
	}

	const host = "shop.example.com"
	outs, code := deploy("1a2b3c4d5e6f7a8b9c0d", "v1", "")
	require.Equal(t, 0, code, outs)
	require.Contains(t, outs, "a new app", "the plan")
	require.Contains(t, outs, "deployed "+reg+"/shop:1a2b3c4d5e6f")
	s.waitServing("shop", host, 3, "v1", time.Minute)

	load := s.load(host)
	outs, code = deploy("badbadbadbadbadbad00", "v2", "3")
	require.Equal(t, 1, code, outs)
	require.Contains(t, outs, "rolled back")
	require.Contains(t, outs, "DEMO_EXIT=3: exiting with code 3", "the failure's last line")
	s.waitServing("shop", host, 3, "v1", time.Minute)

	outs, code = deploy("2b3c4d5e6f7a8b9c0d1e", "v2", "")
	require.Equal(t, 0, code, outs)
	require.Contains(t, outs, "replace 3 instance(s) by a rolling update", "the plan")
	s.waitServing("shop", host, 3, "v2", time.Minute)
	res := load.Stop()
	t.Logf("load through the two deploys: %d requests, %d non-2xx, %d errors, %d retried", res.Requests, res.Non2xx, res.Errors, res.Retried)
	require.Positive(t, res.Requests)
	require.Zero(t, res.Non2xx+res.Errors, "a client that never retries")

	hist := s.cli("history", "shop")
	t.Logf("scheduler history shop:\n%s", hist)
	for _, tag := range []string{"shop:1a2b3c4d5e6f", "shop:badbadbadbad", "shop:2b3c4d5e6f7a"} {
		require.Contains(t, hist, tag)
	}
}
