package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestConfigFromEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		want    config
		wantErr string
	}{
		{name: "defaults", env: map[string]string{"DEMO_INSTANCE": "i1"},
			want: config{Listen: ":8080", Version: version, Instance: "i1", Mode: "http", Healthy: true, LineBytes: 100}},
		{name: "berth instance", env: map[string]string{"BERTH_INSTANCE": "b7", "DEMO_VERSION": "v2", "DEMO_LATENCY": "5ms", "DEMO_HEALTH": "fail", "DEMO_MODE": "tcp", "DEMO_LISTEN": "127.0.0.1:0"},
			want: config{Listen: "127.0.0.1:0", Version: "v2", Instance: "b7", Mode: "tcp", Latency: 5 * time.Millisecond, LineBytes: 100}},
		{name: "bad latency", env: map[string]string{"DEMO_LATENCY": "soon"}, wantErr: `DEMO_LATENCY "soon": must be a non-negative Go duration such as 50ms`},
		{name: "bad mode", env: map[string]string{"DEMO_MODE": "udp"}, wantErr: `DEMO_MODE "udp": must be http, tcp or log`},
		{name: "log lines", env: map[string]string{"DEMO_INSTANCE": "i1", "DEMO_MODE": "log", "DEMO_LOG_LINES": "5", "DEMO_ACCESS_LOG": "1"},
			want: config{Listen: ":8080", Version: version, Instance: "i1", Mode: "log", Healthy: true, LogLines: 5, LineBytes: 100, AccessLog: true}},
		{name: "bad line bytes", env: map[string]string{"DEMO_LOG_LINE_BYTES": "10"}, wantErr: `DEMO_LOG_LINE_BYTES "10": must be a whole number from 60 to 1048576`},
		{name: "bad log lines", env: map[string]string{"DEMO_LOG_LINES": "-1"}, wantErr: `DEMO_LOG_LINES "-1": must be a whole number from 0 to 100000000`},
		{name: "bad health", env: map[string]string{"DEMO_HEALTH": "meh"}, wantErr: `DEMO_HEALTH "meh": must be ok or fail`},
		{name: "exit and alloc", env: map[string]string{"DEMO_INSTANCE": "i1", "DEMO_EXIT": "3", "DEMO_ALLOC": "64"},
			want: config{Listen: ":8080", Version: version, Instance: "i1", Mode: "http", Healthy: true, Exit: 3, AllocMiB: 64, LineBytes: 100}},
		{name: "bad exit", env: map[string]string{"DEMO_EXIT": "0"}, wantErr: `DEMO_EXIT "0": must be an exit code from 1 to 125`},
		{name: "bad alloc", env: map[string]string{"DEMO_ALLOC": "lots"}, wantErr: `DEMO_ALLOC "lots": must be a size in MiB from 1 to 4096`},
		{name: "fail percent", env: map[string]string{"DEMO_INSTANCE": "i1", "DEMO_FAIL_PERCENT": "40"},
			want: config{Listen: ":8080", Version: version, Instance: "i1", Mode: "http", Healthy: true, LineBytes: 100, FailPercent: 40}},
		{name: "bad fail percent", env: map[string]string{"DEMO_FAIL_PERCENT": "101"}, wantErr: `DEMO_FAIL_PERCENT "101": must be a whole number from 0 to 100`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := configFromEnv(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestHandler(t *testing.T) {
	t.Parallel()
	a := newApp(config{Instance: "i1", Version: "v9", Healthy: true})
	srv := httptest.NewServer(a.handler())
	defer srv.Close()

	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	post := func(path string) int {
		resp, err := http.Post(srv.URL+path, "text/plain", nil)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}

	code, body := get("/")
	require.Equal(t, 200, code)
	var r Reply
	require.NoError(t, json.Unmarshal([]byte(body), &r))
	require.Equal(t, "i1", r.Instance)
	require.Equal(t, "v9", r.Version)

	code, _ = get("/healthz")
	require.Equal(t, 200, code)
	require.Equal(t, 204, post("/admin/health?state=fail"))
	code, _ = get("/healthz")
	require.Equal(t, 503, code)
	require.Equal(t, 204, post("/admin/health?state=ok"))
	code, _ = get("/healthz")
	require.Equal(t, 200, code)
	require.Equal(t, 400, post("/admin/health?state=maybe"))

	require.Equal(t, 204, post("/admin/latency?d=50ms"))
	start := time.Now()
	code, _ = get("/")
	require.Equal(t, 200, code)
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)
	require.Equal(t, 400, post("/admin/latency?d=-1s"))

	code, body = get("/slow?d=1ms")
	require.Equal(t, 200, code)
	require.Contains(t, body, "slept 1ms on i1")
	code, _ = get("/nope")
	require.Equal(t, 404, code)
}

func TestServeTCP(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveTCP(ctx, ln) }()

	conn, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	rd := bufio.NewReader(conn)
	for _, tc := range []struct{ send, want string }{{"PING\n", "PONG\n"}, {"hello\r\n", "hello\n"}} {
		_, err = conn.Write([]byte(tc.send))
		require.NoError(t, err)
		line, err := rd.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, tc.want, line)
	}
	cancel()
	require.NoError(t, <-done)
}

