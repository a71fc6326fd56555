package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/stretchr/testify/require"
)

// TestComposeConfig checks compose/docker-compose.yml with docker-compose's
// own validation, and that it holds the production-like topology.
func TestComposeConfig(t *testing.T) {
	_, err := exec.LookPath("docker-compose")
	testrig.Require(t, err == nil, "docker-compose not found", "apt-get install docker-compose")
	cmd := exec.Command("docker-compose", "-f", filepath.Join(repoRoot(), "compose", "docker-compose.yml"), "config")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "docker-compose config: %s", out)
	for _, svc := range []string{"postgres:", "nats:", "scheduler-1:", "scheduler-2:", "healthd-1:", "healthd-2:", "lb:"} {
		require.Contains(t, string(out), "\n  "+svc, "service %s", svc)
	}
	require.Contains(t, string(out), "/var/run/docker.sock:/var/run/docker.sock")
	require.Contains(t, string(out), "--jetstream")
	// NATS auth on: the server's config is made with the credentials, and
	// every daemon connects with its role's.
	require.Contains(t, string(out), "/creds/nats-auth.conf")
	for _, role := range []string{"scheduler", "healthd"} {
		require.Contains(t, string(out), "--nats-nkey=/creds/"+role+".nk", role)
	}
	// The edge node connects with its own key, which the schedulers
	// publish, and holds no other.
	require.Contains(t, string(out), "--nats-nkey=/creds/lb-1.nk")
	require.Contains(t, string(out), "--nats-credentials=/node-creds")
	require.Contains(t, string(out), "lb-keys:/creds:ro")
	require.Contains(t, string(out), "service_completed_successfully")
	// One NATS server by default (compose/.env); the nats-cluster profile
	// has three, with their own volumes and the routes' credential.
	require.Contains(t, string(out), "--nats-url=nats://nats:4222")
	require.Contains(t, string(out), "--nats-replicas=1")
	for _, node := range []string{"nats-1", "nats-2", "nats-3"} {
		require.Contains(t, string(out), "\n  "+node+":", "service %s", node)
		require.Contains(t, string(out), "- "+node+":/data:rw")
	}
	require.Contains(t, string(out), "/etc/nats/routes.conf")

	// The cluster profile, as compose/.env says to switch to it.
	cluster := "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"
	cmd = exec.Command("docker-compose", "-f", filepath.Join(repoRoot(), "compose", "docker-compose.yml"), "config")
	cmd.Env = append(os.Environ(), "COMPOSE_PROFILES=nats-cluster", "BERTH_NATS_URL="+cluster, "BERTH_NATS_REPLICAS=3")
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "docker-compose config, cluster profile: %s", out)
	require.Equal(t, 5, strings.Count(string(out), "--nats-url="+cluster), "two schedulers, two healthd and lb on the cluster")
	require.Equal(t, 4, strings.Count(string(out), "--nats-replicas=3"), "the schedulers and healthd create their buckets with 3 replicas")
	env, err := os.ReadFile(filepath.Join(repoRoot(), "compose", ".env"))
	require.NoError(t, err)
	for _, line := range []string{"COMPOSE_PROFILES=nats-cluster", "BERTH_NATS_URL=" + cluster, "BERTH_NATS_REPLICAS=3"} {
		require.Contains(t, string(env), "# "+line, "compose/.env shows how to switch to the cluster")
	}
}

// TestComposeNATSClusterConfig checks compose/nats-cluster.conf, the
// config of every node of the compose stack's NATS cluster, with the
// nats-server of the module (-t): its includes resolve (the roles that
// the nats-credentials service makes, and secrets/nats-routes.conf as its
// example shows it), and it has JetStream, a cluster and routes.
func TestComposeNATSClusterConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf, err := os.ReadFile(filepath.Join(repoRoot(), "compose", "nats-cluster.conf"))
	require.NoError(t, err)
	for _, want := range []string{"jetstream", "cluster {", "include routes.conf", "include creds/nats-auth.conf"} {
		require.Contains(t, string(conf), want)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cluster.conf"), conf, 0o600))
	routes, err := os.ReadFile(filepath.Join(repoRoot(), "compose", "secrets", "nats-routes.conf.example"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "routes.conf"), routes, 0o600))
	names, err := msg.NewNames("berth")
	require.NoError(t, err)
	seeds, err := bus.EnsureCredentials(filepath.Join(dir, "credentials"))
	require.NoError(t, err)
	auth, err := bus.ServerConfig(names, seeds)
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "creds"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "creds", "nats-auth.conf"), []byte(auth), 0o600))

	bin := testrig.NATSServerBinary(t)
	check := func() ([]byte, error) {
		return exec.Command(bin, "-c", filepath.Join(dir, "cluster.conf"), "--server_name", "nats-1", "-t").CombinedOutput()
	}
	out, err := check()
	require.NoError(t, err, "nats-server -t: %s", out)
	// The check can fail: without the routes' file the config does not load.
	require.NoError(t, os.Remove(filepath.Join(dir, "routes.conf")))
	out, err = check()
	require.Error(t, err, "nats-server -t without routes.conf: %s", out)
}

// TestSchedulerAndHealthdImagesFromScratch builds the daemons' images from
// their Dockerfiles (FROM scratch plus the static binary) and runs each.
func TestSchedulerAndHealthdImagesFromScratch(t *testing.T) {
	testrig.Docker(t)
	ctx := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(ctx, "bin"), 0o755))
	for _, c := range []struct{ name, check string }{
		{"scheduler", "check-config --database-url postgres://berth@postgres/berth"},
		{"healthd", "--check-config"},
	} {
		b, err := os.ReadFile(filepath.Join(binDir, c.name))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(ctx, "bin", c.name), b, 0o755))
		tag := "berth-e2e/" + c.name + ":" + strconv.FormatInt(time.Now().UnixNano(), 36)
		build := exec.Command("docker", "build", "-q", "-f", filepath.Join(repoRoot(), "compose", c.name+".Dockerfile"), "-t", tag, ctx)
		build.Env = append(os.Environ(), "DOCKER_BUILDKIT=0") // no builder image to pull: the engine's own builder
		out, err := build.CombinedOutput()
		require.NoError(t, err, "build %s: %s", c.name, out)
		t.Cleanup(func() { _ = exec.Command("docker", "rmi", "-f", tag).Run() })
		out, err = exec.Command("docker", append([]string{"run", "--rm", "--network", "none", tag}, strings.Fields(c.check)...)...).CombinedOutput()
		require.NoError(t, err, "%s %s in its image: %s", c.name, c.check, out)
		out, err = exec.Command("docker", "image", "inspect", "--format", "{{.Size}} {{len .RootFS.Layers}}", tag).Output()
		require.NoError(t, err)
		f := strings.Fields(string(out))
		size, _ := strconv.Atoi(f[0])
		require.Equal(t, "1", f[1], "one layer: the binary")
		require.Less(t, size, 64<<20, "nothing but the binary")
		t.Logf("%s image: %.1f MiB, %s layer", c.name, float64(size)/(1<<20), f[1])
	}
}
