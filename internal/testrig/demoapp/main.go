// Command demoapp is Berth's demo and test application: a small static HTTP
// (or TCP) server whose answers say which instance and version served them,
// whose health can be switched to fail, and whose latency can be set. The
// test rig builds it into a FROM scratch image; the quick start runs it.
//
// Configuration is by environment:
//
//	DEMO_LISTEN    listen address (default :8080)
//	DEMO_VERSION   version reported (default: set at build time with -X main.version)
//	DEMO_INSTANCE  instance id reported (default: BERTH_INSTANCE, else the host name)
//	DEMO_LATENCY   delay added to every request, a Go duration (default 0)
//	DEMO_MODE      http (default) or tcp: a line server answering PING with PONG, else echoing
//	DEMO_HEALTH    ok (default) or fail: the initial state of /healthz
//	DEMO_EXIT      a code from 1 to 125: log why, then exit with it at start (a version that crashes)
//	DEMO_ALLOC     a size in MiB: allocate and touch that much memory at start (a version that is OOM-killed)
//	DEMO_LOG_LINES lines written to stdout at start (default 0)
//	DEMO_LOG_LINE_BYTES  their length, newline included (default 100, at least 60)
//	DEMO_ACCESS_LOG  1: a line per request to stdout ("GET / 200 instance=…")
//	DEMO_FAIL_PERCENT  0 (default) to 100: that share of GET / answers 500, spread
//	               evenly and deterministically (40: the 3rd and 5th of every 5 fail);
//	               /healthz is not affected (an instance that fails real traffic)
//
// DEMO_MODE log writes DEMO_LOG_LINES lines to stdout as fast as it can
// and exits 0: a container that floods its log.
//
// "demoapp release [-lines N] [-exit CODE] [-sleep D] [-until FILE]" is a
// release task (a migration): it writes N lines ("release: migration step
// i of N"), waits D and, with -until, until FILE exists (a test copies it
// into the container), then exits with CODE (0 by default), serving
// nothing.
//
// "demoapp check URL" is a health check command for a HEALTHCHECK or an
// exec check (a FROM scratch image has no curl): it GETs URL within 2 s,
// prints the status line (or the error), and exits 0 for a 2xx or 3xx
// answer, 1 for anything else.
//
// HTTP endpoints: GET / answers JSON {instance, version, host}; GET /healthz
// answers 200 or 503; POST /admin/health?state=ok|fail switches it; POST
// /admin/fail?percent=40 sets DEMO_FAIL_PERCENT; POST
// /admin/latency?d=100ms sets the latency; GET /slow?d=1s waits that long.
// On SIGTERM it stops accepting, finishes in-flight requests and exits 0.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// version is set at build time: -ldflags "-X main.version=v2".
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "release" {
		os.Exit(release(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "check" {
		os.Exit(check(os.Args[2:], os.Stdout))
	}
	os.Exit(run())
}

// check GETs the URL in args and says whether it answered 2xx or 3xx.
func check(args []string, stdout io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stdout, "check: want one URL")
		return 2
	}
	c := &http.Client{Timeout: 2 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(args[0])
	if err != nil {
		fmt.Fprintln(stdout, "check:", err)
		return 1
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	fmt.Fprintf(stdout, "check: GET %s: %s\n", args[0], resp.Status)
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return 1
	}
	return 0
}

// release is a release task: lines written, a wait, an exit code.
func release(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("release", flag.ContinueOnError)
	fs.SetOutput(stderr)
	lines := fs.Int("lines", 3, "lines to write")
	code := fs.Int("exit", 0, "exit code (0 to 125)")
	sleep := fs.Duration("sleep", 0, "how long to run before exiting")
	until := fs.String("until", "", "a file to wait for before exiting")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *code < 0 || *code > 125 || *lines < 0 || *lines > 100_000 || *sleep < 0 {
		fmt.Fprintln(stderr, "release: -exit must be 0 to 125, -lines 0 to 100000, -sleep not negative")
		return 2
	}
	for i := 1; i <= *lines; i++ {
		fmt.Fprintf(stdout, "release: migration step %d of %d\n", i, *lines)
	}
	time.Sleep(*sleep)
	for *until != "" {
		if _, err := os.Stat(*until); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if *code != 0 {
		fmt.Fprintf(stdout, "release: failed, exiting with code %d\n", *code)
	} else {
		fmt.Fprintln(stdout, "release: done")
	}
	return *code
}

func run() int {
	logger := log.New(os.Stderr, "demoapp ", log.LstdFlags|log.Lmicroseconds)
	cfg, err := configFromEnv(os.Getenv)
	if err != nil {
		logger.Print(err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		logger.Printf("listen %s: %v", cfg.Listen, err)
		return 1
	}
	logger.Printf("start instance=%s version=%s mode=%s listen=%s", cfg.Instance, cfg.Version, cfg.Mode, ln.Addr())
	if cfg.Exit != 0 {
		logger.Printf("fatal: DEMO_EXIT=%d: exiting with code %d", cfg.Exit, cfg.Exit)
		return cfg.Exit
	}
	if cfg.AllocMiB > 0 {
		logger.Printf("allocating %d MiB", cfg.AllocMiB)
		hold = make([]byte, cfg.AllocMiB<<20)
		for i := 0; i < len(hold); i += 4096 {
			hold[i] = 1 // touched: resident, so a memory limit kills
		}
		logger.Printf("allocated %d MiB", cfg.AllocMiB)
	}
	if err := writeLines(os.Stdout, cfg.LogLines, cfg.LineBytes, cfg.Instance); err != nil {
		logger.Printf("log lines: %v", err)
		return 1
	}
	if cfg.Mode == "log" {
		return 0
	}
	if cfg.Mode == "tcp" {
		err = serveTCP(ctx, ln)
	} else {
		err = serveHTTP(ctx, ln, newApp(cfg))
	}
	if err != nil {
		logger.Printf("stop: %v", err)
		return 1
	}
	logger.Print("stop: clean")
	return 0
}

type config struct {
	Listen, Version, Instance, Mode string
	Latency                         time.Duration
	Healthy                         bool
	Exit, AllocMiB                  int
	LogLines, LineBytes             int
	AccessLog                       bool
	FailPercent                     int
}

// hold keeps DEMO_ALLOC's memory reachable.
var hold []byte

func configFromEnv(getenv func(string) string) (config, error) {
	c := config{Listen: ":8080", Version: version, Mode: "http", Healthy: true}
	if v := getenv("DEMO_LISTEN"); v != "" {
		c.Listen = v
	}
	if v := getenv("DEMO_VERSION"); v != "" {
		c.Version = v
	}
	c.Instance = getenv("DEMO_INSTANCE")
	if c.Instance == "" {
		c.Instance = getenv("BERTH_INSTANCE")
	}
	if c.Instance == "" {
		c.Instance, _ = os.Hostname()
	}
	if v := getenv("DEMO_LATENCY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return c, fmt.Errorf("DEMO_LATENCY %q: must be a non-negative Go duration such as 50ms", v)
		}
		c.Latency = d
	}
	switch v := getenv("DEMO_MODE"); v {
	case "", "http", "tcp", "log":
		if v != "" {
			c.Mode = v
		}
	default:
		return c, fmt.Errorf("DEMO_MODE %q: must be http, tcp or log", v)
	}
	if v := getenv("DEMO_LOG_LINES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 100_000_000 {
			return c, fmt.Errorf("DEMO_LOG_LINES %q: must be a whole number from 0 to 100000000", v)
		}
		c.LogLines = n
	}
	c.LineBytes = 100
	if v := getenv("DEMO_LOG_LINE_BYTES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 60 || n > 1<<20 {
			return c, fmt.Errorf("DEMO_LOG_LINE_BYTES %q: must be a whole number from 60 to 1048576", v)
		}
		c.LineBytes = n
	}
	c.AccessLog = getenv("DEMO_ACCESS_LOG") == "1"
	if v := getenv("DEMO_FAIL_PERCENT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 100 {
			return c, fmt.Errorf("DEMO_FAIL_PERCENT %q: must be a whole number from 0 to 100", v)
		}
		c.FailPercent = n
	}
	switch v := getenv("DEMO_HEALTH"); v {
	case "", "ok":
	case "fail":
		c.Healthy = false
	default:
		return c, fmt.Errorf("DEMO_HEALTH %q: must be ok or fail", v)
	}
	if v := getenv("DEMO_EXIT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 125 {
			return c, fmt.Errorf("DEMO_EXIT %q: must be an exit code from 1 to 125", v)
		}
		c.Exit = n
	}
	if v := getenv("DEMO_ALLOC"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 4096 {
			return c, fmt.Errorf("DEMO_ALLOC %q: must be a size in MiB from 1 to 4096", v)
		}
		c.AllocMiB = n
	}
	return c, nil
}

