package probe

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/stretchr/testify/require"
)

func httpCheck(mut ...func(*spec.Health)) spec.Health {
	st, _ := spec.ParseStatusRanges("200-399")
	h := spec.Health{Type: spec.HealthHTTP, Path: "/healthz", Method: "GET", ExpectedStatus: st,
		Interval: spec.Duration(time.Second), Timeout: spec.Duration(300 * time.Millisecond), HealthyThreshold: 1, UnhealthyThreshold: 1}
	for _, m := range mut {
		m(&h)
	}
	return h
}

func addrOf(url string) string {
	return strings.TrimPrefix(strings.TrimPrefix(url, "http://"), "https://")
}

// listener accepts connections and hands each to handle.
func listener(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}

// closedPort returns an address that refuses connections: a socket bound
// to it that does not listen, held until the test ends, so that no other
// test's server can take the port meanwhile (a freed port could be, and a
// probe of it then answered 500 instead of being refused).
func closedPort(t *testing.T) string {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	require.NoError(t, err)
	t.Cleanup(func() { _ = syscall.Close(fd) })
	require.NoError(t, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	sa, err := syscall.Getsockname(fd)
	require.NoError(t, err)
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

func serve(t *testing.T, h http.HandlerFunc) string {
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return addrOf(s.URL)
}

// offlineResolver fails every lookup without leaving 127.0.0.1: its DNS
// server is a closed local port.
func offlineResolver(t *testing.T) *net.Resolver {
	dead := closedPort(t)
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", dead)
	}}
}

func TestProbes(t *testing.T) {
	t.Parallel()
	reg := New(offlineResolver(t))
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") }))
	t.Cleanup(tlsSrv.Close)
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })

	tests := []struct {
		name    string
		addr    string
		check   spec.Health
		ok      bool
		failure string
		msg     string
	}{
		{"ok", serve(t, func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "fine") }), httpCheck(), true, "", ""},
		{"refused", closedPort(t), httpCheck(), false, msg.FailureConnectionRefused, "connection refused"},
		{"accepts, never answers", listener(t, func(c net.Conn) { <-hang; c.Close() }), httpCheck(), false, msg.FailureTimeout, "timed out"},
		{"reset", listener(t, func(c net.Conn) {
			_, _ = c.Read(make([]byte, 512))
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}), httpCheck(), false, msg.FailureConnectionReset, ""},
		{"closed without answer", listener(t, func(c net.Conn) { _, _ = c.Read(make([]byte, 512)); c.Close() }), httpCheck(), false, msg.FailureConnectionReset, ""},
		{"500", serve(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) }), httpCheck(), false, msg.FailureHTTPStatus, "status 500, want 200-399"},
		{"slow body", serve(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			fmt.Fprint(w, "partial")
			w.(http.Flusher).Flush()
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
			}
		}), httpCheck(), false, msg.FailureTimeout, ""},
		{"wrong body", serve(t, func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "degraded") }),
			httpCheck(func(h *spec.Health) { h.ExpectedBody = "all good" }), false, msg.FailureBodyMismatch, `body does not contain "all good"`},
		{"bad tls", addrOf(tlsSrv.URL), httpCheck(func(h *spec.Health) { h.TLS = true }), false, msg.FailureTLS, "tls: "},
		{"tls skip verify", addrOf(tlsSrv.URL), httpCheck(func(h *spec.Health) { h.TLS, h.TLSSkipVerify = true, true }), true, "", ""},
		{"not http", listener(t, func(c net.Conn) {
			_, _ = c.Read(make([]byte, 512))
			_, _ = io.WriteString(c, "SSH-2.0-nope\r\n\r\n")
			c.Close()
		}),
			httpCheck(), false, msg.FailureProtocol, ""},
		{"dns", "no-such-host.invalid:80", httpCheck(), false, msg.FailureDNS, "dns: "},
		{"redirect not followed", serve(t, func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) }),
			httpCheck(func(h *spec.Health) { h.ExpectedStatus, _ = spec.ParseStatusRanges("200") }), false, msg.FailureHTTPStatus, "status 302"},
		{"redirect followed", serve(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/healthz" {
				http.Redirect(w, r, "/ok", http.StatusFound)
				return
			}
			fmt.Fprint(w, "ok")
		}), httpCheck(func(h *spec.Health) { h.ExpectedStatus, _ = spec.ParseStatusRanges("200"); h.FollowRedirects = true }), true, "", ""},
		{"method headers body", serve(t, func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			if r.Method != "POST" || r.Header.Get("X-Probe") != "berth" || string(b) != "ping" {
				w.WriteHeader(400)
			}
		}), httpCheck(func(h *spec.Health) {
			h.Method, h.Headers, h.Body = "POST", map[string]string{"X-Probe": "berth"}, "ping"
		}), true, "", ""},
		{"tcp connect", listener(t, func(c net.Conn) { c.Close() }), spec.Health{Type: spec.HealthTCP}, true, "", ""},
		{"tcp send expect", listener(t, func(c net.Conn) {
			defer c.Close()
			b := make([]byte, 5)
			if _, err := io.ReadFull(c, b); err == nil && string(b) == "PING\n" {
				_, _ = io.WriteString(c, "+PONG\r\n")
			}
		}), spec.Health{Type: spec.HealthTCP, Send: "PING\n", Expect: "PONG"}, true, "", ""},
		{"tcp wrong answer", listener(t, func(c net.Conn) { _, _ = io.WriteString(c, "NOPE\n"); c.Close() }),
			spec.Health{Type: spec.HealthTCP, Expect: "PONG"}, false, msg.FailureBodyMismatch, `peer closed without "PONG"`},
		{"tcp refused", closedPort(t), spec.Health{Type: spec.HealthTCP}, false, msg.FailureConnectionRefused, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A probe that must time out gets a short deadline and must end
			// soon after it. The others get one they do not reach, so that
			// their own failure decides the result, not a race with the
			// deadline (a TLS handshake under -race on a busy machine takes
			// longer than 300 ms).
			deadline := time.Minute
			if tt.failure == msg.FailureTimeout {
				deadline = 300 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			start := time.Now()
			res := reg.Probe(ctx, Target{Key: "web.a", Address: tt.addr, Check: tt.check})
			if tt.failure == msg.FailureTimeout {
				require.Less(t, time.Since(start), 2*time.Second, "a probe is bounded by its deadline")
			}
			require.Equal(t, tt.ok, res.OK, "result %+v", res)
			require.Equal(t, tt.failure, res.Failure, "result %+v", res)
			require.Contains(t, res.Message, tt.msg)
			require.Positive(t, res.Latency)
		})
	}
}

