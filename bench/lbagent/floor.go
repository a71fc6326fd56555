package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

var listenRe = regexp.MustCompile(`listen 127\.0\.0\.1:\d+`)
var genRe = regexp.MustCompile(`return 200 "\d+\\n";`)

// floor is the least a config-reloading agent must do for one change,
// done by hand on a copy of the reload-mode lbagent's config served by a
// nginx of its own: write the changed config to a staging prefix, nginx -t
// it there, write it live, SIGHUP the master (as lbagent signals the
// master it supervises; its pid read once, from the pid file), and poll
// until the first answer from the new backend.
type floor struct {
	nginxBin      string
	client        *http.Client
	cmd           *exec.Cmd
	conf          []byte
	live, staging string
	pidFile, addr string
	master        int // the pid SIGHUP goes to, as lbagent signals the master it supervises
	cur           string
	n             int
}

// startFloor starts the floor's nginx on a copy of conf (listen addresses
// moved to free ports) and waits until it answers app-0000 from cur.
func startFloor(dir, confPath, httpAddr, cur, nginxBin string, client *http.Client) (*floor, error) {
	conf, err := os.ReadFile(confPath)
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(conf, []byte(cur)) {
		return nil, fmt.Errorf("floor: %s does not route app-0000 to %s: not a reload-mode config", confPath, cur)
	}
	f := &floor{nginxBin: nginxBin, client: client, cur: cur}
	ports := map[string]string{}
	f.conf = listenRe.ReplaceAllFunc(conf, func(m []byte) []byte {
		old := string(m)
		if _, ok := ports[old]; !ok {
			ports[old] = "listen " + freeAddr()
		}
		return []byte(ports[old])
	})
	for old, nw := range ports {
		if strings.HasSuffix(old, httpAddr) {
			f.addr = strings.TrimPrefix(nw, "listen ")
		}
	}
	prefix, staging := filepath.Join(dir, "floor"), filepath.Join(dir, "floor-staging")
	for _, p := range []string{prefix, staging} {
		for _, sub := range []string{"conf", "logs", "run", "temp"} {
			if err := os.MkdirAll(filepath.Join(p, sub), 0o755); err != nil {
				return nil, err
			}
		}
	}
	f.live, f.staging = filepath.Join(prefix, "conf", "nginx.conf"), filepath.Join(staging, "conf", "nginx.conf")
	f.pidFile = filepath.Join(prefix, "run", "nginx.pid")
	if err := os.WriteFile(f.live, f.conf, 0o644); err != nil {
		return nil, err
	}
	f.cmd = exec.Command(nginxBin, "-e", "stderr", "-p", prefix, "-c", f.live, "-g", "daemon off;")
	if err := f.cmd.Start(); err != nil {
		return nil, fmt.Errorf("floor nginx: %w", err)
	}
	if _, err := waitBodyAt(client, f.addr, "app-0000.bench", cur, 60*time.Second); err != nil {
		f.stop()
		return nil, fmt.Errorf("floor nginx: %w", err)
	}
	if f.master, err = masterOf(f.pidFile, prefix); err != nil {
		f.stop()
		return nil, fmt.Errorf("floor: %w", err)
	}
	return f, nil
}

// change times one change to the other backend.
func (f *floor) change(backA, backB string) (time.Duration, error) {
	next := backA
	if f.cur == backA {
		next = backB
	}
	conf := bytes.Replace(f.conf, []byte(f.cur), []byte(next), 1)
	f.n++
	conf = genRe.ReplaceAll(conf, []byte(fmt.Sprintf(`return 200 "%d\n";`, 100000+f.n)))
	t0 := time.Now()
	if err := os.WriteFile(f.staging, conf, 0o644); err != nil {
		return 0, err
	}
	if o, err := exec.Command(f.nginxBin, "-t", "-q", "-e", "stderr", "-p", filepath.Dir(filepath.Dir(f.staging)), "-c", f.staging).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("floor nginx -t: %v: %s", err, o)
	}
	if err := os.WriteFile(f.live, conf, 0o644); err != nil {
		return 0, err
	}
	if err := syscall.Kill(f.master, syscall.SIGHUP); err != nil {
		return 0, fmt.Errorf("floor: signal master %d: %w", f.master, err)
	}
	if _, err := waitBodyAt(f.client, f.addr, "app-0000.bench", next, changeTimeout); err != nil {
		return 0, fmt.Errorf("floor: %w", err)
	}
	d := time.Since(t0)
	f.conf, f.cur = conf, next
	return d, nil
}

func (f *floor) stop() {
	_ = f.cmd.Process.Signal(syscall.SIGQUIT)
	done := make(chan struct{})
	go func() { _ = f.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = f.cmd.Process.Kill()
		<-done
	}
}
