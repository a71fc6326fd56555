package testrig

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Engine is an extra Docker engine on this machine, a test "host": its
// own data-root, exec-root, pid file and socket, an empty --config-file
// (the system daemon.json sets data-root), a bridge of its own created
// beforehand (never --bridge none in the host's namespace: dockerd then
// deletes the system engine's docker0), no iptables, and its published
// ports on a loopback address of its own, which is the host's address.
type Engine struct {
	Name    string
	Dir     string
	Socket  string
	Address string
	Bridge  string
	cidr    string
	cmd     *exec.Cmd
	t       testing.TB
	// bridged: this engine created its bridge (and so removes it).
	bridged bool
	// TLS, when set, also serves the API on TCPURL with --tlsverify:
	// CA signed the engine's certificate and the client's (Cert, Key).
	TLS    *EngineTLS
	TCPURL string
}

// EngineTLS are a TLS engine's client files.
type EngineTLS struct {
	CA, Cert, Key string
	server        [2]string // the engine's certificate and key
}

// URL is the engine's Docker URL.
func (e *Engine) URL() string { return "unix://" + e.Socket }

// StartEngines starts n engines and stops each by its own pid when the
// test ends, removing its state, mounts and bridge; it then checks that
// the system engine's docker0 still exists. They need root (bridges);
// with CI=true failing to start them fails the test.
func StartEngines(t testing.TB, n int) []*Engine {
	t.Helper()
	return startEngines(t, n, false)
}

// StartTLSEngine starts one engine that also serves its API over TCP
// with TLS (--tlsverify) on its loopback address, port 2376: a remote
// host as Docker's guide protects one.
func StartTLSEngine(t testing.TB) *Engine {
	t.Helper()
	return startEngines(t, 1, true)[0]
}

func startEngines(t testing.TB, n int, withTLS bool) []*Engine {
	t.Helper()
	Docker(t)
	_, err := exec.LookPath("dockerd")
	Require(t, err == nil && os.Geteuid() == 0, "an extra dockerd (a test host)", "run as root on a machine with dockerd and iproute2")
	id := make([]byte, 2)
	_, _ = rand.Read(id)
	tag := hex.EncodeToString(id)
	var out []*Engine
	if exec.Command("ip", "link", "show", "docker0").Run() == nil {
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "link", "show", "docker0").CombinedOutput(); err != nil {
				t.Errorf("the system engine's docker0 is gone after the test engines: %v: %s", err, out)
			}
		})
	}
	for i := 1; i <= n; i++ {
		dir, err := os.MkdirTemp("", "berth-engine-")
		if err != nil {
			t.Fatal(err)
		}
		e := &Engine{Name: fmt.Sprintf("h%d", i), Dir: dir, Socket: filepath.Join(dir, "docker.sock"), Bridge: fmt.Sprintf("bt%s%d", tag, i), t: t}
		// 127.<1..254>.<rand>.<i>: a loopback address no other test uses.
		e.Address = fmt.Sprintf("127.%d.%d.%d", 100+int(id[0])%100, id[1], i)
		// 198.18.0.0/15 is for benchmarks (RFC 2544): no real network uses it.
		e.cidr = fmt.Sprintf("198.%d.%d.1/24", 18+int(id[0])%2, (int(id[1])+i)%250+1)
		t.Cleanup(e.cleanup)
		if withTLS {
			e.TLS = writeEngineTLS(t, dir, e.Address)
			e.TCPURL = "tcp://" + e.Address + ":2376"
		}
		if err := e.setup(); err != nil {
			Require(t, false, "an extra dockerd (a test host)", err.Error())
		}
		out = append(out, e)
	}
	return out
}

func (e *Engine) setup() error {
	if err := os.WriteFile(filepath.Join(e.Dir, "daemon.json"), []byte("{}\n"), 0o644); err != nil {
		return err
	}
	for i, args := range [][]string{{"link", "add", e.Bridge, "type", "bridge"}, {"addr", "add", e.cidr, "dev", e.Bridge}, {"link", "set", e.Bridge, "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		if i == 0 {
			e.bridged = true
		}
	}
	return e.Start()
}

