// Command regex measures what a routing rule's regex costs nginx's PCRE
// on the worst request an attacker can send for it. nginx matches regex
// locations with a backtracking engine inside a worker's event loop, so a
// regex that backtracks holds every connection of that worker while it
// runs, and PCRE's match limit turns the longest into a 500.
//
// It starts two private nginx, one with pcre_jit off and one with it on,
// each with one server per shape below (a regex location alone, so that
// a request meets no other shape's regex) and a plain server, and sends
// each shape its attack request (a URI of -uri-len bytes, or a short one
// for the exponential shapes, as issue 24's 24 'a' and '!'), each after a
// plain request on the same connection. It prints, per shape and per
// nginx: whether Berth's grammar (spec.CheckRegex) accepts the regex, the
// answer's status (500 is PCRE's match limit), the median latency and its
// ratio to the plain request's median, measured in the same run. The
// last shape shows what pcre_jit costs a regex the grammar accepts: a
// repeated group fails (500, PCRE2_ERROR_JIT_STACKLIMIT) past about 1,500
// repeats, in a fraction of a millisecond.
//
// Run it with: go run ./bench/regex (needs nginx; traffic stays on
// 127.0.0.1; takes about a minute and a half, most of it the degree-3
// shape with pcre_jit, which holds a worker for seconds a request).
package main

import (
	"cmp"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/berthhq/berth/common/spec"
)

// shape is one regex and the request that costs it most.
type shape struct {
	name  string
	re    string
	build func(n int) string // the attack URI, about n bytes
}

// fill returns prefix followed by c repeated up to n bytes in all.
func fill(prefix string, c string, n int) string {
	return prefix + strings.Repeat(c, max(0, (n-len(prefix))/len(c)))
}

var shapes = []shape{
	// Refused: exponentially many ways.
	{"issue 24: (\\w+)+, 25 chars", `^/n/(\w+)+$`, func(int) string { return "/n/" + strings.Repeat("a", 24) + "!" }},
	{"(\\w+)+, long URI", `^/nl/(\w+)+$`, func(n int) string { return fill("/nl/", "a", n-1) + "!" }},
	{"(a|aa)+, 46 chars", `^/alt/(a|aa)+$`, func(int) string { return "/alt/" + strings.Repeat("a", 40) + "!" }},
	{"(\\w|\\d)+, 35 chars", `^/wd/(\w|\d)+$`, func(int) string { return "/wd/" + strings.Repeat("1", 30) + "!" }},
	// Refused: polynomially many ways.
	{"degree 5: .*.*.*.*.*", `^/p5/.*.*.*.*.*!$`, func(n int) string { return fill("/p5/!", "a", n) }},
	{"degree 4: \\w*\\w*\\w*\\w*", `^/w4/\w*\w*\w*\w*x`, func(n int) string { return fill("/w4/x", "a", n) }},
	{"degree 3: \\w*\\w*\\w*", `^/w3/\w*\w*\w*x`, func(n int) string { return fill("/w3/x", "a", n) }},
	{"degree 2: \\w*\\w*", `^/w2/\w*\w*x`, func(n int) string { return fill("/w2/x", "a", n) }},
	{"degree 2: .*a.*b", `^/d2/.*a.*b`, func(n int) string { return fill("/d2/b", "a", n) }},
	{"degree 2: .*/x/.*", `^/d2s/.*/x/.*!`, func(n int) string { return fill("/d2s/!", "/x", n) }},
	{"degree 2: \\w+_?\\w+", `^/d2o/\w+_?\w+$`, func(n int) string { return fill("/d2o/", "a", n-1) + "!" }},
	{"unanchored: /img/.*", `/img/.*\.(png|jpe?g)$`, func(n int) string { return fill("", "/img", n-2) + "/g" }},
	{"unanchored: /.*!x", `/.*!x`, func(n int) string { return fill("", "/a", n-2) + "x!" }},
	{"unanchored: /.*[0-9]x", `/.*[0-9]x`, func(n int) string { return fill("", "/a", n-2) + "ax" }},
	// Accepted.
	{"nearest allowed: \\w+", `^/s/\w+$`, func(n int) string { return fill("/s/", "a", n-1) + "!" }},
	{"anchored: ^/.*[0-9]x", `^/.*[0-9]x`, func(n int) string { return fill("", "/a", n-2) + "ax" }},
	{"anchored: ^/.*\\.png$", `^/.*\.(png|jpe?g)$`, func(n int) string { return fill("/", "a.", n-1) + "g" }},
	{"one repeat then text", `^/api/.*/items$`, func(n int) string { return fill("/api/", "a/", n) }},
	{"disjoint repeats", `^/v[0-9]+/[a-z]+$`, func(n int) string { return fill("/v1/", "a", n-1) + "!" }},
	{"unanchored, disjoint", `/[a-z]+\.png$`, func(n int) string { return fill("", "/a", n) }},
	// Accepted, and no stall, but a repeated group runs out of PCRE's JIT
	// stack past about 1,500 repeats: nginx answers 500 at once.
	{"repeated group (e|en)+", `^/e/(e|en)+$`, func(n int) string { return fill("/e/", "e", n-1) + "!" }},
}

