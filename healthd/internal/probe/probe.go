// Package probe runs one health probe of one target, over HTTP or TCP, and
// classifies what went wrong. Probes are function types in a registry by
// check type; every probe is bounded by its context's deadline.
package probe

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
)

// Target is one instance to probe.
type Target struct {
	// Key is "<app>.<instance>".
	Key string
	// Address is host:port to probe.
	Address string
	// Check is the app's health check.
	Check spec.Health
	// Refused, when set, says why the target must not be reached (its
	// health port is not the instance's): the probe fails with it as a
	// protocol failure and connects nowhere.
	Refused string
}

// Result is the outcome of one probe.
type Result struct {
	// OK reports a pass.
	OK bool
	// Latency is how long the probe took, retries included.
	Latency time.Duration
	// Failure is one of the msg.Failure… kinds, empty on a pass.
	Failure string
	// Message says briefly what was seen ("status 503", "connection refused").
	Message string
}

// Func probes one target once. It must return by ctx's deadline.
type Func func(ctx context.Context, t Target) Result

// Registry maps a check type ("http", "tcp") to its probe.
type Registry map[string]Func

// MaxBody caps how much of an HTTP response body a probe reads.
const MaxBody = 64 << 10

// New returns the registry of Berth's probes. HTTP probes reuse
// connections, one idle connection per target: probing thousands of targets
// every second with a new connection each would exhaust ephemeral ports
// with sockets in TIME_WAIT. A pooled connection the target has closed is
// retried on a fresh one by the transport (probes are idempotent requests),
// so reuse cannot hide a dead instance: the request itself must succeed.
//
// resolver resolves target host names; nil means the system's.
func New(resolver *net.Resolver) Registry {
	dialer := &net.Dialer{KeepAlive: -1, Resolver: resolver}
	base := &http.Transport{
		DialContext:           dialer.DialContext,
		MaxIdleConnsPerHost:   1,
		MaxIdleConns:          100000,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // the context deadline bounds the whole probe
		DisableCompression:    true,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
	}
	insecure := base.Clone()
	insecure.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true} //nolint:gosec // per-check opt-in
	h := &httpProber{verify: base, skipVerify: insecure}
	tcp := &tcpProber{dialer: dialer}
	return Registry{spec.HealthHTTP: h.probe, spec.HealthTCP: tcp.probe}
}

// Probe runs t's check with up to Retries more attempts while ctx allows,
// and returns the last attempt's result with the total latency.
func (r Registry) Probe(ctx context.Context, t Target) Result {
	if t.Refused != "" {
		return Result{Failure: msg.FailureProtocol, Message: msg.Truncate(t.Refused, 300)}
	}
	f, ok := r[t.Check.Type]
	if !ok {
		return Result{Failure: msg.FailureProtocol, Message: fmt.Sprintf("no probe for check type %q", t.Check.Type)}
	}
	start := time.Now()
	var res Result
	for attempt := 0; attempt <= t.Check.Retries; attempt++ {
		res = f(ctx, t)
		if res.OK || ctx.Err() != nil {
			break
		}
	}
	res.Latency = time.Since(start)
	return slow(res, t.Check)
}

// slow turns a pass of an http or tcp check that took longer than its
// max_response_time into a failure of kind slow, with the time measured.
func slow(res Result, c spec.Health) Result {
	limit := c.MaxResponseTime.Std()
	if !res.OK || limit <= 0 || res.Latency <= limit || (c.Type != spec.HealthHTTP && c.Type != spec.HealthTCP) {
		return res
	}
	return Result{Latency: res.Latency, Failure: msg.FailureSlow,
		Message: fmt.Sprintf("slow: answered in %s, max_response_time %s", roundLatency(res.Latency), c.MaxResponseTime)}
}

// roundLatency rounds d for a message: to the millisecond from 10 ms, to
// 10 µs below (a 1 ms max_response_time needs the digits).
func roundLatency(d time.Duration) time.Duration {
	if d >= 10*time.Millisecond {
		return d.Round(time.Millisecond)
	}
	return d.Round(10 * time.Microsecond)
}

type httpProber struct {
	verify, skipVerify *http.Transport
}

// maxRedirects caps the redirects one probe follows.
const maxRedirects = 5

