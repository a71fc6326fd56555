package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
)

// acmeValidity is how long Pebble's certificates last in TestACME: 30
// days and 40 s, so that with the default --acme-renew-before (30 days)
// each falls due for renewal 40 s after it is issued.
const acmeValidity = 30*24*time.Hour + 40*time.Second

// TestACME runs the whole certificate path against Pebble, Let's
// Encrypt's test CA, whose HTTP-01 validation reaches nginx's HTTP
// listener: the scheduler leader orders a certificate for an app with
// tls.acme, lbagent answers the challenge and then serves HTTPS with the
// issued certificate (verified against Pebble's root), plain HTTP
// redirects; the certificate is renewed when it falls due; and an app
// whose challenge cannot pass gets a certificate_failed event that says
// why and when next, and keeps serving over HTTP. Default flags.
func TestACME(t *testing.T) {
	t.Parallel() // mostly waiting (see TestMain): runs beside the other waiting tests, after the ones that load the machine
	img := testrig.DemoImage(t, "v1")
	s := newStackMode(t, "", "dynamic")
	_, port, _ := net.SplitHostPort(s.httpAddr)
	var httpPort int
	fmt.Sscan(port, &httpPort)
	pebble := testrig.StartPebble(t, httpPort, acmeValidity)

	keyFile := filepath.Join(s.dir, "cert.key")
	require.NoError(t, os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))+"\n"), 0o600))
	s.startScheduler("sched-a", "--acme-directory", pebble.Directory, "--acme-ca-file", pebble.CAFile,
		"--acme-email", "ops@berth.test", "--cert-key-file", keyFile)
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	s.startLBAgent()

	const host, multi, broken = "secure.berth.test", "multi.berth.test", "unreachable.berth.test"
	spec := func(name, host string) string {
		sp := strings.Replace(demoSpec(t, img, 2, ""), "name: demo\n", "name: "+name+"\n", 1)
		return strings.Replace(sp, "hosts: [demo.localhost]", "hosts: ["+host+"]\n  tls: {acme: true, redirect_http: true}", 1)
	}
	// Three apps at once, so that the waits below overlap: secure's
	// renewal (40 s after issuance), multi's new hosts (a hosts change
	// orders at most once a minute after the last issuance) and broken's
	// failing challenge (its name resolves where nothing listens).
	pebble.AddA(t, broken, "127.0.0.2")
	s.apply(spec("secure", host))
	s.apply(spec("multi", multi))
	s.apply(spec("broken", broken))

	issued := s.waitAPIEvent("secure", msg.EventCertificateIssued, 90*time.Second)
	t.Logf("issued: %s", issued.Message)
	roots := pebble.Roots(t)
	var first *x509.Certificate
	require.Eventually(t, func() bool {
		first = s.httpsGet(host, roots)
		return first != nil
	}, 30*time.Second, 100*time.Millisecond, "HTTPS is served with the issued certificate, verified against Pebble's root")
	require.Equal(t, issued.Details["serial"], first.SerialNumber.Text(16))

	// Plain HTTP redirects, except for the CA's challenges, on every new
	// connection once the worker the reload retired stops accepting.
	s.nginxSettled()
	code, loc := s.plainGet(host, "/")
	require.Equal(t, http.StatusPermanentRedirect, code)
	require.Equal(t, "https://"+host+"/", loc)
	code, _ = s.plainGet(host, "/.well-known/acme-challenge/not-a-token-at-all")
	require.Equal(t, http.StatusNotFound, code, "challenge paths reach lbagent, which knows no such token")

	// The key is encrypted at rest, and no NATS reader can open it.
	conn, err := pgx.Connect(context.Background(), s.db)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var stored []byte
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT key FROM certificates WHERE app = 'secure'`).Scan(&stored))
	require.NotContains(t, string(stored), "PRIVATE KEY")
	kv, err := s.conn.KV(context.Background(), s.names.CertificatesBucket())
	require.NoError(t, err)
	entry, err := kv.Get(context.Background(), "secure")
	require.NoError(t, err)
	published, err := msg.DecodeAs[*msg.Certificate](entry.Value)
	require.NoError(t, err)
	_, err = s.conn.OpenSealed(published.Keys)
	require.Error(t, err, "the reader role cannot open the key")
	require.NotContains(t, string(entry.Value), "PRIVATE KEY")

	// Under HTTPS load from clients that never retry: secure's renewal
	// (its certificate falls due 40 s after issuance, with the default
	// --acme-renew-before), and multi's new certificate once a host is
	// added, each served once issued; no request fails across the swaps.
	s.waitAPIEvent("multi", msg.EventCertificateIssued, 90*time.Second)
	https := func(h string) *loadgen.Run {
		return loadgen.Start(context.Background(), loadgen.Config{URL: "https://" + h + "/", Addr: s.httpsAddr, Workers: 2, NoRetry: true,
			Rate: 100, TLS: &tls.Config{RootCAs: roots, ServerName: h}})
	}
	require.Eventually(t, func() bool { return s.httpsGet(multi, roots) != nil }, 30*time.Second, 100*time.Millisecond, "multi is served over HTTPS")
	// The load's first connections must not reach the worker of the config
	// before the certificate, which has no HTTPS server for multi.
	s.nginxSettled()
	loads := map[string]*loadgen.Run{host: https(host), multi: https(multi)}
	s.apply(strings.Replace(spec("multi", multi), "hosts: ["+multi+"]", "hosts: ["+multi+", www."+multi+"]", 1))
	served := func(h, serial string) {
		t.Helper()
		require.Eventually(t, func() bool {
			c := s.httpsGet(h, roots)
			return c != nil && c.SerialNumber.Text(16) == serial
		}, 30*time.Second, 100*time.Millisecond, "certificate %s is served for %s", serial, h)
	}
	renewed := s.waitAPIEvent("secure", msg.EventCertificateRenewed, 2*time.Minute)
	t.Logf("renewed: %s", renewed.Message)
	served(host, renewed.Details["serial"])
	var both eventView
	require.Eventually(t, func() bool {
		for _, e := range s.events("multi") {
			if e.Kind == msg.EventCertificateRenewed && e.Details["reason"] == "names" {
				both = e
				return true
			}
		}
		return false
	}, 2*time.Minute, 200*time.Millisecond, "a certificate for the new hosts")
	served(multi, both.Details["serial"])
	require.Eventually(t, func() bool { return s.httpsGet("www."+multi, roots) != nil }, 30*time.Second, 100*time.Millisecond, "the added host is served over HTTPS")
	for h, load := range loads {
		res := load.Stop()
		t.Logf("HTTPS load on %s across the renewal and the new hosts' certificate: %s", h, res)
		require.NoError(t, loadgen.Check(res), h)
	}

	// The challenge that cannot pass.
	failed := s.waitAPIEvent("broken", msg.EventCertificateFailed, 90*time.Second)
	t.Logf("failed: %s", failed.Message)
	require.Contains(t, failed.Message, "next attempt at")
	require.Contains(t, failed.Message, "served over plain HTTP until one is issued")
	require.Equal(t, "1", failed.Details["failures"])
	require.Eventually(t, func() bool {
		code, _ := s.plainGet(broken, "/")
		return code == http.StatusOK
	}, 60*time.Second, 100*time.Millisecond, "the app without a certificate serves over HTTP")
	// And the others are undisturbed.
	require.NotNil(t, s.httpsGet(host, roots))
	require.NotNil(t, s.httpsGet(multi, roots))
}

// waitAPIEvent waits for app's first event of kind and returns it.
func (s *stack) waitAPIEvent(app string, kind msg.EventKind, timeout time.Duration) eventView {
	s.t.Helper()
	var found eventView
	require.Eventually(s.t, func() bool {
		for _, e := range s.events(app) {
			if e.Kind == kind {
				found = e
				return true
			}
		}
		return false
	}, timeout, 200*time.Millisecond, "event %s of %s", kind, app)
	return found
}

// httpsGet asks nginx's HTTPS listener for host, trusting roots only, and
// returns the certificate it served, nil when the request failed.
func (s *stack) httpsGet(host string, roots *x509.CertPool) *x509.Certificate {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: host},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, s.httpsAddr)
		},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + host + "/")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK || resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		return nil
	}
	return resp.TLS.PeerCertificates[0]
}

// plainGet asks nginx's HTTP listener for host and path, without
// following redirects, and returns the status and Location.
func (s *stack) plainGet(host, path string) (int, string) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.httpAddr+path, nil)
	req.Host = host
	client := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("Location")
}