func main() {
	nginx := flag.String("nginx", "nginx", "nginx executable")
	uriLen := flag.Int("uri-len", 8000, "bytes of a long attack URI (nginx's request line buffer is 8 KiB)")
	rounds := flag.Int("rounds", 3, "attack requests per shape and nginx, each after a plain one")
	only := flag.String("only", "", "measure only the shapes whose name holds this")
	flag.Parse()
	shapes = slices.DeleteFunc(shapes, func(s shape) bool { return !strings.Contains(s.name, *only) })
	if err := run(*nginx, *uriLen, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// result is one shape measured on one nginx.
type result struct {
	status       int
	attack, base time.Duration // medians
}

func run(nginxBin string, uriLen, rounds int) error {
	dir, err := os.MkdirTemp("", "berth-bench-regex-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	res := map[string][]result{}
	for _, jit := range []bool{false, true} {
		n, err := startNginx(nginxBin, filepath.Join(dir, fmt.Sprint(jit)), jit)
		if err != nil {
			return err
		}
		rs, err := measure(n.addr, uriLen, rounds)
		n.stop()
		if err != nil {
			return fmt.Errorf("pcre_jit %v: %w", jit, err)
		}
		for i, s := range shapes {
			res[s.name] = append(res[s.name], rs[i])
		}
	}
	fmt.Printf("nginx PCRE on each shape's attack request (long URIs %d bytes), median of %d, against a plain request's median in the same run\n\n", uriLen, rounds)
	fmt.Printf("%-28s %-24s %-9s %29s %29s\n", "shape", "regex", "grammar", "pcre_jit off: status ms ratio", "pcre_jit on: status ms ratio")
	for _, s := range shapes {
		verdict := "accepted"
		if spec.CheckRegex(s.re) != nil {
			verdict = "refused"
		}
		fmt.Printf("%-28s %-24s %-9s", s.name, s.re, verdict)
		for _, r := range res[s.name] {
			fmt.Printf(" %9d %9.2f %9.1f", r.status, ms(r.attack), float64(r.attack)/float64(r.base))
		}
		fmt.Println()
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// measure sends each shape's attack request rounds times, each after a
// plain request, on one keep-alive connection.
func measure(addr string, uriLen, rounds int) ([]result, error) {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1, DisableCompression: true}}
	get := func(host, uri string) (int, time.Duration, error) {
		req, err := http.NewRequest(http.MethodGet, "http://"+addr+uri, nil)
		if err != nil {
			return 0, 0, err
		}
		req.Host = host
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, time.Since(start), nil
	}
	out := make([]result, len(shapes))
	for i, s := range shapes {
		uri, host := s.build(uriLen), fmt.Sprintf("shape%d", i)
		if _, _, err := get(host, uri); err != nil { // warm: the connection, nginx's caches
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		var attack, base []time.Duration
		for range rounds {
			code, d, err := get("plain", "/plain")
			if err != nil || code != http.StatusOK {
				return nil, fmt.Errorf("plain request: status %d, %v", code, err)
			}
			base = append(base, d)
			if code, d, err = get(host, uri); err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			out[i].status = code
			attack = append(attack, d)
		}
		out[i].attack, out[i].base = median(attack), median(base)
	}
	return out, nil
}

func median(ds []time.Duration) time.Duration {
	slices.SortFunc(ds, cmp.Compare)
	return ds[len(ds)/2]
}

// server is a private nginx: its own prefix, one worker.
type server struct {
	cmd  *exec.Cmd
	addr string
}

func startNginx(bin, prefix string, jit bool) (*server, error) {
	for _, d := range []string{"conf", "logs", "run", "temp"} {
		if err := os.MkdirAll(filepath.Join(prefix, d), 0o755); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	var locs strings.Builder
	for i, s := range shapes {
		fmt.Fprintf(&locs, "    server {\n        listen %s;\n        server_name shape%d;\n        location ~ \"%s\" { return 200 \"shape %d\\n\"; }\n    }\n", addr, i, s.re, i)
	}
	onOff := map[bool]string{false: "off", true: "on"}[jit]
	conf := `pid run/nginx.pid;
error_log logs/error.log crit;
worker_processes 1;
pcre_jit ` + onOff + `;
events { worker_connections 256; }
http {
    client_body_temp_path temp/client_body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    access_log off;
    server {
        listen ` + addr + ` default_server;
        location /plain { return 200 "plain\n"; }
    }
` + locs.String() + `}
`
	confPath := filepath.Join(prefix, "conf", "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	if out, err := exec.Command(bin, "-t", "-q", "-e", "stderr", "-p", prefix, "-c", confPath).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("nginx -t: %v: %s", err, out)
	}
	cmd := exec.Command(bin, "-e", "stderr", "-p", prefix, "-c", confPath, "-g", "daemon off;")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	s := &server{cmd: cmd, addr: addr}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return s, nil
		}
	}
	s.stop()
	return nil, fmt.Errorf("nginx did not listen on %s within 10s", addr)
}

// stop quits nginx gracefully and waits for it.
func (s *server) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGQUIT)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
}
