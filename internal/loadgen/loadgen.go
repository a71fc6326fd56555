// Package loadgen is the load generator of Berth's full-stack tests and
// benchmarks: a fixed number of workers send GET requests through nginx at
// a bounded total rate, and every response and every error is counted.
//
// Each worker keeps its connection alive. By default it behaves like a
// browser or any net/http client: net/http sends an idempotent request a
// second time, on a new connection, when the reused keep-alive connection it
// went out on turns out to have been closed by the server before it answered
// (RFC 9110 §9.2.2) — what happens when nginx closes idle keep-alive
// connections during a graceful reload. Such a request is counted in
// Result.Retried, not as a failure.
//
// With Config.NoRetry the generator behaves like wrk: no request is ever
// sent twice, so a request lost on a closed keep-alive connection is a
// failure (an error, also counted in Result.ReusedErrors). Everything else —
// a refused or reset fresh connection, a timeout, a non-2xx status — is a
// failure in both modes.
package loadgen

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config says what to load and how hard.
type Config struct {
	// URL is requested with GET, e.g. http://127.0.0.1:8080/.
	URL string
	// Host, when set, is sent as the Host header (nginx routes on it).
	Host string
	// Workers is the number of concurrent connections (default 4).
	Workers int
	// Rate caps the total requests per second; 0 means as fast as the
	// workers go. Tests keep it modest so that the load does not starve the
	// daemons under test of the machine's two cores.
	Rate float64
	// Timeout bounds one request (default 5s).
	Timeout time.Duration
	// NoRetry makes net/http never send a request a second time: a request
	// lost on a kept-alive connection the server closed is counted as an
	// error, as wrk counts it, instead of in Retried. Each GET then carries
	// an empty body of unknown length (see noRetryBody); on the wire it is
	// the same GET, with neither Content-Length nor Transfer-Encoding.
	NoRetry bool
	// TLS, for an https URL, is the client's TLS config (its roots and
	// server name); HTTP/1.1 with keep-alive, as wrk speaks it.
	TLS *tls.Config
	// Addr, when set, is dialled whatever the URL's host (as curl
	// --resolve), so that an https URL can name the certificate's host.
	Addr string
}

// Result counts what happened. Failures are Non2xx + Errors.
type Result struct {
	Requests int64 `json:"requests"`
	OK       int64 `json:"ok"`
	Non2xx   int64 `json:"non_2xx"`
	Errors   int64 `json:"errors"`
	Conns    int64 `json:"connections"`
	// Retried counts requests net/http sent a second time because the
	// kept-alive connection it first used had been closed by the server
	// (see the package comment); each is also counted once in Requests.
	// It stays 0 with Config.NoRetry.
	Retried int64 `json:"retried"`
	// ReusedErrors counts the Errors that happened on a reused keep-alive
	// connection rather than a fresh one: with Config.NoRetry, mostly the
	// requests net/http would otherwise have retried.
	ReusedErrors int64         `json:"reused_errors"`
	Duration     time.Duration `json:"duration"`
	// Statuses counts responses by status code.
	Statuses map[int]int64 `json:"statuses"`
	// Versions counts 2xx responses by the "version" field of a JSON body
	// (the demo app's), so a test can see a rollout switch over.
	Versions map[string]int64 `json:"versions,omitempty"`
	// Samples holds the first few distinct failures, for the test log.
	Samples []string `json:"samples,omitempty"`
	// Latency percentiles of every answered request.
	P50, P99, Max time.Duration
}

// Failed is the number of requests that did not get a 2xx answer.
func (r Result) Failed() int64 { return r.Non2xx + r.Errors }

// String is one line for a test log or a benchmark table.
func (r Result) String() string {
	s := fmt.Sprintf("%d requests in %s (%.0f/s): %d ok, %d non-2xx, %d errors (%d on a reused keep-alive); %d connections, %d retried on a closed keep-alive; p50 %s p99 %s max %s",
		r.Requests, r.Duration.Round(time.Millisecond), float64(r.Requests)/max(r.Duration.Seconds(), 1e-9),
		r.OK, r.Non2xx, r.Errors, r.ReusedErrors, r.Conns, r.Retried, r.P50.Round(100*time.Microsecond), r.P99.Round(100*time.Microsecond), r.Max.Round(100*time.Microsecond))
	if len(r.Versions) > 0 {
		keys := make([]string, 0, len(r.Versions))
		for k := range r.Versions {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s=%d", k, r.Versions[k])
		}
		s += "; versions " + strings.Join(parts, " ")
	}
	if len(r.Samples) > 0 {
		s += "; first failures: " + strings.Join(r.Samples, " | ")
	}
	return s
}

// Run is a generator in progress.
type Run struct {
	cfg    Config
	cancel context.CancelFunc
	wg     sync.WaitGroup
	start  time.Time

	requests, ok, non2xx, errs, reusedErrs, conns, retried atomic.Int64

	mu        sync.Mutex
	statuses  map[int]int64
	versions  map[string]int64
	samples   []string
	latencies []time.Duration
	result    *Result
}

// Start begins sending requests until Stop is called or ctx ends.
func Start(ctx context.Context, cfg Config) *Run {
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &Run{cfg: cfg, cancel: cancel, start: time.Now(), statuses: map[int]int64{}, versions: map[string]int64{}}
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(cfg.Workers) / cfg.Rate)
	}
	for i := range cfg.Workers {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.worker(ctx, interval, time.Duration(i)*interval/time.Duration(cfg.Workers))
		}()
	}
	return r
}

