package testrig

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Pebble is Let's Encrypt's test ACME CA, run for one test with its DNS
// answered by pebble-challtestsrv: every name resolves to 127.0.0.1
// (AddA sends one elsewhere), and HTTP-01 is validated on HTTPPort, the
// test's nginx listener. Both come from this module's tool dependencies
// (go.mod), built on first use.
type Pebble struct {
	// Directory is the ACME directory URL; CAFile the PEM certificate
	// its HTTPS listener is signed with (the scheduler's --acme-ca-file).
	Directory, CAFile string
	mgmt              string // pebble's management API
	dnsMgmt           string // challtestsrv's
	client            *http.Client
}

var (
	pebbleOnce sync.Once
	pebbleDir  string
	pebbleErr  error
)

// pebbleBinaries builds pebble and pebble-challtestsrv once per test binary.
func pebbleBinaries() (string, error) {
	pebbleOnce.Do(func() {
		pebbleDir, pebbleErr = os.MkdirTemp("", "berth-pebble-")
		if pebbleErr != nil {
			return
		}
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", pebbleDir+"/", "github.com/letsencrypt/pebble/v2/cmd/pebble", "github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv")
		cmd.Dir = filepath.Dir(file)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			pebbleErr = fmt.Errorf("build pebble: %v: %s", err, out)
		}
	})
	return pebbleDir, pebbleErr
}

// StartPebble runs Pebble and its DNS server until the test ends. Its
// certificates are valid for validity (0: 90 days), so that a test can
// have one fall due for renewal.
func StartPebble(t testing.TB, httpPort int, validity time.Duration) *Pebble {
	t.Helper()
	dir, err := pebbleBinaries()
	Require(t, err == nil, "pebble (the ACME test CA) did not build", fmt.Sprint(err, "; it is a tool of go.mod: the Go module proxy must be reachable"))
	if validity == 0 {
		validity = 90 * 24 * time.Hour
	}
	work := t.TempDir()
	caFile, certFile, keyFile := writeTestCA(t, work)
	dnsPort, dnsMgmt, listen, mgmt := FreePort(t), FreePort(t), FreePort(t), FreePort(t)
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress": fmt.Sprintf("127.0.0.1:%d", listen), "managementListenAddress": fmt.Sprintf("127.0.0.1:%d", mgmt),
		"certificate": certFile, "privateKey": keyFile, "httpPort": httpPort, "tlsPort": FreePort(t),
		"ocspResponderURL": "", "externalAccountBindingRequired": false, "keyAlgorithm": "ecdsa",
		"retryAfter": map[string]int{"authz": 1, "order": 1},
		"profiles":   map[string]any{"default": map[string]any{"description": "test", "validityPeriod": int64(validity / time.Second)}},
	}}
	b, _ := json.Marshal(conf)
	confFile := filepath.Join(work, "pebble.json")
	if err := os.WriteFile(confFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	start := func(name string, env []string, args ...string) {
		log, err := os.Create(filepath.Join(work, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(filepath.Join(dir, name), args...)
		cmd.Stdout, cmd.Stderr, cmd.Env = log, log, append(os.Environ(), env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			_ = log.Close()
			if t.Failed() {
				out, _ := os.ReadFile(log.Name())
				t.Logf("%s log:\n%s", name, tail(string(out), 4000))
			}
		})
	}
	start("pebble-challtestsrv", nil, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
		"-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort), "-management", fmt.Sprintf("127.0.0.1:%d", dnsMgmt))
	start("pebble", []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"},
		"-config", confFile, "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort))

	pool := x509.NewCertPool()
	pemCA, _ := os.ReadFile(caFile)
	pool.AppendCertsFromPEM(pemCA)
	p := &Pebble{Directory: fmt.Sprintf("https://127.0.0.1:%d/dir", listen), CAFile: caFile,
		mgmt: fmt.Sprintf("https://127.0.0.1:%d", mgmt), dnsMgmt: fmt.Sprintf("http://127.0.0.1:%d", dnsMgmt),
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := p.client.Get(p.Directory)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble did not answer at %s: %v", p.Directory, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// Roots returns the PEM root Pebble signs certificates under: what a
// client of a Berth-served HTTPS app must trust.
func (p *Pebble) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	resp, err := p.client.Get(p.mgmt + "/roots/0")
	if err != nil {
		t.Fatalf("pebble roots: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("pebble roots: no PEM in %q", b)
	}
	return pool
}

// AddA makes host resolve to ip for Pebble's validation.
func (p *Pebble) AddA(t testing.TB, host, ip string) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"host": host, "addresses": []string{ip}})
	resp, err := http.Post(p.dnsMgmt+"/add-a", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("challtestsrv add-a: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("challtestsrv add-a: status %d", resp.StatusCode)
	}
}

// writeTestCA writes a CA and a certificate it signs for 127.0.0.1 and
// localhost (Pebble's HTTPS listener), and returns the three files.
func writeTestCA(t testing.TB, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "berth test ACME directory CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for path, block := range map[string]*pem.Block{caFile: {Type: "CERTIFICATE", Bytes: caDER}, certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "EC PRIVATE KEY", Bytes: kd}} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caFile, certFile, keyFile
}