// app is the HTTP side; its switches are safe for concurrent use.
type app struct {
	instance, version, host string
	latency                 atomic.Int64
	healthy                 atomic.Bool
	served                  atomic.Int64
	slow                    atomic.Int64 // GET /slow requests in progress
	accessLog               bool
	failPercent             atomic.Int64
}

func newApp(c config) *app {
	a := &app{instance: c.Instance, version: c.Version, accessLog: c.AccessLog}
	a.failPercent.Store(int64(c.FailPercent))
	a.host, _ = os.Hostname()
	a.latency.Store(int64(c.Latency))
	a.healthy.Store(c.Healthy)
	return a
}

// Reply is what GET / answers.
type Reply struct {
	Instance string `json:"instance"`
	Version  string `json:"version"`
	Host     string `json:"host"`
}

func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		a.delay(r.Context(), time.Duration(a.latency.Load()))
		n := a.served.Add(1) - 1
		w.Header().Set("X-Demo-Instance", a.instance)
		if fails(n, a.failPercent.Load()) {
			http.Error(w, "failing (DEMO_FAIL_PERCENT)", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Reply{Instance: a.instance, Version: a.version, Host: a.host})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !a.healthy.Load() {
			http.Error(w, "failing", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("POST /admin/health", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("state") {
		case "ok":
			a.healthy.Store(true)
		case "fail":
			a.healthy.Store(false)
		default:
			http.Error(w, "state must be ok or fail", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /admin/fail", func(w http.ResponseWriter, r *http.Request) {
		p, err := strconv.Atoi(r.URL.Query().Get("percent"))
		if err != nil || p < 0 || p > 100 {
			http.Error(w, "percent must be a whole number from 0 to 100", http.StatusBadRequest)
			return
		}
		a.failPercent.Store(int64(p))
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /admin/latency", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil || d < 0 {
			http.Error(w, "d must be a non-negative Go duration", http.StatusBadRequest)
			return
		}
		a.latency.Store(int64(d))
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil || d < 0 || d > 10*time.Minute {
			http.Error(w, "d must be a Go duration up to 10m", http.StatusBadRequest)
			return
		}
		a.slow.Add(1)
		defer a.slow.Add(-1)
		a.delay(r.Context(), d)
		_, _ = fmt.Fprintf(w, "slept %s on %s\n", d, a.instance)
	})
	if a.accessLog {
		return logged(mux, a.instance, os.Stdout)
	}
	return mux
}

// fails says whether request n (from 0) of GET / fails under
// DEMO_FAIL_PERCENT p: when (n+1)·p/100 passes a whole number, so p % of
// every 100 fail, spread evenly.
func fails(n, p int64) bool {
	return (n+1)*p/100 > n*p/100
}

// logged writes a line per request to out: "GET / 200 instance=…".
func logged(next http.Handler, instance string, out io.Writer) http.Handler {
	var mu sync.Mutex
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		mu.Lock()
		fmt.Fprintf(out, "%s %s %d instance=%s\n", r.Method, r.URL.Path, sw.status, instance)
		mu.Unlock()
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// writeLines writes n lines of size bytes each (newline included) to w,
// buffered, as fast as it can.
func writeLines(w io.Writer, n, size int, instance string) error {
	if n == 0 {
		return nil
	}
	bw := bufio.NewWriterSize(w, 256<<10)
	pad := strings.Repeat("x", size)
	for i := range n {
		head := fmt.Sprintf("line %d of %d from %s ", i+1, n, instance)
		if len(head) < size-1 {
			head += pad[:size-1-len(head)]
		}
		if _, err := bw.WriteString(head[:size-1] + "\n"); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func (a *app) delay(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}

func serveHTTP(ctx context.Context, ln net.Listener, a *app) error {
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func serveTCP(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		_ = ln.Close()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go handleLine(conn)
	}
}

// handleLine answers each line: PING with PONG, anything else echoed.
func handleLine(conn net.Conn) {
	defer conn.Close()
	sc := bufio.NewScanner(conn)
	for {
		_ = conn.SetDeadline(time.Now().Add(time.Minute))
		if !sc.Scan() {
			return
		}
		line := strings.TrimRight(sc.Text(), "\r")
		if line == "PING" {
			line = "PONG"
		}
		if _, err := conn.Write([]byte(line + "\n")); err != nil {
			return
		}
	}
}
