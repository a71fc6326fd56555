package nginx

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/internal/testrig"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func TestParseTestOutput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, out string
		want      TestError
	}{
		{
			name: "directive with file and line",
			out:  "2026/11/23 23:57:04 [emerg] 9895#9895: unknown directive \"bogus\" in /tmp/ngx/conf/nginx.conf:12\nnginx: configuration file /tmp/ngx/conf/nginx.conf test failed\n",
			want: TestError{Message: `unknown directive "bogus" in /tmp/ngx/conf/nginx.conf:12`, File: "/tmp/ngx/conf/nginx.conf", Line: 12},
		},
		{
			name: "no file",
			out:  "2026/11/23 23:57:04 [emerg] 1#1: no \"events\" section in configuration\n",
			want: TestError{Message: `no "events" section in configuration`},
		},
		{
			name: "warnings before the error are skipped",
			out:  "2026/11/23 23:57:04 [warn] 1#1: conflicting server name \"a\" on 0.0.0.0:80, ignored\n2026/11/23 23:57:04 [emerg] 1#1: host not found in upstream \"nope:80\" in /x/a.conf:3\n",
			want: TestError{Message: `host not found in upstream "nope:80" in /x/a.conf:3`, File: "/x/a.conf", Line: 3},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := parseTestOutput(tt.out)
			tt.want.Output = tt.out
			require.Equal(t, &tt.want, got)
			require.Equal(t, "nginx -t: "+tt.want.Message, got.Error())
		})
	}
}

// prefix writes a main config serving body on port and the generation gen
// on statusPort, and returns the Binary for it.
func prefix(t *testing.T, dir string, port, statusPort int, body, gen string) Binary {
	t.Helper()
	for _, d := range []string{"conf", "logs", "run", "temp"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	conf := filepath.Join(dir, "conf", "nginx.conf")
	require.NoError(t, os.WriteFile(conf, []byte(testrig.MainConfig(fmt.Sprintf(`
server { listen 127.0.0.1:%d; location / { return 200 %q; } }
server { listen 127.0.0.1:%d; location = /berth/generation { return 200 %q; } }
`, port, body, statusPort, gen))), 0o644))
	return Binary{Path: testrig.NginxBin(t), Prefix: dir, Conf: conf}
}

func TestTestRefusesAndReportsLine(t *testing.T) {
	t.Parallel()
	dir, staging := t.TempDir(), t.TempDir()
	b := prefix(t, dir, testrig.FreePort(t), testrig.FreePort(t), "x", "1")
	prefix(t, staging, testrig.FreePort(t), testrig.FreePort(t), "x", "1")
	ctx := context.Background()
	require.NoError(t, b.Test(ctx, staging, filepath.Join(staging, "conf", "nginx.conf")))
	_, statErr := os.Stat(filepath.Join(dir, "run", "nginx.pid"))
	require.True(t, os.IsNotExist(statErr), "testing a staging copy must not touch the live prefix's pid file")
	_, statErr = os.Stat(filepath.Join(staging, "run", "nginx.pid"))
	require.NoError(t, statErr, "nginx -t writes the pid file of the prefix it tests: this is why Test needs a staging prefix")

	require.NoError(t, os.WriteFile(b.Conf, []byte("events {}\nhttp {\n  bogus on;\n}\n"), 0o644))
	err := b.Test(ctx, b.Prefix, b.Conf)
	var te *TestError
	require.ErrorAs(t, err, &te)
	require.Equal(t, b.Conf, te.File)
	require.Equal(t, 3, te.Line)
	require.Contains(t, te.Message, `unknown directive "bogus"`)

	v, err := b.Version(ctx)
	require.NoError(t, err)
	require.Contains(t, v, "nginx/")
}

func TestSupervisorReloadConfirmAndRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port, statusPort := testrig.FreePort(t), testrig.FreePort(t)
	b := prefix(t, dir, port, statusPort, "one", "1")
	s := NewSupervisor(b, zaptest.NewLogger(t))
	s.StopTimeout = 5 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-s.Started()

	client := &http.Client{Timeout: time.Second}
	status := fmt.Sprintf("http://127.0.0.1:%d/berth/generation", statusPort)
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	require.NoError(t, Confirm(cctx, client, status, "1", 10*time.Millisecond))
	require.Equal(t, "one", testrig.WaitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/", port), 5*time.Second))

	// Reload through the binary (nginx -s reload, as with an external nginx)
	// and through the supervisor (SIGHUP), and confirm each generation.
	prefix(t, dir, port, statusPort, "two", "2")
	require.NoError(t, b.Reload(ctx))
	require.NoError(t, Confirm(cctx, client, status, "2", 10*time.Millisecond))
	prefix(t, dir, port, statusPort, "two-b", "2b")
	require.NoError(t, PidFile(filepath.Join(dir, "run", "nginx.pid")).Reload(ctx))
	require.NoError(t, Confirm(cctx, client, status, "2b", 10*time.Millisecond))
	require.ErrorContains(t, PidFile(filepath.Join(dir, "nope.pid")).Reload(ctx), "read pid file")
	prefix(t, dir, port, statusPort, "three", "3")
	require.NoError(t, s.Reload(ctx))
	require.NoError(t, Confirm(cctx, client, status, "3", 10*time.Millisecond))

	short, scancel := context.WithTimeout(ctx, time.Second)
	defer scancel()
	err := Confirm(short, client, status, "4", 10*time.Millisecond)
	require.ErrorContains(t, err, `confirm generation "4"`)
	require.ErrorContains(t, err, `last: generation "3"`)

	// A crashed nginx is started again.
	pid := s.PID()
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { p := s.PID(); return p != 0 && p != pid }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, Confirm(cctx, client, status, "3", 10*time.Millisecond))

	cancel()
	require.NoError(t, <-done, "a graceful quit is a clean stop")
	require.Zero(t, s.PID())
}