// Start starts (or starts again) the engine's dockerd and waits for it.
func (e *Engine) Start() error {
	log, err := os.OpenFile(filepath.Join(e.Dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("dockerd", "--data-root", filepath.Join(e.Dir, "data"), "--exec-root", filepath.Join(e.Dir, "exec"),
		"--pidfile", filepath.Join(e.Dir, "docker.pid"), "--host", e.URL(), "--config-file", filepath.Join(e.Dir, "daemon.json"),
		"--bridge", e.Bridge, "--iptables=false", "--ip-masq=false", "--ip", e.Address)
	if e.TLS != nil {
		cmd.Args = append(cmd.Args, "--host", e.TCPURL, "--tlsverify", "--tlscacert", e.TLS.CA,
			"--tlscert", e.TLS.server[0], "--tlskey", e.TLS.server[1])
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start dockerd: %w", err)
	}
	e.cmd = cmd
	go func() { _ = cmd.Wait(); log.Close() }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if exec.Command("docker", "-H", e.URL(), "version").Run() == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(filepath.Join(e.Dir, "dockerd.log"))
	return fmt.Errorf("dockerd %s did not answer within 30s: %s", e.Name, tail(string(b), 2000))
}

// Kill SIGKILLs the engine's dockerd and its containerd, its process
// group (the containers' shims, in sessions of their own, keep them
// running, as on a host whose engine crashed).
func (e *Engine) Kill() {
	if e.cmd != nil && e.cmd.Process != nil {
		_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
		for range 100 {
			if e.cmd.ProcessState != nil || syscall.Kill(e.cmd.Process.Pid, 0) != nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Load copies an image of the system engine into this one.
func (e *Engine) Load(image string) error {
	cmd := exec.Command("sh", "-c", "docker save "+image+" | docker -H "+e.URL()+" load")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("load %s into %s: %v: %s", image, e.Name, err, out)
	}
	return nil
}

// cleanup stops the engine by its own pid, then whatever it left running
// (containerd, shims, docker-proxy: anything started from its dirs),
// unmounts what is under its dirs, and removes them and its bridge.
func (e *Engine) cleanup() {
	if e.cmd != nil && e.cmd.Process != nil {
		pid := e.cmd.Process.Pid
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for i := 0; i < 200 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	killUnder(e.Dir)
	unmountUnder(e.Dir)
	_ = os.RemoveAll(e.Dir)
	if e.bridged {
		_ = exec.Command("ip", "link", "del", e.Bridge).Run()
	}
}

// killUnder kills every dockerd, containerd, shim or proxy whose command
// line names a path inside dir (dir/…, never another dir sharing its
// prefix).
func killUnder(dir string) {
	dir = strings.TrimSuffix(dir, "/") + "/"
	entries, _ := os.ReadDir("/proc")
	for _, en := range entries {
		pid, err := strconv.Atoi(en.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", en.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), dir) {
			continue
		}
		exe := filepath.Base(strings.SplitN(string(b), "\x00", 2)[0])
		if strings.HasPrefix(exe, "dockerd") || strings.HasPrefix(exe, "containerd") || strings.HasPrefix(exe, "docker-proxy") || strings.HasPrefix(exe, "runc") {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(dir string) {
	dir = strings.TrimSuffix(dir, "/") + "/"
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return
	}
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 && strings.HasPrefix(fields[1], dir) {
			points = append(points, fields[1])
		}
	}
	f.Close()
	for i := len(points) - 1; i >= 0; i-- {
		_ = syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}

// writeEngineTLS writes a CA, the engine's certificate for its address,
// and a client certificate, as Docker's "Protect the Docker daemon
// socket" guide makes them.
func writeEngineTLS(t testing.TB, dir, address string) *EngineTLS {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "berth test Docker CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, leaf *x509.Certificate, name string) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		leaf.SerialNumber, leaf.NotBefore, leaf.NotAfter = big.NewInt(serial), time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, key.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, _ := x509.MarshalECPrivateKey(key)
		certFile, keyFile := filepath.Join(dir, name+"-cert.pem"), filepath.Join(dir, name+"-key.pem")
		if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
			t.Fatal(err)
		}
		return certFile, keyFile
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey := issue(2, &x509.Certificate{Subject: pkix.Name{CommonName: address}, IPAddresses: []net.IP{net.ParseIP(address)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, "server")
	cliCert, cliKey := issue(3, &x509.Certificate{Subject: pkix.Name{CommonName: "berth scheduler"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, "client")
	return &EngineTLS{CA: caFile, Cert: cliCert, Key: cliKey, server: [2]string{srvCert, srvKey}}
}
