package nginx

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"os/exec"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Supervisor runs nginx in the foreground as a child process (the sidecar
// image, --manage-nginx) and starts it again, with backoff, when it dies.
// Run owns the child; Reload and PID may be called from other goroutines.
type Supervisor struct {
	bin    Binary
	logger *zap.Logger
	// StopTimeout bounds the graceful quit (SIGQUIT) when Run's context ends.
	StopTimeout time.Duration
	// BackoffMax caps the delay between restarts of a crashing nginx.
	BackoffMax time.Duration

	mu      sync.Mutex
	cmd     *exec.Cmd
	started chan struct{}
}

// NewSupervisor returns a supervisor of bin's nginx.
func NewSupervisor(bin Binary, logger *zap.Logger) *Supervisor {
	return &Supervisor{
		bin: bin, logger: logger.Named("nginx"),
		StopTimeout: 30 * time.Second, BackoffMax: 10 * time.Second,
		started: make(chan struct{}),
	}
}

// Started is closed once nginx has been started for the first time.
func (s *Supervisor) Started() <-chan struct{} { return s.started }

// PID returns the master's process id, or 0 when nginx is not running.
func (s *Supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Reload sends SIGHUP to the master, which re-reads its config and, if it is
// valid, replaces its workers gracefully.
func (s *Supervisor) Reload(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return errors.New("nginx reload: nginx is not running")
	}
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("nginx reload: signal master %d: %w", s.cmd.Process.Pid, err)
	}
	return nil
}

// Run starts nginx and keeps it running until ctx ends; then it asks nginx to
// quit gracefully (SIGQUIT: finish in-flight requests) and waits up to
// StopTimeout before killing it. The config must be valid before Run.
func (s *Supervisor) Run(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	var once sync.Once
	for {
		startedAt := time.Now()
		cmd, exited, out, err := s.start()
		if err != nil {
			return err
		}
		once.Do(func() { close(s.started) })
		s.logger.Info("nginx started", zap.Int("pid", cmd.Process.Pid))
		select {
		case err := <-exited:
			s.logger.Error("nginx exited", zap.Error(err), zap.String("output", tail(out.String(), 2048)))
			// A master that died leaves its workers serving with the listen
			// sockets open: a new master could not bind. Ask them to finish
			// in-flight requests and go.
			s.reapGroup(cmd.Process.Pid)
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
			return s.quit(cmd, exited)
		}
	}
}

func (s *Supervisor) start() (*exec.Cmd, <-chan error, *lockedBuffer, error) {
	out := &lockedBuffer{}
	cmd := exec.Command(s.bin.Path, "-e", "stderr", "-p", s.bin.Prefix, "-c", s.bin.Conf, "-g", "daemon off;")
	cmd.Stdout, cmd.Stderr = out, out
	// Workers inherit the output pipe; when the master dies they keep it
	// open, and Wait would block until they exit. Stop waiting for output
	// soon after the master itself has gone.
	cmd.WaitDelay = 500 * time.Millisecond
	// Its own process group: a terminal's Ctrl-C reaches lbagent, which then
	// decides how nginx stops, instead of killing nginx mid-request. If
	// lbagent itself dies, nginx quits gracefully (SIGQUIT) rather than
	// keep the listen sockets from the lbagent that replaces it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, fmt.Errorf("start nginx %s: %w", s.bin.Path, err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		if s.cmd == cmd {
			s.cmd = nil
		}
		s.mu.Unlock()
		exited <- err
	}()
	return cmd, exited, out, nil
}

func (s *Supervisor) quit(cmd *exec.Cmd, exited <-chan error) error {
	s.logger.Info("nginx quitting gracefully", zap.Int("pid", cmd.Process.Pid), zap.Duration("timeout", s.StopTimeout))
	_ = cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-exited:
		return nil
	case <-time.After(s.StopTimeout):
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("nginx %d did not quit within %s: killed", cmd.Process.Pid, s.StopTimeout)
	}
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

// lockedBuffer collects a child's output while it runs.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 64<<10 {
		b.buf.Reset()
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
