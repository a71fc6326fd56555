package nginx

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/internal/testrig"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func TestIsMasterOf(t *testing.T) {
	t.Parallel()
	const p, c = "/var/lib/berth/nginx", "/var/lib/berth/nginx/nginx.conf"
	tests := []struct {
		name, cmdline string
		want          bool
	}{
		{"our master", "nginx: master process /usr/sbin/nginx -e stderr -p " + p + " -c " + c + " -g daemon off;\x00", true},
		{"our master, other binary and order", "nginx: master process nginx -c " + c + " -p " + p, true},
		{"a worker", "nginx: worker process\x00", false},
		{"raw argv before the title is set", "/usr/sbin/nginx\x00-p\x00" + p + "\x00-c\x00" + c + "\x00", false},
		{"another prefix", "nginx: master process nginx -p /srv/nginx -c " + c, false},
		{"a longer prefix", "nginx: master process nginx -p " + p + "2 -c " + c, false},
		{"another config", "nginx: master process nginx -p " + p + " -c /etc/nginx/nginx.conf", false},
		{"another program", "sleep\x0060\x00", false},
		{"a zombie", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, isMasterOf(tt.cmdline, p, c))
		})
	}
}

// runSupervisor runs s until the returned cancel, and waits for its first
// start or adoption.
func runSupervisor(t *testing.T, s *Supervisor) (cancel func(), done <-chan error) {
	t.Helper()
	s.StopTimeout = 5 * time.Second
	ctx, cancelFn := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	t.Cleanup(cancelFn)
	select {
	case <-s.Started():
	case err := <-errc:
		t.Fatalf("supervisor stopped before nginx started: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("nginx not started within 10s")
	}
	return cancelFn, errc
}

// quitLeftNginx stops, when the test ends, an nginx of b that a test left
// running on purpose or by failing.
func quitLeftNginx(t *testing.T, b Binary) {
	t.Cleanup(func() {
		pid, err := b.Master(filepath.Join(b.Prefix, "run", "nginx.pid"))
		if err != nil {
			return
		}
		_ = syscall.Kill(pid, syscall.SIGQUIT)
		for deadline := time.Now().Add(10 * time.Second); running(pid) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond) // the poll interval
		}
		if running(pid) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	})
}

func serves(port int) (string, error) {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

func TestSupervisorAdoptsRunningMaster(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port, statusPort := testrig.FreePort(t), testrig.FreePort(t)
	b := prefix(t, dir, port, statusPort, "one", "1")
	quitLeftNginx(t, b)

	// A previous lbagent started nginx and went away without stopping it.
	prev := NewSupervisor(b, zaptest.NewLogger(t))
	prev.LeaveRunning = true
	cancelPrev, donePrev := runSupervisor(t, prev)
	pid := prev.PID()
	require.NotZero(t, pid)
	got, err := b.Master(prev.PidFile)
	require.NoError(t, err, "once started, the master is past its start-up: a reload sent now is not lost")
	require.Equal(t, pid, got)
	cancelPrev()
	require.NoError(t, <-donePrev)
	require.True(t, running(pid), "LeaveRunning leaves nginx running")

	s := NewSupervisor(b, zaptest.NewLogger(t))
	s.PollInterval = 20 * time.Millisecond
	cancel, done := runSupervisor(t, s)
	require.Equal(t, pid, s.PID(), "the running master is adopted")
	require.Equal(t, []int{pid}, testrig.NginxMasters(t, dir), "no second master is started")

	// Reloads reach the adopted master.
	client := &http.Client{Timeout: time.Second}
	status := fmt.Sprintf("http://127.0.0.1:%d/berth/generation", statusPort)
	ctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	prefix(t, dir, port, statusPort, "two", "2")
	require.NoError(t, s.Reload(ctx))
	require.NoError(t, Confirm(ctx, client, status, "2", 10*time.Millisecond))
	require.Equal(t, pid, s.PID())

	// An adopted master that dies is noticed by polling and nginx started again.
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { p := s.PID(); return p != 0 && p != pid }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, Confirm(ctx, client, status, "2", 10*time.Millisecond))
	require.Equal(t, []int{s.PID()}, testrig.NginxMasters(t, dir))

	restarted := s.PID()
	cancel()
	require.NoError(t, <-done)
	require.False(t, running(restarted), "a clean stop quits nginx")
	require.Empty(t, testrig.NginxMasters(t, dir))
}