// sameHostRedirects follows a redirect only to the host and port the probe
// started at, at most maxRedirects times: a redirect elsewhere would let
// the app point healthd at any address (its metadata service, NATS on
// healthd's loopback), and a check answers for the instance only.
func sameHostRedirects(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	if req.URL.Host != via[0].URL.Host {
		return fmt.Errorf("redirect to another host (%s) not followed", msg.Truncate(req.URL.Host, 100))
	}
	return nil
}

func (p *httpProber) probe(ctx context.Context, t Target) Result {
	scheme, transport := "http", p.verify
	if t.Check.TLS {
		scheme = "https"
		if t.Check.TLSSkipVerify {
			transport = p.skipVerify
		}
	}
	var body io.Reader
	if t.Check.Body != "" {
		body = strings.NewReader(t.Check.Body)
	}
	req, err := http.NewRequestWithContext(ctx, t.Check.Method, scheme+"://"+t.Address+t.Check.Path, body)
	if err != nil {
		return Result{Failure: msg.FailureProtocol, Message: "bad request: " + err.Error()}
	}
	req.Header.Set("User-Agent", "berth-healthd/1")
	for k, v := range t.Check.Headers {
		req.Header.Set(k, v)
	}
	client := &http.Client{Transport: transport}
	if !t.Check.FollowRedirects {
		client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	} else {
		client.CheckRedirect = sameHostRedirects
	}
	resp, err := client.Do(req)
	if err != nil {
		return classify(ctx, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
	if err != nil {
		return classify(ctx, err)
	}
	if !t.Check.ExpectedStatus.Contains(resp.StatusCode) {
		return Result{Failure: msg.FailureHTTPStatus, Message: fmt.Sprintf("status %d, want %s", resp.StatusCode, t.Check.ExpectedStatus)}
	}
	if t.Check.ExpectedBody != "" && !bytes.Contains(data, []byte(t.Check.ExpectedBody)) {
		return Result{Failure: msg.FailureBodyMismatch, Message: fmt.Sprintf("body does not contain %q", msg.Truncate(t.Check.ExpectedBody, 200))}
	}
	return Result{OK: true}
}

type tcpProber struct {
	dialer *net.Dialer
}

func (p *tcpProber) probe(ctx context.Context, t Target) Result {
	conn, err := p.dialer.DialContext(ctx, "tcp", t.Address)
	if err != nil {
		return classify(ctx, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if t.Check.Send != "" {
		if _, err := io.WriteString(conn, t.Check.Send); err != nil {
			return classify(ctx, err)
		}
	}
	if t.Check.Expect == "" {
		return Result{OK: true}
	}
	rd := bufio.NewReader(io.LimitReader(conn, MaxBody))
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(got, []byte(t.Check.Expect)) {
		n, err := rd.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return Result{Failure: msg.FailureBodyMismatch, Message: fmt.Sprintf("peer closed without %q", msg.Truncate(t.Check.Expect, 200))}
			}
			return classify(ctx, err)
		}
	}
	return Result{OK: true}
}

// classify turns a transport error into a failure kind and a short message.
func classify(ctx context.Context, err error) Result {
	var (
		dnsErr   *net.DNSError
		certErr  *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		invalid  x509.CertificateInvalidError
		recErr   tls.RecordHeaderError
		alertErr tls.AlertError
		netErr   net.Error
	)
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout():
		return Result{Failure: msg.FailureTimeout, Message: "timed out"}
	case errors.Is(err, syscall.ECONNREFUSED):
		return Result{Failure: msg.FailureConnectionRefused, Message: "connection refused"}
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return Result{Failure: msg.FailureConnectionReset, Message: "connection reset or closed"}
	case errors.As(err, &dnsErr):
		return Result{Failure: msg.FailureDNS, Message: "dns: " + msg.Truncate(dnsErr.Err, 200)}
	case errors.As(err, &certErr) || errors.As(err, &unknown) || errors.As(err, &hostErr) || errors.As(err, &invalid) ||
		errors.As(err, &recErr) || errors.As(err, &alertErr) || strings.Contains(err.Error(), "tls: "):
		return Result{Failure: msg.FailureTLS, Message: "tls: " + msg.Truncate(err.Error(), 200)}
	}
	return Result{Failure: msg.FailureProtocol, Message: msg.Truncate(err.Error(), 200)}
}
