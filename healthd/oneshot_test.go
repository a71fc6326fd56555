package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseProbe(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		arg     string
		typ     string
		addr    string
		path    string
		tls     bool
		wantErr string
	}{
		{name: "host:port uses the flags", arg: "127.0.0.1:8080", typ: "tcp", addr: "127.0.0.1:8080", path: "/flag"},
		{name: "name:port", arg: "web.internal:80", typ: "http", addr: "web.internal:80", path: "/flag"},
		{name: "ipv6 host:port", arg: "[::1]:80", typ: "http", addr: "[::1]:80", path: "/flag"},
		{name: "http url with path", arg: "http://127.0.0.1:18777/healthz", typ: "http", addr: "127.0.0.1:18777", path: "/healthz"},
		{name: "http url root", arg: "http://127.0.0.1:18777/", typ: "http", addr: "127.0.0.1:18777", path: "/"},
		{name: "http url without path", arg: "http://127.0.0.1:18777", typ: "http", addr: "127.0.0.1:18777", path: "/"},
		{name: "http default port", arg: "http://web.internal/ready", typ: "http", addr: "web.internal:80", path: "/ready"},
		{name: "https default port", arg: "https://web.internal/", typ: "http", addr: "web.internal:443", path: "/", tls: true},
		{name: "https ipv6", arg: "https://[::1]:8443/h", typ: "http", addr: "[::1]:8443", path: "/h", tls: true},
		{name: "escaped path kept", arg: "http://h:1/a%20b", typ: "http", addr: "h:1", path: "/a%20b"},
		{name: "tcp url", arg: "tcp://10.0.0.5:6379", typ: "tcp", addr: "10.0.0.5:6379"},
		{name: "tcp url with slash", arg: "tcp://10.0.0.5:6379/", typ: "tcp", addr: "10.0.0.5:6379"},
		{name: "tcp needs a port", arg: "tcp://10.0.0.5", wantErr: "a tcp:// URL needs a port"},
		{name: "tcp has no path", arg: "tcp://10.0.0.5:1/x", wantErr: "a tcp:// URL has no path"},
		{name: "other scheme", arg: "ftp://h:21/", wantErr: `scheme "ftp" is not http, https or tcp`},
		{name: "bare host", arg: "localhost", wantErr: "not an address or a URL"},
		{name: "missing file", arg: "targets.json", wantErr: "not an address or a URL"},
		{name: "port out of range", arg: "http://h:70000/", wantErr: "host or port is not valid"},
		{name: "bad host:port port", arg: "h:http", wantErr: "not an address or a URL"},
		{name: "query", arg: "http://h:1/x?a=b", wantErr: "user info, a query or a fragment"},
		{name: "user info", arg: "http://u:p@h:1/", wantErr: "user info, a query or a fragment"},
		{name: "empty", arg: "", wantErr: "not an address or a URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			typ, addr, path, tls, err := parseProbe(tt.arg, tt.typ, "/flag")
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.ErrorContains(t, err, "--probe "+`"`+tt.arg+`"`, "the error names the flag and the value")
				require.ErrorContains(t, err, "want host:port, http://host[:port][/path], https://host[:port][/path], tcp://host:port, or a JSON file of targets")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.typ, typ)
			require.Equal(t, tt.addr, addr)
			require.Equal(t, tt.path, path)
			require.Equal(t, tt.tls, tls)
		})
	}
}

// TestProbeModeURLs runs healthd --probe with URLs against real servers:
// the URL's scheme, address and path are what is probed.
func TestProbeModeURLs(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	plain := httptest.NewServer(mux) // anything else: 404
	t.Cleanup(plain.Close)
	secure := httptest.NewTLSServer(mux)
	t.Cleanup(secure.Close)
	host := strings.TrimPrefix(plain.URL, "http://")

	tests := []struct {
		name   string
		args   []string
		code   int
		output string
	}{
		{name: "http url with its path", args: []string{"--probe", plain.URL + "/ready"}, code: 0, output: " ok "},
		{name: "the url's path wins over --probe-path", args: []string{"--probe", plain.URL + "/ready", "--probe-path", "/nope"}, code: 0, output: " ok "},
		{name: "http url root is probed at /", args: []string{"--probe", plain.URL + "/"}, code: 1, output: "FAIL http_status"},
		{name: "https url speaks TLS", args: []string{"--probe", secure.URL + "/ready"}, code: 1, output: "FAIL tls"},
		{name: "tcp url", args: []string{"--probe", "tcp://" + host}, code: 0, output: " ok "},
		{name: "tcp url refused", args: []string{"--probe", "tcp://127.0.0.1:1"}, code: 1, output: "FAIL connection_refused"},
		{name: "host:port still works", args: []string{"--probe", host, "--probe-path", "/ready"}, code: 0, output: " ok "},
		{name: "unknown form", args: []string{"--probe", "ftp://" + host + "/"}, code: 2, output: `--probe "ftp://`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, err := os.Create(filepath.Join(t.TempDir(), "out"))
			require.NoError(t, err)
			defer out.Close()
			code := run(append(tt.args, "--probe-timeout", "2s"), out, out)
			b, err := os.ReadFile(out.Name())
			require.NoError(t, err)
			require.Equal(t, tt.code, code, string(b))
			require.Contains(t, string(b), tt.output)
		})
	}
}

// TestProbeFileResolvesSecrets: a targets file resolves "$env:BERTH_PROBE_…"
// references from healthd's environment, as the running daemon does; a
// variable outside that prefix is never read.
func TestProbeFileResolvesSecrets(t *testing.T) {
	t.Setenv("BERTH_PROBE_WEB__ONESHOT_AUTH", "Bearer s3cret")
	t.Setenv("BERTH_PROBE_WEB__ONESHOT_BODY", `{"ping":1}`)
	file := filepath.Join(t.TempDir(), "targets.json")
	require.NoError(t, os.WriteFile(file, []byte(`[{"key":"web.a","address":"127.0.0.1:1","check":{"type":"http","path":"/","method":"POST",
		"headers":{"Authorization":"$env:BERTH_PROBE_WEB__ONESHOT_AUTH","X-Home":"$env:HOME","X-Gone":"$env:BERTH_PROBE_WEB__ONESHOT_UNSET"},
		"body":"$env:BERTH_PROBE_WEB__ONESHOT_BODY"}}]`), 0o600))
	c := &cli{Probe: file}
	ts, err := c.probeTargets()
	require.NoError(t, err)
	require.Len(t, ts, 1)
	require.Equal(t, map[string]string{"Authorization": "Bearer s3cret", "X-Home": "$env:HOME"}, ts[0].Check.Headers,
		"a reference is resolved, an unset one leaves its header out, and HOME is no reference")
	require.Equal(t, `{"ping":1}`, ts[0].Check.Body)
}