func TestSupervisorIgnoresStalePidFile(t *testing.T) {
	t.Parallel()
	// A pid that was alive a moment ago and is not any more.
	gone := exec.Command("true")
	require.NoError(t, gone.Run())
	// A live program that is not nginx, and an nginx of another prefix.
	sleeper := exec.Command("sleep", "300")
	require.NoError(t, sleeper.Start())
	t.Cleanup(func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() })
	other := testrig.NewNginx(t)
	other.WriteConfig(testrig.MainConfig(fmt.Sprintf("server { listen 127.0.0.1:%d; return 200 other; }", testrig.FreePort(t))))
	other.Start()

	tests := []struct {
		name    string
		pidFile string // contents; empty means no pid file
		alive   int    // a process that must survive the supervisor
	}{
		{name: "no pid file"},
		{name: "not a pid", pidFile: "garbage\n"},
		{name: "dead pid", pidFile: fmt.Sprintf("%d\n", gone.Process.Pid)},
		{name: "pid of another program", pidFile: fmt.Sprintf("%d\n", sleeper.Process.Pid), alive: sleeper.Process.Pid},
		{name: "pid of another nginx", pidFile: fmt.Sprintf("%d\n", other.PID()), alive: other.PID()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			port, statusPort := testrig.FreePort(t), testrig.FreePort(t)
			b := prefix(t, dir, port, statusPort, "fresh", "1")
			quitLeftNginx(t, b)
			s := NewSupervisor(b, zaptest.NewLogger(t))
			if tt.pidFile != "" {
				require.NoError(t, os.WriteFile(s.PidFile, []byte(tt.pidFile), 0o644))
				_, err := s.Master()
				require.ErrorIs(t, err, ErrNoMaster)
			}
			cancel, done := runSupervisor(t, s)
			pid := s.PID()
			require.NotZero(t, pid)
			require.NotEqual(t, tt.alive, pid, "a pid that is not our nginx is never adopted")
			require.Eventually(t, func() bool { body, err := serves(port); return err == nil && body == "fresh" },
				10*time.Second, 10*time.Millisecond, "nginx is started fresh")
			require.Equal(t, []int{pid}, testrig.NginxMasters(t, dir))
			if tt.alive != 0 {
				require.True(t, running(tt.alive), "the process the stale pid file named is not signalled")
			}
			cancel()
			require.NoError(t, <-done)
			if tt.alive != 0 {
				require.True(t, running(tt.alive), "the process the stale pid file named is not signalled")
			}
		})
	}
}

func TestSupervisorStop(t *testing.T) {
	t.Parallel()
	for _, leave := range []bool{false, true} {
		t.Run(fmt.Sprintf("leave running %v", leave), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			port, statusPort := testrig.FreePort(t), testrig.FreePort(t)
			b := prefix(t, dir, port, statusPort, "up", "1")
			quitLeftNginx(t, b)
			s := NewSupervisor(b, zaptest.NewLogger(t))
			s.LeaveRunning = leave
			cancel, done := runSupervisor(t, s)
			pid := s.PID()
			require.Eventually(t, func() bool { body, err := serves(port); return err == nil && body == "up" },
				10*time.Second, 10*time.Millisecond)
			cancel()
			require.NoError(t, <-done)
			require.Zero(t, s.PID())
			if leave {
				require.True(t, running(pid), "nginx is left running")
				body, err := serves(port)
				require.NoError(t, err)
				require.Equal(t, "up", body, "and serving")
				got, err := b.Master(s.PidFile)
				require.NoError(t, err, "for the next supervisor to adopt")
				require.Equal(t, pid, got)
				return
			}
			require.Eventually(t, func() bool { return !running(pid) }, 5*time.Second, 10*time.Millisecond, "a clean stop quits nginx")
			_, err := serves(port)
			require.Error(t, err, "nothing listens any more")
			require.Empty(t, testrig.NginxMasters(t, dir))
		})
	}
}
