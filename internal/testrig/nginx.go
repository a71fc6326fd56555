package testrig

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// NginxBin returns the nginx executable, or stops the test (skip, or fail
// in CI) when nginx is not installed.
func NginxBin(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("nginx")
	if err != nil {
		if _, statErr := os.Stat("/usr/sbin/nginx"); statErr == nil {
			path, err = "/usr/sbin/nginx", nil
		}
	}
	Require(t, err == nil, "nginx not found", "apt-get install nginx")
	return path
}

// Nginx is a private nginx for one test: its own prefix directory, pid and
// logs inside it, and listeners the test chooses on 127.0.0.1. It is never
// the system service.
type Nginx struct {
	t testing.TB
	// Bin is the nginx executable.
	Bin string
	// Prefix is the -p directory; logs/, run/ and temp/ are inside it.
	Prefix string
	// Conf is the main config file, Prefix/conf/nginx.conf.
	Conf string
	cmd  *exec.Cmd
	done chan struct{}
}

// NewNginx prepares a prefix directory for a private nginx; nothing runs
// until Start.
func NewNginx(t testing.TB) *Nginx {
	t.Helper()
	n := &Nginx{t: t, Bin: NginxBin(t), Prefix: t.TempDir()}
	for _, d := range []string{"conf", "logs", "run", "temp"} {
		if err := os.MkdirAll(filepath.Join(n.Prefix, d), 0o755); err != nil {
			t.Fatalf("nginx prefix: %v", err)
		}
	}
	n.Conf = filepath.Join(n.Prefix, "conf", "nginx.conf")
	t.Cleanup(n.Stop)
	return n
}

// MainConfigWorkers is the worker_processes of MainConfig.
const MainConfigWorkers = 1

// MainConfig wraps http-context directives in a complete main config whose
// pid, error log and temp paths stay inside the prefix.
func MainConfig(httpBody string) string {
	return `pid run/nginx.pid;
error_log logs/error.log info;
worker_processes ` + strconv.Itoa(MainConfigWorkers) + `;
events { worker_connections 256; }
http {
    client_body_temp_path temp/client_body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    access_log off;
` + httpBody + `
}
`
}

// WriteConfig replaces the main config file.
func (n *Nginx) WriteConfig(conf string) {
	n.t.Helper()
	if err := os.WriteFile(n.Conf, []byte(conf), 0o644); err != nil {
		n.t.Fatalf("write nginx config: %v", err)
	}
}

// Test runs nginx -t on the main config and returns nginx's output as the
// error when the config is refused.
func (n *Nginx) Test() error {
	_, err := run(30*time.Second, nil, n.Bin, "-t", "-q", "-e", "stderr", "-p", n.Prefix, "-c", n.Conf)
	return err
}

// Start runs nginx in the foreground as a child of the test and waits until
// its pid file appears. The config must already be written.
func (n *Nginx) Start() {
	n.t.Helper()
	if err := n.Test(); err != nil {
		n.t.Fatalf("nginx config refused before start: %v", err)
	}
	cmd := exec.Command(n.Bin, "-e", "stderr", "-p", n.Prefix, "-c", n.Conf, "-g", "daemon off;")
	logf, err := os.Create(filepath.Join(n.Prefix, "logs", "stderr.log"))
	if err != nil {
		n.t.Fatalf("nginx log: %v", err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	// Quit if the test binary dies without running its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("start nginx: %v", err)
	}
	n.cmd, n.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(n.done) }()
	pidFile := filepath.Join(n.Prefix, "run", "nginx.pid")
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-n.done:
			n.t.Fatalf("nginx exited during start: %s", n.Log())
		default:
		}
		// nginx creates the pid file before it writes the pid into it:
		// "nginx -s reload" reads it, so start ends once it holds ours.
		if b, err := os.ReadFile(pidFile); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(cmd.Process.Pid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	n.t.Fatalf("nginx wrote no pid file within 10s: %s", n.Log())
}

// PID returns the master's process id, or 0 when it is not running.
func (n *Nginx) PID() int {
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// AcceptingWorkers counts the master's worker processes that still accept
// connections: those of the config in force and, for a moment after a
// reload, those of the config before it, which accept until they handle
// the master's SIGQUIT (nginx retitles them "worker process is shutting
// down" as it closes their listeners). lbagent confirms a reload by a
// request that a new worker answers, so a test that must see only the new
// config on every new connection waits until this is the configured
// worker count.
func (n *Nginx) AcceptingWorkers() int {
	master := n.PID()
	if master == 0 {
		return 0
	}
	count := 0
	for _, p := range processes() {
		if p.parent == master && p.title == "nginx: worker process" {
			count++
		}
	}
	return count
}

// process is a live process found in /proc: its title (argv, as nginx
// rewrites it) and its parent.
type process struct {
	pid, parent int
	title       string
}

// processes lists the live processes: zombies left out.
func processes() []process {
	entries, _ := os.ReadDir("/proc")
	var out []process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		i := strings.LastIndexByte(string(stat), ')')
		if err != nil || i < 0 {
			continue
		}
		// "pid (comm) S ppid …": the state and parent follow the last ')'.
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 || f[0] == "Z" {
			continue
		}
		parent, _ := strconv.Atoi(f[1])
		title := strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))
		out = append(out, process{pid: pid, parent: parent, title: title})
	}
	return out
}

// Reload signals the master to re-read its config (nginx -s reload).
func (n *Nginx) Reload() {
	n.t.Helper()
	if _, err := run(30*time.Second, nil, n.Bin, "-e", "stderr", "-p", n.Prefix, "-c", n.Conf, "-s", "reload"); err != nil {
		n.t.Fatalf("reload nginx: %v", err)
	}
}

// Stop quits nginx gracefully (SIGQUIT), killing it after 10s. It is
// registered as a cleanup and safe to call more than once.
func (n *Nginx) Stop() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.done
	}
	n.cmd = nil
}

// Log returns nginx's stderr and error log, for failure messages.
func (n *Nginx) Log() string {
	var b strings.Builder
	for _, f := range []string{"stderr.log", "error.log"} {
		data, _ := os.ReadFile(filepath.Join(n.Prefix, "logs", f))
		fmt.Fprintf(&b, "--- %s ---\n%s", f, tail(string(data), 4000))
	}
	return b.String()
}

// NginxMasters returns the pids of the live nginx masters on the machine
// started with -p prefix, found in /proc. A worker just forked still shows
// its master's title until it sets its own, so a process whose parent
// matches too is not counted; zombies are not live.
func NginxMasters(t testing.TB, prefix string) []int {
	t.Helper()
	parents := map[int]int{}
	for _, p := range processes() {
		if title := p.title + " "; strings.HasPrefix(title, "nginx: master process ") && strings.Contains(title, " -p "+prefix+" ") {
			parents[p.pid] = p.parent
		}
	}
	pids := []int{}
	for pid, parent := range parents {
		if _, forked := parents[parent]; !forked {
			pids = append(pids, pid)
		}
	}
	return pids
}