func TestRetriesWithinOneProbe(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	addr := serve(t, func(w http.ResponseWriter, _ *http.Request) {
		if calls.Add(1) < 3 {
			w.WriteHeader(503)
		}
	})
	reg := New(offlineResolver(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	res := reg.Probe(ctx, Target{Address: addr, Check: httpCheck(func(h *spec.Health) { h.Retries = 1 })})
	require.False(t, res.OK, "two attempts, both 503")
	require.Equal(t, int32(2), calls.Load())
	res = reg.Probe(ctx, Target{Address: addr, Check: httpCheck(func(h *spec.Health) { h.Retries = 1 })})
	require.True(t, res.OK, "the third call passes")
}

func TestUnknownType(t *testing.T) {
	t.Parallel()
	res := New(offlineResolver(t)).Probe(context.Background(), Target{Check: spec.Health{Type: "grpc"}})
	require.Equal(t, msg.FailureProtocol, res.Failure)
}

// A probe that passes but answers later than max_response_time fails as
// slow, with the time measured; the servers' delays are the only waits.
func TestSlowIsFailing(t *testing.T) {
	t.Parallel()
	const delay = 60 * time.Millisecond
	slowHTTP := serve(t, func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(delay) // the server's deliberate delay
		w.WriteHeader(http.StatusOK)
	})
	fastHTTP := serve(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	failingSlowly := serve(t, func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(delay)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	slowTCP := listener(t, func(c net.Conn) {
		defer c.Close()
		time.Sleep(delay)
		_, _ = io.WriteString(c, "PONG\r\n")
	})
	fastTCP := listener(t, func(c net.Conn) {
		defer c.Close()
		_, _ = io.WriteString(c, "PONG\r\n")
	})
	withMax := func(d time.Duration) func(*spec.Health) {
		return func(h *spec.Health) {
			h.Interval, h.Timeout, h.MaxResponseTime = spec.Duration(5*time.Second), spec.Duration(2*time.Second), spec.Duration(d)
		}
	}
	tcp := func(h *spec.Health) {
		*h = spec.Health{Type: spec.HealthTCP, Expect: "PONG", Interval: h.Interval, Timeout: h.Timeout, MaxResponseTime: h.MaxResponseTime}
	}
	tests := []struct {
		name    string
		addr    string
		check   spec.Health
		failure string
	}{
		{"http slower than max_response_time", slowHTTP, httpCheck(withMax(20 * time.Millisecond)), msg.FailureSlow},
		{"http within max_response_time", fastHTTP, httpCheck(withMax(time.Second)), ""},
		{"http slow without max_response_time passes", slowHTTP, httpCheck(), ""},
		{"a slow failure keeps its own kind", failingSlowly, httpCheck(withMax(20 * time.Millisecond)), msg.FailureHTTPStatus},
		{"tcp slower than max_response_time", slowTCP, httpCheck(withMax(20*time.Millisecond), tcp), msg.FailureSlow},
		{"tcp within max_response_time", fastTCP, httpCheck(withMax(time.Second), tcp), ""},
	}
	reg := New(nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), tt.check.Timeout.Std())
			defer cancel()
			res := reg.Probe(ctx, Target{Key: "web.a1", Address: tt.addr, Check: tt.check})
			require.Equal(t, tt.failure, res.Failure, res.Message)
			require.Equal(t, tt.failure == "", res.OK)
			if tt.failure == msg.FailureSlow {
				require.GreaterOrEqual(t, res.Latency, delay)
				require.Regexp(t, `^slow: answered in \d+ms, max_response_time 20ms$`, res.Message)
				require.Contains(t, res.Message, fmt.Sprintf("answered in %s,", roundLatency(res.Latency)), "the time measured")
			}
		})
	}
}

func TestRoundLatency(t *testing.T) {
	t.Parallel()
	require.Equal(t, "812ms", roundLatency(812345678*time.Nanosecond).String())
	require.Equal(t, "1.23ms", roundLatency(1234567*time.Nanosecond).String())
}
