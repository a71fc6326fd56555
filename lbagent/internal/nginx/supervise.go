package nginx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Supervisor runs nginx for lbagent (the sidecar image, --manage-nginx) and
// starts it again, with backoff, when it dies.
//
// nginx outlives lbagent. It runs in a session of its own (so its own
// process group, with no controlling terminal): a signal to lbagent's
// process group or a terminal's Ctrl-C or hangup does not reach it, and
// nothing ties its life to lbagent's, so an lbagent that is SIGKILLed,
// panics or runs out of memory leaves it serving its last good config. A
// new Supervisor adopts the master its pid file names when that is nginx
// running this config (Binary.Master) instead of starting a second one.
//
// Run owns the master; Reload, PID and Master may be called from other
// goroutines at any time.
type Supervisor struct {
	bin    Binary
	logger *zap.Logger
	// StopTimeout bounds the graceful quit (SIGQUIT) when Run's context ends.
	StopTimeout time.Duration
	// BackoffMax caps the delay between restarts of a crashing nginx.
	BackoffMax time.Duration
	// ReadyTimeout bounds the wait for a started master to be ready for
	// signals (its start-up parses the whole config).
	ReadyTimeout time.Duration
	// PidFile is where the master writes its pid, the config's pid
	// directive: the templates' run/nginx.pid in the prefix by default.
	PidFile string
	// LeaveRunning leaves nginx serving when Run's context ends, for the
	// next lbagent to adopt, instead of asking it to quit.
	LeaveRunning bool
	// PollInterval is how often an adopted master, which is not lbagent's
	// child and cannot be waited for, is checked for life.
	PollInterval time.Duration

	mu      sync.Mutex
	proc    *os.Process
	started chan struct{}
}

// NewSupervisor returns a supervisor of bin's nginx.
func NewSupervisor(bin Binary, logger *zap.Logger) *Supervisor {
	return &Supervisor{
		bin: bin, logger: logger.Named("nginx"),
		StopTimeout: 30 * time.Second, BackoffMax: 10 * time.Second, ReadyTimeout: 30 * time.Second,
		PidFile:      filepath.Join(bin.Prefix, "run", "nginx.pid"),
		PollInterval: 100 * time.Millisecond,
		started:      make(chan struct{}),
	}
}

// Started is closed once nginx has been started or adopted for the first time.
func (s *Supervisor) Started() <-chan struct{} { return s.started }

// PID returns the master's process id, or 0 when nginx is not running.
func (s *Supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.Pid
}

// Master returns the pid of a running master of this config that Run
// would adopt rather than start nginx, or an ErrNoMaster saying why there
// is none (see Binary.Master).
func (s *Supervisor) Master() (int, error) { return s.bin.Master(s.PidFile) }

// Reload sends SIGHUP to the master, which re-reads its config and, if it is
// valid, replaces its workers gracefully.
func (s *Supervisor) Reload(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return errors.New("nginx reload: nginx is not running")
	}
	// On Linux the handle is a pidfd: the signal cannot reach another
	// process that reused the pid of a master that just died.
	if err := s.proc.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("nginx reload: signal master %d: %w", s.proc.Pid, err)
	}
	return nil
}

// master is one nginx master under supervision, started or adopted.
type master struct {
	proc    *os.Process
	adopted bool
	// group: the master leads its own process group, whose orphaned workers
	// may be signalled as a group once it is dead.
	group bool
	// exited receives once, when the master is gone.
	exited chan error
	// unwatch stops the polling of an adopted master that is left running.
	unwatch chan struct{}
}

// Run adopts the running master of this config or starts nginx, and keeps
// it running until ctx ends; then, unless LeaveRunning, it asks nginx to
// quit gracefully (SIGQUIT: finish in-flight requests) and waits up to
// StopTimeout before killing it. The config must be valid before Run.
func (s *Supervisor) Run(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	var once sync.Once
	for {
		startedAt := time.Now()
		m, err := s.acquire()
		if err != nil {
			return err
		}
		s.setProc(m.proc)
		once.Do(func() { close(s.started) })
		select {
		case err := <-m.exited:
			s.setProc(nil)
			s.logger.Error("nginx exited", zap.Int("pid", m.proc.Pid), zap.Bool("adopted", m.adopted), zap.Error(err),
				zap.String("output", s.output()))
			// A master that died leaves its workers serving with the listen
			// sockets open: a new master could not bind. Ask them to finish
			// in-flight requests and go.
			if m.group {
				s.reapGroup(m.proc.Pid)
			}
			_ = m.proc.Release()
			if time.Since(startedAt) > time.Minute {
				backoff = 100 * time.Millisecond
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, s.BackoffMax)
		case <-ctx.Done():
			if s.LeaveRunning {
				s.logger.Info("leaving nginx running", zap.Int("pid", m.proc.Pid))
				close(m.unwatch)
				s.setProc(nil)
				if m.adopted {
					// A child keeps its handle: its Wait still reaps it.
					_ = m.proc.Release()
				}
				return nil
			}
			err := s.quit(m)
			s.setProc(nil)
			_ = m.proc.Release()
			return err
		}
	}
}

func (s *Supervisor) setProc(p *os.Process) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proc = p
}