func TestServeHTTPGracefulStop(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	a := newApp(config{Instance: "g", Healthy: true})
	go func() { done <- serveHTTP(ctx, ln, a) }()

	// A request in flight when the stop begins still completes.
	result := make(chan int, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/slow?d=300ms")
		if err != nil {
			result <- -1
			return
		}
		resp.Body.Close()
		result <- resp.StatusCode
	}()
	require.Eventually(t, func() bool { return a.slow.Load() == 1 }, 10*time.Second, time.Millisecond, "the request is in its handler")
	cancel()
	require.Equal(t, 200, <-result)
	require.NoError(t, <-done)
}

func TestWriteLines(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	require.NoError(t, writeLines(&b, 3, 100, "i1"))
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	require.Len(t, lines, 3)
	require.Equal(t, 300, b.Len(), "100 bytes a line, newline included")
	require.True(t, strings.HasPrefix(lines[2], "line 3 of 3 from i1 xxx"), lines[2])
}

func TestAccessLog(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	h := logged((&app{instance: "i1"}).handler(), "i1", &b)
	for _, path := range []string{"/", "/healthz", "/nope"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", path, nil))
	}
	require.Equal(t, "GET / 200 instance=i1\nGET /healthz 503 instance=i1\nGET /nope 404 instance=i1\n", b.String())
}

func TestRelease(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		args   []string
		code   int
		stdout string
	}{
		{"succeeds", []string{"-lines", "2"}, 0, "release: migration step 1 of 2\nrelease: migration step 2 of 2\nrelease: done\n"},
		{"fails with a code", []string{"-lines", "1", "-exit", "3"}, 3, "release: migration step 1 of 1\nrelease: failed, exiting with code 3\n"},
		{"waits for a file that is there", []string{"-lines", "0", "-until", "main.go"}, 0, "release: done\n"},
		{"refuses a bad code", []string{"-exit", "300"}, 2, ""},
		{"refuses an unknown flag", []string{"-shell"}, 2, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out, errs strings.Builder
			require.Equal(t, tt.code, release(tt.args, &out, &errs), errs.String())
			require.Equal(t, tt.stdout, out.String())
		})
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	var code atomic.Int32
	code.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(int(code.Load())) }))
	defer srv.Close()
	var out strings.Builder
	require.Equal(t, 0, check([]string{srv.URL}, &out))
	require.Contains(t, out.String(), "200 OK")
	code.Store(http.StatusServiceUnavailable)
	out.Reset()
	require.Equal(t, 1, check([]string{srv.URL}, &out))
	require.Contains(t, out.String(), "503 Service Unavailable")
	out.Reset()
	require.Equal(t, 1, check([]string{"http://127.0.0.1:1/"}, &out), "refused")
	require.Equal(t, 2, check(nil, &out))
}

// TestFailPercent: DEMO_FAIL_PERCENT fails that share of GET /, evenly
// and the same every run, and never /healthz.
func TestFailPercent(t *testing.T) {
	t.Parallel()
	for _, p := range []int{0, 1, 40, 100} {
		t.Run(strconv.Itoa(p), func(t *testing.T) {
			t.Parallel()
			h := newApp(config{Instance: "i1", Healthy: true, FailPercent: p}).handler()
			failed := 0
			for i := range 100 {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
				if rec.Code == http.StatusInternalServerError {
					failed++
				} else {
					require.Equal(t, http.StatusOK, rec.Code)
				}
				if p == 40 && i < 5 {
					require.Equal(t, i == 2 || i == 4, rec.Code == http.StatusInternalServerError, "request %d", i)
				}
				rec = httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
				require.Equal(t, http.StatusOK, rec.Code)
			}
			require.Equal(t, p, failed)
		})
	}
	h := newApp(config{Instance: "i1", Healthy: true}).handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/admin/fail?percent=100", nil))
	require.Equal(t, http.StatusNoContent, rec.Code)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	require.Equal(t, http.StatusInternalServerError, rec.Code, "switched on at run time")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/admin/fail?percent=101", nil))
	require.Equal(t, http.StatusBadRequest, rec.Code)
}