func (r *Run) worker(ctx context.Context, interval, offset time.Duration) {
	dial := (&net.Dialer{Timeout: r.cfg.Timeout}).DialContext
	if addr := r.cfg.Addr; addr != "" {
		dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: r.cfg.Timeout}).DialContext(ctx, network, addr)
		}
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         dial,
		TLSClientConfig:     r.cfg.TLS,
		MaxIdleConnsPerHost: 1,
		MaxConnsPerHost:     1,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: r.cfg.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	next := time.Now().Add(offset)
	for {
		if interval > 0 {
			if d := time.Until(next); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
			next = next.Add(interval)
			if behind := time.Since(next); behind > time.Second {
				next = time.Now() // do not burst to catch up after a stall
			}
		}
		if ctx.Err() != nil {
			return
		}
		r.one(ctx, client)
	}
}

func (r *Run) one(ctx context.Context, client *http.Client) {
	// GotConn runs once per attempt: a second call is net/http's retry.
	attempts, reused := 0, false
	trace := &httptrace.ClientTrace{
		ConnectDone: func(_, _ string, err error) {
			if err == nil {
				r.conns.Add(1)
			}
		},
		GotConn: func(info httptrace.GotConnInfo) {
			reused = info.Reused
			if attempts++; attempts == 2 {
				r.retried.Add(1)
			}
		},
	}
	var body io.Reader
	if r.cfg.NoRetry {
		body = noRetryBody()
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.WithoutCancel(ctx), trace), http.MethodGet, r.cfg.URL, body)
	if err != nil {
		r.fail("build request: "+err.Error(), false)
		return
	}
	if r.cfg.Host != "" {
		req.Host = r.cfg.Host
	}
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		r.fail(err.Error(), reused)
		return
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	elapsed := time.Since(t0)
	if err != nil {
		r.fail("read body: "+err.Error(), reused)
		return
	}
	r.requests.Add(1)
	var version string
	if resp.StatusCode/100 == 2 {
		r.ok.Add(1)
		var v struct {
			Version string `json:"version"`
		}
		if json.Unmarshal(data, &v) == nil {
			version = v.Version
		}
	} else {
		r.non2xx.Add(1)
	}
	r.mu.Lock()
	r.statuses[resp.StatusCode]++
	if version != "" {
		r.versions[version]++
	}
	r.latencies = append(r.latencies, elapsed)
	if resp.StatusCode/100 != 2 {
		r.sample(fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(data[:min(len(data), 120)]))))
	}
	r.mu.Unlock()
}

// noRetryBody is the body of a GET that net/http must never send twice.
//
// net/http (transport.go, Go 1.26) retries a request that failed on a
// reused connection only when shouldRetryRequest allows it: if nothing was
// written, when req.outgoingLength() == 0 or req.GetBody != nil; otherwise,
// when req.isReplayable(), which for GET needs Body to be nil or
// http.NoBody, or GetBody to be set. A non-nil body that is not NoBody,
// with ContentLength 0 (unknown, so outgoingLength is -1) and no GetBody
// fails both tests. http.NewRequest sets GetBody and ContentLength only for
// *bytes.Buffer, *bytes.Reader and *strings.Reader, hence io.NopCloser. The
// transport then probes the body, finds it empty at once and writes the GET
// without Content-Length or Transfer-Encoding (transfer.go,
// shouldSendChunkedRequestBody). A wrapping RoundTripper could not do this:
// the retry happens inside Transport.RoundTrip.
func noRetryBody() io.ReadCloser { return io.NopCloser(strings.NewReader("")) }

// fail counts an error; reused says it happened on a reused connection.
func (r *Run) fail(what string, reused bool) {
	r.requests.Add(1)
	r.errs.Add(1)
	if reused {
		r.reusedErrs.Add(1)
	}
	r.mu.Lock()
	r.sample(what)
	r.mu.Unlock()
}

// sample keeps the first few distinct failures; r.mu is held.
func (r *Run) sample(s string) {
	if len(r.samples) >= 5 {
		return
	}
	for _, x := range r.samples {
		if x == s {
			return
		}
	}
	r.samples = append(r.samples, s)
}

// Snapshot returns the counts so far without stopping.
func (r *Run) Snapshot() Result {
	return Result{Requests: r.requests.Load(), OK: r.ok.Load(), Non2xx: r.non2xx.Load(), Errors: r.errs.Load(),
		ReusedErrors: r.reusedErrs.Load(), Conns: r.conns.Load(), Retried: r.retried.Load(), Duration: time.Since(r.start)}
}

// Stop ends the run, waits for requests in flight, and returns the totals.
// Calling it again returns the same result.
func (r *Run) Stop() Result {
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.result != nil {
		return *r.result
	}
	res := r.Snapshot()
	res.Statuses, res.Versions, res.Samples = r.statuses, r.versions, r.samples
	if n := len(r.latencies); n > 0 {
		sort.Slice(r.latencies, func(i, j int) bool { return r.latencies[i] < r.latencies[j] })
		res.P50, res.P99, res.Max = r.latencies[n/2], r.latencies[n*99/100], r.latencies[n-1]
	}
	r.result = &res
	return res
}

// ErrFailed is wrapped by Check when a run had failures.
var ErrFailed = errors.New("requests failed")

// Check returns an error describing the failures of res, or nil.
func Check(res Result) error {
	if res.Failed() == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrFailed, res)
}
