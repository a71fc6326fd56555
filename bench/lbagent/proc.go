package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procMem is one process's resident memory, in kB, from /proc/<pid>/status:
// VmRSS = RssAnon + RssFile + RssShmem; shared memory (nginx's shared
// dicts and zones) counts in a process's RSS once it has touched it, and
// a worker's copy-on-write pages still shared with the master count in
// both. Pss (from smaps_rollup) divides every shared page among the
// processes that map it, so Pss adds up across processes.
type procMem struct{ rss, anon, shmem, pss int64 }

// mem is an agent's memory at one moment, in kB.
type mem struct {
	agentRSS, agentHWM int64
	master             procMem
	workers            []procMem
}

// nginxPss is the memory of the whole nginx, master and workers.
func (m mem) nginxPss() int64 {
	n := m.master.pss
	for _, w := range m.workers {
		n += w.pss
	}
	return n
}

// readMem reads pid's procMem.
func readMem(pid int) (procMem, error) {
	st, err := procStatus(pid)
	if err != nil {
		return procMem{}, err
	}
	m := procMem{rss: st["VmRSS"], anon: st["RssAnon"], shmem: st["RssShmem"]}
	if r, err := kbFields(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err == nil {
		m.pss = r["Pss"]
	}
	return m, nil
}

func (m mem) workerSum() (rss, anon, shmem int64) {
	for _, w := range m.workers {
		rss, anon, shmem = rss+w.rss, anon+w.anon, shmem+w.shmem
	}
	return rss, anon, shmem
}

func (m mem) workerMax() int64 {
	var hi int64
	for _, w := range m.workers {
		hi = max(hi, w.rss)
	}
	return hi
}

// procStatus returns the kB fields of /proc/<pid>/status (VmRSS, VmHWM, …).
func procStatus(pid int) (map[string]int64, error) {
	return kbFields(fmt.Sprintf("/proc/%d/status", pid))
}

// kbFields returns the "Name: N kB" lines of a /proc file.
func kbFields(path string) (map[string]int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !strings.HasSuffix(v, " kB") {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(v, " kB")), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, nil
}

// masterOf returns the pid in pidFile when it is a live nginx master of
// prefix, so that the bench only ever signals an nginx it started.
func masterOf(pidFile, prefix string) (int, error) {
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s holds %q, not a pid", pidFile, strings.TrimSpace(string(data)))
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0, fmt.Errorf("nginx master %d: %w", pid, err)
	}
	if c := string(cmdline); !strings.HasPrefix(c, "nginx: master process") || !strings.Contains(c, prefix) {
		return 0, fmt.Errorf("pid %d from %s is not the nginx master of %s", pid, pidFile, prefix)
	}
	return pid, nil
}

// quitNginx asks a master to quit gracefully and waits up to 10 s.
func quitNginx(pid int) {
	if syscall.Kill(pid, syscall.SIGQUIT) != nil {
		return
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
	}
}

// children returns the pid and command line of every child of parent.
func children(parent int) map[int]string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	out := map[int]string{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// "pid (comm) S ppid …": the fields follow the last ')'.
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 2 || fields[1] != strconv.Itoa(parent) {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		out[pid] = strings.TrimRight(strings.ReplaceAll(string(cmdline), "\x00", " "), " ")
	}
	return out
}

// liveWorkers returns the worker processes of master that serve its
// current config (not those of an older config, shutting down).
func liveWorkers(master int) []int {
	var out []int
	for pid, cmd := range children(master) {
		if cmd == "nginx: worker process" {
			out = append(out, pid)
		}
	}
	return out
}

// workerWatch counts the worker processes an nginx master starts: every
// reload (SIGHUP) starts a full set of new workers, so new workers per
// worker count is the number of reloads nginx made, counted on nginx's
// side independently of lbagent's metrics. (nginx logs "(SIGHUP)
// received" only at notice level; lbagent's config logs warn and up.)
type workerWatch struct {
	pidFile string
	master  int
	perSet  int          // workers of one config
	seen    map[int]bool // every worker pid seen
	fresh   int          // workers started since the watch began
	masters int          // masters seen after the first (nginx restarts)
}

func watchWorkers(pidFile string) (*workerWatch, error) {
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return nil, fmt.Errorf("read pid file: %w", err)
	}
	master, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("pid file %s: %w", pidFile, err)
	}
	w := &workerWatch{pidFile: pidFile, master: master, seen: map[int]bool{}}
	for pid := range children(master) {
		w.seen[pid] = true
	}
	w.perSet = len(liveWorkers(master))
	if w.perSet == 0 {
		return nil, fmt.Errorf("nginx master %d has no worker process", master)
	}
	return w, nil
}

// sample records the workers running now.
func (w *workerWatch) sample() {
	if data, err := os.ReadFile(w.pidFile); err == nil {
		if m, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && m != w.master {
			w.master = m
			w.masters++
		}
	}
	for pid, cmd := range children(w.master) {
		if !w.seen[pid] && strings.HasPrefix(cmd, "nginx: worker process") {
			w.seen[pid] = true
			w.fresh++
		}
	}
}

// sets returns n new workers as full sets of workers: reloads.
func (w *workerWatch) sets(n int) float64 { return float64(n) / float64(w.perSet) }
