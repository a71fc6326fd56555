package nginx

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ErrNoMaster is returned by Binary.Master when the pid file names no
// running nginx master of this binary's config: there is no pid file, its
// pid is dead, or another program (or another nginx) now holds that pid.
var ErrNoMaster = errors.New("nginx: no running master of this config")

// Master returns the pid of the running nginx master that pidFile names,
// once it has checked that the pid is alive and is an nginx master running
// this binary's config: its command line (which nginx rewrites to
// "nginx: master process <argv>") carries b's -p prefix and -c conf. A
// stale pid file, dead or reused by another program, is an ErrNoMaster
// saying why, so a caller never signals a process that is not ours.
func (b Binary) Master(pidFile string) (int, error) {
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, fmt.Errorf("%w: read pid file: %w", ErrNoMaster, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("%w: pid file %s holds %q, not a pid", ErrNoMaster, pidFile, strings.TrimSpace(string(data)))
	}
	if !running(pid) {
		return 0, fmt.Errorf("%w: pid %d from %s is not running", ErrNoMaster, pid, pidFile)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0, fmt.Errorf("%w: pid %d from %s: %w", ErrNoMaster, pid, pidFile, err)
	}
	if !isMasterOf(string(cmdline), b.Prefix, b.Conf) {
		return 0, fmt.Errorf("%w: pid %d from %s is not an nginx master of prefix %s and config %s (it runs %q)",
			ErrNoMaster, pid, pidFile, b.Prefix, b.Conf, tail(strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " ")), 200))
	}
	return pid, nil
}

// masterTitle starts the command line an nginx master gives itself.
const masterTitle = "nginx: master process "

// isMasterOf reports whether cmdline, the contents of /proc/<pid>/cmdline,
// is an nginx master started with -p prefix and -c conf. A worker ("nginx:
// worker process"), an nginx not yet past its start (raw argv), another
// prefix or another config do not match.
func isMasterOf(cmdline, prefix, conf string) bool {
	title := strings.TrimRight(strings.ReplaceAll(cmdline, "\x00", " "), " ")
	rest, ok := strings.CutPrefix(title, masterTitle)
	if !ok || prefix == "" || conf == "" {
		return false
	}
	// Matched with spaces around each value, so /a/b is not /a/bc.
	rest = " " + rest + " "
	return strings.Contains(rest, " -p "+prefix+" ") && strings.Contains(rest, " -c "+conf+" ")
}

// running reports whether pid is a live process: it exists and is not a
// zombie waiting for its parent (an adopted master's parent is init or a
// subreaper, not lbagent).
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S …": the state follows the last ')' (comm may hold one).
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	switch stat[i+2] {
	case 'Z', 'X', 'x':
		return false
	}
	return true
}
