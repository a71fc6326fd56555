// Package nginx is the only package that runs nginx. It tests a candidate
// config in a staging directory, reloads a running nginx, confirms that a
// reload took effect by polling the generation endpoint, and, for the
// sidecar image, runs and supervises nginx, which outlives lbagent: a new
// lbagent adopts the master a previous one left running.
package nginx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// Binary is one nginx executable bound to one prefix and main config file.
// Its methods are safe to call concurrently, but nginx itself serialises
// reloads: callers should not reload while a test of the same tree runs.
type Binary struct {
	// Path is the nginx executable.
	Path string
	// Prefix is the -p prefix: relative pid, log and temp paths resolve here.
	Prefix string
	// Conf is the absolute path of the main config file (-c).
	Conf string
}

// TestError is a config that nginx -t refused. File and Line point at the
// first error when nginx named one.
type TestError struct {
	// Output is everything nginx printed.
	Output string
	// Message is the first [emerg] or [crit] line without its prefix.
	Message string
	// File is the config file nginx blamed, or empty.
	File string
	// Line is the line in File nginx blamed, or 0.
	Line int
}

// Error returns the first message nginx gave.
func (e *TestError) Error() string {
	if e.Message != "" {
		return "nginx -t: " + e.Message
	}
	return "nginx -t: " + strings.TrimSpace(e.Output)
}

// emergLine matches "2026/11/23 23:57:04 [emerg] 9895#9895: unknown directive "bogus" in /x/nginx.conf:12".
var emergLine = regexp.MustCompile(`\[(emerg|crit|alert)\] \d+#\d+: (.*?)(?: in (/\S+):(\d+))?$`)

func parseTestOutput(out string) *TestError {
	te := &TestError{Output: out}
	for _, line := range strings.Split(out, "\n") {
		m := emergLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		te.Message = m[2]
		if m[3] != "" {
			te.File = m[3]
			te.Line, _ = strconv.Atoi(m[4])
			te.Message += " in " + m[3] + ":" + m[4]
		}
		break
	}
	return te
}

// Test runs `nginx -t` on the config at conf with prefix, logging errors to
// stderr rather than to the compiled-in error log. prefix must be a staging
// directory, never the live one: nginx -t writes the pid file of the
// config it tests, and would overwrite the running master's. The config
// should keep pid, logs and temp paths relative to the prefix so that the
// staging copy is byte for byte what goes live. A refused config is a
// *TestError.
func (b Binary) Test(ctx context.Context, prefix, conf string) error {
	out, err := b.run(ctx, "-t", "-q", "-e", "stderr", "-p", prefix, "-c", conf)
	if err == nil {
		return nil
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return parseTestOutput(out)
	}
	return fmt.Errorf("nginx -t %s: %w", conf, err)
}

// Reload asks the running master to reload its config (`nginx -s reload`).
// It returns once the signal is sent; Confirm says when the new config serves.
func (b Binary) Reload(ctx context.Context) error {
	out, err := b.run(ctx, "-e", "stderr", "-p", b.Prefix, "-c", b.Conf, "-s", "reload")
	if err != nil {
		return fmt.Errorf("nginx -s reload: %w: %s", err, strings.TrimSpace(out))
	}
	return nil
}

// Version returns what `nginx -v` prints, such as "nginx/1.22.1".
func (b Binary) Version(ctx context.Context) (string, error) {
	out, err := b.run(ctx, "-v")
	if err != nil {
		return "", fmt.Errorf("nginx -v: %w: %s", err, strings.TrimSpace(out))
	}
	_, v, _ := strings.Cut(strings.TrimSpace(out), "version: ")
	return v, nil
}

func (b Binary) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, b.Path, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// PidFile reloads an nginx that lbagent does not run (include mode beside an
// existing nginx) by sending SIGHUP to the master named in its pid file.
type PidFile string

// Reload signals the master in the pid file to re-read its config.
func (p PidFile) Reload(context.Context) error {
	data, err := os.ReadFile(string(p))
	if err != nil {
		return fmt.Errorf("nginx reload: read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("nginx reload: pid file %s holds %q, not a pid", p, strings.TrimSpace(string(data)))
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("nginx reload: signal master %d: %w", pid, err)
	}
	return nil
}
