package render

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/templates"
	"github.com/stretchr/testify/require"
)

// TestTakeoversNotRendered: the audit's takeovers of another app's host,
// as records that reached lbagent past the API, render nothing of the
// attacker on that host, each reported as a conflict; a real nginx
// answers every request for the host with the owner's content, over
// plain HTTP, with no redirect and no certificate of the attacker's.
func TestTakeoversNotRendered(t *testing.T) {
	t.Parallel()
	certs := certDir(t)
	bankAddr, evilAddr := backend(t, "bank"), backend(t, "evil")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	bank := func(shares ...spec.Share) state.App {
		a := app("bank", 0, "bank.test")
		a.Spec.CreatedAt = t0.Add(time.Hour) // created after evil: the claim of the host decides
		a.Spec.HostClaims = map[string]time.Time{"bank.test": t0.Add(time.Hour)}
		a.Spec.Routing.Paths = []string{"/", "/login"}
		a.Spec.Routing.ShareWith = shares
		a.Servers = []state.Server{{Instance: "b", Address: bankAddr, Weight: 1}}
		return a
	}
	evil := func(hosts []string, r spec.Routing) state.App {
		a := app("evil", 0, hosts...)
		a.Spec.CreatedAt = t0
		a.Spec.HostClaims = map[string]time.Time{"evil.test": t0}
		for _, h := range hosts {
			if h != "evil.test" {
				a.Spec.HostClaims[h] = t0.Add(2 * time.Hour)
			}
		}
		a.Spec.Routing.Paths, a.Spec.Routing.Rules, a.Spec.Routing.TLS = r.Paths, r.Rules, r.TLS
		a.Servers = []state.Server{{Instance: "e", Address: evilAddr, Weight: 1}}
		return a
	}
	files := &spec.TLS{Certificate: certs + "/web.crt", Key: certs + "/web.key", RedirectHTTP: true}
	regex := []spec.Rule{{Path: "^/", Match: spec.MatchRegex}}
	cookie := []spec.Rule{{Path: "/", Headers: map[string]string{"Cookie": "~."}}}
	bankOnly := []string{"bank.test"}
	tests := []struct {
		name     string
		apps     []state.App
		conflict string
	}{
		{"regex", []state.App{bank(), evil(bankOnly, spec.Routing{Rules: regex})}, "host bank.test belongs to app bank"},
		{"header", []state.App{bank(), evil(bankOnly, spec.Routing{Rules: cookie})}, "host bank.test belongs to app bank"},
		{"tls", []state.App{bank(), evil(bankOnly, spec.Routing{Paths: []string{"/"}, TLS: files})}, "host bank.test belongs to app bank"},
		{"redirect", []state.App{bank(), evil([]string{"evil.test", "bank.test"}, spec.Routing{Paths: []string{"/x"}, TLS: files})}, "host bank.test belongs to app bank"},
		{"a member's regex", []state.App{bank(spec.Share{App: "evil"}), evil(bankOnly, spec.Routing{Rules: regex})}, "regex path ^/ on host bank.test would take requests for path / of app bank"},
		{"a member's cookie match", []state.App{bank(spec.Share{App: "evil"}), evil(bankOnly, spec.Routing{Rules: cookie})}, "path / with a header match on host bank.test would take requests for path / of app bank"},
		{"a member's tls", []state.App{bank(spec.Share{App: "evil"}), evil(bankOnly, spec.Routing{Paths: []string{"/x"}, TLS: files})}, "host bank.test belongs to app bank, which alone sets its TLS"},
	}
	r, err := Load(templates.FS)
	require.NoError(t, err)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := opts
			o.AccessLogSocket, o.Main = "", false
			o.HTTPListen = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
			o.HTTPSListen = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
			o.StatusListen = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
			d, conflicts := Layout(state.Snapshot{Apps: tc.apps}, 1, o)
			require.Contains(t, conflicts["evil"], tc.conflict)
			require.NotContains(t, conflicts, "bank")
			for _, srv := range d.Servers {
				if srv.Host != "bank.test" {
					continue
				}
				require.Nil(t, srv.TLS, "bank.test gets no certificate of evil's")
				require.False(t, srv.RedirectHTTP)
				for _, l := range srv.Locations {
					require.Equal(t, "bank", l.App, "no location of evil's on bank.test")
				}
			}
			out, err := r.Render(d, false)
			require.NoError(t, err)
			ngx := testrig.NewNginx(t)
			ngx.WriteConfig(testrig.MainConfig(string(out)))
			ngx.Start()

			client := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			get := func(path string, header map[string]string) (int, string) {
				t.Helper()
				req, err := http.NewRequest(http.MethodGet, "http://"+o.HTTPListen+path, nil)
				require.NoError(t, err)
				req.Host = "bank.test"
				for k, v := range header {
					req.Header.Set(k, v)
				}
				var resp *http.Response
				require.Eventually(t, func() bool { resp, err = client.Do(req); return err == nil }, 5*time.Second, 20*time.Millisecond)
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				require.NoError(t, err)
				return resp.StatusCode, string(b)
			}
			for _, req := range []struct {
				path   string
				header map[string]string
			}{{"/", nil}, {"/account", nil}, {"/login/x", nil}, {"/", map[string]string{"Cookie": "sid=1"}}, {"/x", nil}} {
				code, body := get(req.path, req.header)
				require.Equal(t, http.StatusOK, code, "%s %v", req.path, req.header)
				require.Equal(t, "bank", body, "%s %v: the owner's content", req.path, req.header)
			}
			// Over HTTPS, bank.test is nobody's: no handshake ends with a
			// certificate of evil's for it.
			conn, err := tls.Dial("tcp", o.HTTPSListen, &tls.Config{ServerName: "bank.test", InsecureSkipVerify: true}) //nolint:gosec // which certificate is served is the question
			if err == nil {
				names := conn.ConnectionState().PeerCertificates[0].DNSNames
				conn.Close()
				require.NotContains(t, strings.Join(names, ","), "bank.test")
				t.Fatalf("bank.test completed a TLS handshake with %v", names)
			}
		})
	}
}