// acquire adopts the master the pid file names when it is ours and alive,
// else starts nginx.
func (s *Supervisor) acquire() (*master, error) {
	pid, err := s.Master()
	if err == nil {
		m, err := s.adopt(pid)
		if err == nil {
			s.logger.Info("nginx adopted", zap.Int("pid", pid), zap.String("pid_file", s.PidFile))
			return m, nil
		}
		s.logger.Warn("could not adopt nginx, starting it", zap.Int("pid", pid), zap.Error(err))
	} else if !errors.Is(err, os.ErrNotExist) {
		s.logger.Info("ignoring stale nginx pid file", zap.String("pid_file", s.PidFile), zap.Error(err))
	}
	m, err := s.start()
	if err != nil {
		return nil, err
	}
	s.logger.Info("nginx started", zap.Int("pid", m.proc.Pid))
	return m, nil
}

// adopt takes over a master a previous lbagent started. It is not our
// child, so its end is noticed by polling rather than by wait(2).
func (s *Supervisor) adopt(pid int) (*master, error) {
	// On Linux this holds a pidfd: signals go to this process only.
	proc, err := os.FindProcess(pid)
	if err != nil {
		return nil, fmt.Errorf("adopt nginx %d: %w", pid, err)
	}
	// Check again now that the handle is held, in case the pid was reused.
	if _, err := s.Master(); err != nil {
		_ = proc.Release()
		return nil, fmt.Errorf("adopt nginx %d: %w", pid, err)
	}
	pgid, err := syscall.Getpgid(pid)
	m := &master{proc: proc, adopted: true, exited: make(chan error, 1), unwatch: make(chan struct{}),
		group: err == nil && pgid == pid && pgid != syscall.Getpgrp()}
	interval := s.PollInterval
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-m.unwatch:
				return
			case <-t.C:
				// Signal 0 through the pidfd fails once the process is gone;
				// a zombie (a parent not reaping) still takes signals.
				if proc.Signal(syscall.Signal(0)) != nil || !running(pid) {
					m.exited <- fmt.Errorf("adopted nginx master %d is gone", pid)
					return
				}
			}
		}
	}()
	return m, nil
}

// start runs nginx in the foreground (daemon off) as a child.
func (s *Supervisor) start() (*master, error) {
	// nginx's output before it opens its own error log goes to a file, not
	// a pipe to lbagent: nginx must not lose its stderr when lbagent dies.
	out, err := os.OpenFile(s.outputPath(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	defer out.Close()
	cmd := exec.Command(s.bin.Path, "-e", "stderr", "-p", s.bin.Prefix, "-c", s.bin.Conf, "-g", "daemon off;")
	cmd.Stdout, cmd.Stderr = out, out
	// A session of its own: a signal to lbagent's process group (a
	// terminal's Ctrl-C, kill -- -pgid) or a terminal hangup does not reach
	// nginx; lbagent decides how nginx stops. No parent-death signal: an
	// lbagent that dies leaves nginx serving, for the next one to adopt.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start nginx %s: %w", s.bin.Path, err)
	}
	m := &master{proc: cmd.Process, group: true, exited: make(chan error, 1), unwatch: make(chan struct{})}
	go func() { m.exited <- cmd.Wait() }()
	s.waitReady(m)
	return m, nil
}

// waitReady waits until the master m is past its start-up: its pid file
// names it and it runs as "nginx: master process" (Master), which nginx
// does once its signal handlers are set. A SIGHUP sent before that is lost
// (or, inherited as ignored, never seen): found in CI, where a reload
// right after start never took effect. A master that exits meanwhile is
// left for Run to see; one that takes longer than ReadyTimeout is used as is.
func (s *Supervisor) waitReady(m *master) {
	deadline := time.Now().Add(s.ReadyTimeout)
	for time.Now().Before(deadline) {
		if pid, err := s.Master(); err == nil && pid == m.proc.Pid {
			return
		}
		select {
		case err := <-m.exited:
			m.exited <- err
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
	s.logger.Warn("nginx not ready in time; signals to it may be lost until it is", zap.Int("pid", m.proc.Pid), zap.Duration("waited", s.ReadyTimeout))
}

func (s *Supervisor) quit(m *master) error {
	pid := m.proc.Pid
	s.logger.Info("nginx quitting gracefully", zap.Int("pid", pid), zap.Duration("timeout", s.StopTimeout))
	_ = m.proc.Signal(syscall.SIGQUIT)
	timer := time.NewTimer(s.StopTimeout)
	defer timer.Stop()
	select {
	case <-m.exited:
		return nil
	case <-timer.C:
	}
	_ = m.proc.Kill()
	if m.group {
		_ = syscall.Kill(-pid, syscall.SIGKILL) // its workers too
	}
	select {
	case <-m.exited:
	case <-time.After(5 * time.Second):
	}
	return fmt.Errorf("nginx %d did not quit within %s: killed", pid, s.StopTimeout)
}

// reapGroup sends SIGQUIT to the process group of a dead master (its
// orphaned workers), waits up to StopTimeout for it to empty, then kills it.
func (s *Supervisor) reapGroup(pgid int) {
	if syscall.Kill(-pgid, syscall.SIGQUIT) != nil {
		return // nothing left
	}
	deadline := time.Now().Add(s.StopTimeout)
	for time.Now().Before(deadline) {
		if syscall.Kill(-pgid, 0) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.logger.Warn("orphaned nginx workers did not quit, killing them", zap.Int("pgid", pgid))
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// outputPath is the file that takes nginx's stdout and stderr.
func (s *Supervisor) outputPath() string { return filepath.Join(s.bin.Prefix, "logs", "stderr.log") }

// output returns the end of what nginx printed, for the log of its exit.
func (s *Supervisor) output() string {
	f, err := os.Open(s.outputPath())
	if err != nil {
		return ""
	}
	defer f.Close()
	const n = 2048
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, n))
	return string(b)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
